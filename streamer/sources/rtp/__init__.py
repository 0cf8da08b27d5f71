"""Live RTP audio (``--source rtp://HOST:PORT``): one stream per SSRC, one speaker per stream.

The package follows the data path of one datagram:

- :mod:`.udp` - the sockets (RTP on the port, RTCP on port+1), read a batch per wake-up;
- :mod:`.packets` - RTP/RTCP header parsing and validation (RFC 3550, RFC 5761);
- :mod:`.streams` - which SSRCs become streams (probation, latching, caps), the session clock;
- :mod:`.playout` - a stream's media clock: when silence that did not arrive is due;
- :mod:`.stream` - one SSRC's jitter buffer, payload decoding and 16 kHz timeline;
- :mod:`.codecs` - payload decoders (G.711, L16; G.722 and Opus through PyAV);
- :mod:`.counters` - what the receiver counts, ended streams included;
- :mod:`.source` - :class:`RtpSource`, which ties them together and owns the streams' lives.
"""

from emomon.streamer.sources.rtp.packets import (
    MAX_DATAGRAM_BYTES,
    RTCP_BYE,
    RTP_HEADER_BYTES,
    RTP_VERSION,
    RtpPacket,
    RtpParseError,
    is_rtcp,
    parse_rtcp_bye,
    parse_rtp,
    parse_ssrc,
    ssrc_channel,
)
from emomon.streamer.sources.rtp.source import CHUNK_MS, RtpSource

__all__ = [
    "CHUNK_MS",
    "MAX_DATAGRAM_BYTES",
    "RTCP_BYE",
    "RTP_HEADER_BYTES",
    "RTP_VERSION",
    "RtpPacket",
    "RtpParseError",
    "RtpSource",
    "is_rtcp",
    "parse_rtcp_bye",
    "parse_rtp",
    "parse_ssrc",
    "ssrc_channel",
]
