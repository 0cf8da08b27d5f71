"""RTP payload formats: the static table of RFC 3551, ``"L16/16000/1"`` strings, and SDP files.

Dynamic payload types (96–127) mean nothing without signalling. emomon takes the mapping from
settings (``rtp_payload_types = {96 = "L16/16000/1"}``) or from the ``a=rtpmap`` lines of an SDP
file (what ``ffmpeg -sdp_file`` writes and what a SIP/ARI integration already has).

Encodings fall in three kinds: *audio* that emomon decodes (PCMU, PCMA, L16, G722, OPUS),
*signalling* payloads that carry no speech and are consumed quietly (CN comfort noise, RFC 3389:
silence; telephone-event, RFC 4733: DTMF), and everything else, which is *unsupported*: an SDP
may offer such codecs (they are kept so their packets are counted as ``unsupported_payload``,
not ``malformed``), but naming one in ``rtp_payload_types`` is a start-up error (issue #15).

Two clock quirks: G.722 is 16 kHz audio on an 8000 Hz RTP clock (RFC 3551 §4.5.2), and Opus is
always ``opus/48000/2`` in SDP whatever the audio (RFC 7587); :attr:`PayloadFormat.audio_rate_hz`
is the rate the decoder outputs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from emomon.streamer.sources.base import SourceError

AUDIO_ENCODINGS = frozenset({"PCMU", "PCMA", "L16", "G722", "OPUS"})
SIGNALLING_ENCODINGS = frozenset({"CN", "TELEPHONE-EVENT"})
SUPPORTED_ENCODINGS = AUDIO_ENCODINGS | SIGNALLING_ENCODINGS
# decoded audio rate where it differs from the RTP clock (RFC 3551 §4.5.2, RFC 7587 §4.1)
_AUDIO_RATE_HZ = {"G722": 16000, "OPUS": 48000}


@dataclass(frozen=True, slots=True)
class PayloadFormat:
    """One payload type's encoding, clock rate (Hz) and channel count."""

    encoding: str  # upper case: PCMU, PCMA, L16, or anything an SDP named
    clock_rate_hz: int
    channels: int = 1

    @property
    def supported(self) -> bool:
        """emomon knows what to do with it: decode it, or (CN, DTMF) take it as no speech."""
        return self.encoding in SUPPORTED_ENCODINGS

    @property
    def is_audio(self) -> bool:
        return self.encoding in AUDIO_ENCODINGS

    @property
    def audio_rate_hz(self) -> int:
        """Samples per second the decoder puts out (G.722: 16000 on its 8000 Hz RTP clock)."""
        return _AUDIO_RATE_HZ.get(self.encoding, self.clock_rate_hz)

    def __str__(self) -> str:
        return f"{self.encoding}/{self.clock_rate_hz}/{self.channels}"


# RFC 3551 table 4: the static audio payload types emomon decodes.
STATIC_PAYLOAD_TYPES: Mapping[int, PayloadFormat] = {
    0: PayloadFormat("PCMU", 8000, 1),
    8: PayloadFormat("PCMA", 8000, 1),
    9: PayloadFormat("G722", 8000, 1),
    10: PayloadFormat("L16", 44100, 2),
    11: PayloadFormat("L16", 44100, 1),
    13: PayloadFormat("CN", 8000, 1),
}


def parse_encoding(text: str) -> PayloadFormat:
    """Parse ``ENCODING/RATE[/CHANNELS]`` (the ``a=rtpmap`` syntax), e.g. ``"L16/16000/1"``.

    Raises ``ValueError`` with the offending text; G.711 at a rate other than 8000 is refused
    because no sender produces it and decoding it would only hide a configuration mistake.
    """
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not parts[0]:
        raise ValueError(
            f"payload format {text!r} is not ENCODING/RATE[/CHANNELS], e.g. 'L16/16000/1'"
        )
    encoding = parts[0].upper()
    try:
        rate = int(parts[1])
        channels = int(parts[2]) if len(parts) == 3 else 1
    except ValueError as e:
        raise ValueError(f"payload format {text!r}: rate and channels must be integers") from e
    if not 1000 <= rate <= 384_000:
        raise ValueError(f"payload format {text!r}: clock rate {rate} Hz is out of range")
    if not 1 <= channels <= 8:
        raise ValueError(f"payload format {text!r}: {channels} channels is out of range 1..8")
    if encoding in ("PCMU", "PCMA") and (rate != 8000 or channels != 1):
        raise ValueError(f"payload format {text!r}: G.711 is 8000 Hz mono")
    if encoding == "G722" and rate != 8000:
        raise ValueError(f"payload format {text!r}: G.722's RTP clock is 8000 (RFC 3551)")
    if encoding == "OPUS" and rate != 48000:
        raise ValueError(f"payload format {text!r}: Opus's RTP clock is 48000 (RFC 7587)")
    return PayloadFormat(encoding, rate, channels)


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """What emomon takes from an SDP: the audio port and address, rtpmap entries, rtcp-mux."""

    payload_types: dict[int, PayloadFormat] = field(default_factory=dict)
    port: int | None = None
    address: str | None = None
    rtcp_mux: bool = False


_RFC_CLOCK = {"G722": PayloadFormat("G722", 8000, 1), "OPUS": PayloadFormat("OPUS", 48000, 2)}
_RTPMAP = re.compile(r"^a=rtpmap:(\d+)\s+(\S+)\s*$")
_MEDIA = re.compile(r"^m=audio\s+(\d+)\s+\S+(?:\s+(.*))?$")
_CONN = re.compile(r"^c=IN\s+IP[46]\s+([^/\s]+)")


def parse_sdp(text: str) -> SessionDescription:
    """Read the first audio section of an SDP (RFC 4566); other media sections are ignored."""
    pts: dict[int, PayloadFormat] = {}
    port: int | None = None
    address: str | None = None
    mux = False
    in_audio = False
    seen_media = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            in_audio = not seen_media and line.startswith("m=audio")
            seen_media = seen_media or in_audio
            m = _MEDIA.match(line)
            if in_audio and m:
                port = int(m.group(1))
                for tok in (m.group(2) or "").split():
                    if tok.isdigit() and int(tok) in STATIC_PAYLOAD_TYPES:
                        pts.setdefault(int(tok), STATIC_PAYLOAD_TYPES[int(tok)])
            continue
        if seen_media and not in_audio:
            continue
        if (m := _CONN.match(line)) and (address is None or in_audio):
            address = m.group(1)
        elif (m := _RTPMAP.match(line)) and (in_audio or not seen_media):
            pt = int(m.group(1))
            if pt > 127:
                raise ValueError(f"SDP rtpmap for payload type {pt}: must be 0..127")
            try:
                pts[pt] = parse_encoding(m.group(2))
            except ValueError:
                # A codec emomon cannot decode (G729/8000, AMR-WB/16000): remember it so its
                # packets are reported as unsupported, not as garbage.
                enc, _, rest = m.group(2).partition("/")
                rate = rest.split("/")[0]
                fmt = PayloadFormat(enc.upper(), int(rate) if rate.isdigit() else 0, 1)
                # "G722/16000" or "opus/16000" in an SDP are common mistakes; the timestamps
                # still run at the RFC's clock (RFC 3551 §4.5.2, RFC 7587), so take that.
                pts[pt] = _RFC_CLOCK.get(fmt.encoding, fmt)
        elif line == "a=rtcp-mux" and in_audio:
            mux = True
    return SessionDescription(pts, port, address, mux)


def load_sdp(path: str | Path) -> SessionDescription:
    """Parse an SDP file; a missing or unreadable file is a :class:`SourceError` naming it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise SourceError(f"cannot read SDP file {p}: {e.strerror or e}") from e
    try:
        return parse_sdp(text)
    except ValueError as e:
        raise SourceError(f"SDP file {p}: {e}") from e


def payload_map(
    payload_types: Mapping[int, str] | None = None, sdp: SessionDescription | None = None
) -> dict[int, PayloadFormat]:
    """Effective PT → format map: RFC 3551 statics < SDP rtpmap < explicit settings.

    Raises :class:`SourceError` naming the bad entry, so a typo fails at start, not per packet.
    """
    out: dict[int, PayloadFormat] = dict(STATIC_PAYLOAD_TYPES)
    if sdp is not None:
        out.update(sdp.payload_types)
    for pt, text in (payload_types or {}).items():
        try:
            pt_i = int(pt)
        except (TypeError, ValueError) as e:
            raise SourceError(f"rtp_payload_types: key {pt!r} is not a payload type number") from e
        if not 0 <= pt_i <= 127:
            raise SourceError(f"rtp_payload_types: payload type {pt_i} must be 0..127")
        try:
            fmt = parse_encoding(text)
        except ValueError as e:
            raise SourceError(f"rtp_payload_types[{pt_i}]: {e}") from e
        if not fmt.supported:
            raise SourceError(
                f"rtp_payload_types[{pt_i}]: emomon cannot decode {fmt.encoding} "
                f"(supported: {', '.join(sorted(SUPPORTED_ENCODINGS))})"
            )
        out[pt_i] = fmt
    return out


def undecodable(formats: Mapping[int, PayloadFormat]) -> list[str]:
    """``"PT 18 (G729/8000/1)"`` for each mapped payload type emomon cannot decode."""
    return [f"PT {pt} ({fmt})" for pt, fmt in sorted(formats.items()) if not fmt.supported]
