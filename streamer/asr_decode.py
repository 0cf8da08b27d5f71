"""Decoding one Whisper window without timestamps, alone or as a batch (issues 16.2, 16.4).

``decode_group`` runs CTranslate2's ``generate`` on a batch of encoder outputs and scores each
result as faster-whisper does (average log-probability, no-speech rule, compression ratio), so
a batched utterance gets the text it gets alone. The loop guard and the token budget of the
short-window first decode live here too (see ``streamer/transcriber.py``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TEMPERATURES = [0.0, 0.2, 0.4]
#: gzip compression ratio above which a decode counts as repetitive (faster-whisper's default).
LOOP_COMPRESSION_RATIO = 2.4


def token_budget(duration_s: float) -> int:
    """A bound on the tokens of a short-window decode of ``duration_s`` of speech, and of its
    30 s redo when it looped (fast English speech is ~5 words, ~7 tokens, per second): it only
    bounds the time a decode that loops can take."""
    return int(16 + 10 * duration_s)


#: more words than this per second of audio (plus ``RUNAWAY_SLACK_WORDS``) is not speech, it
#: is a decode that ran away: fast speech is ~5 words a second (see :func:`token_budget`),
#: conversation 2.5-3 (150-180 words a minute)
MAX_WORDS_PER_S = 5.0
RUNAWAY_SLACK_WORDS = 4


_SENTENCE_END = re.compile(r"[.!?。！？](?=\s|$)")


def trim_runaway(text: str, duration_s: float) -> str:
    """``text`` cut back to what ``duration_s`` of audio can hold, or unchanged when it fits.
    The cut is at the last sentence end within that length when one lies in its second half,
    else at the word limit. Words are counted between spaces, so text in a script written
    without them is never cut (the token budget still bounds it).

    For the 30 s fallback decode only, and only when its text still looks like a loop: the
    fallback samples at higher temperatures when the greedy decode loops; when every
    temperature loops too, faster-whisper keeps the best of them, which can repeat one sentence
    dozens of times (seen under load on the synthetic conversations: 192 words for 11.2 s of
    speech)."""
    limit = RUNAWAY_SLACK_WORDS + int(MAX_WORDS_PER_S * duration_s)
    words = text.split()
    if len(words) <= limit:
        return text
    kept = " ".join(words[:limit])
    ends = [m.end() for m in _SENTENCE_END.finditer(kept)]
    return kept[: ends[-1]] if ends and ends[-1] > len(kept) // 2 else kept


def looks_looped(text: str, compression_ratio: float) -> bool:
    """A decode that repeats itself: highly compressible text, or one three-word phrase said
    three times or more (real speech of one utterance rarely does; a loop always does)."""
    if compression_ratio > LOOP_COMPRESSION_RATIO:
        return True
    words = re.findall(r"[\w']+", text.lower())
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - 2):
        key = tuple(words[i : i + 3])
        counts[key] = counts.get(key, 0) + 1
        if counts[key] >= 3:
            return True
    return False


#: faster-whisper's default: a segment with a no-speech probability above this and an average
#: log-probability below ``LOG_PROB_THRESHOLD`` is silence (no text)
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0


@dataclass(frozen=True, slots=True)
class Decoded:
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    silent: bool  # Whisper's no-speech rule: no text


def decode_group(
    whisper_model: Any,
    encoder_output: Any,
    prompts: Sequence[list[int]],
    tokenizer: Any,
    beam_size: int,
    max_new_tokens: int,
) -> list[Decoded]:
    """Greedy/beam decode of one group (no timestamps), scored as faster-whisper scores."""
    from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

    results = whisper_model.model.generate(
        encoder_output,
        list(prompts),
        beam_size=beam_size,
        patience=1.0,
        length_penalty=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        max_length=min(whisper_model.max_length, len(prompts[0]) + max_new_tokens),
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
        max_initial_timestamp_index=50,  # 1.0 s, faster-whisper's default
    )
    out = []
    for r in results:
        tokens = r.sequences_ids[0]
        avg_logprob = r.scores[0] * len(tokens) / (len(tokens) + 1)
        text = tokenizer.decode(tokens).strip()
        silent = r.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD
        out.append(
            Decoded(
                "" if silent else text,
                float(avg_logprob),
                float(r.no_speech_prob),
                float(get_compression_ratio(text)) if text else 0.0,
                silent,
            )
        )
    return out


def whisper_options(
    beam_size: int, tokenizer: Any, temperatures: list[float], max_new_tokens: int | None
) -> Any:
    from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

    return TranscriptionOptions(
        beam_size=beam_size,
        best_of=1,
        patience=1.0,
        length_penalty=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        log_prob_threshold=-1.0,
        no_speech_threshold=0.6,
        compression_ratio_threshold=LOOP_COMPRESSION_RATIO,
        condition_on_previous_text=False,
        prompt_reset_on_temperature=0.5,
        temperatures=temperatures,
        initial_prompt=None,
        prefix=None,
        suppress_blank=True,
        suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
        without_timestamps=True,
        max_initial_timestamp=1.0,
        word_timestamps=False,
        prepend_punctuations="\"'“¿([{-",
        append_punctuations="\"'.。,，!！?？:：”)]}、",
        multilingual=False,
        max_new_tokens=max_new_tokens,
        clip_timestamps=[0.0],
        hallucination_silence_threshold=None,
        hotwords=None,
    )
