import json
import struct

import numpy as np
import pytest

from emomon.streamer.utterance import Utterance, UtteranceDecodeError


def _utt(**kw):
    base = dict(
        session="s1",
        speaker="speaker_1",
        channel="0",
        utterance_id="s1:0:000001",
        start_s=1.0,
        end_s=2.5,
        end_wall=1700000000.0,
        pcm=(np.arange(24000) % 200 - 100).astype(np.int16),
        text="héllo",
        timings={"asr": 0.3},
    )
    base.update(kw)
    return Utterance(**base)


def test_round_trip_is_exact():
    u = _utt(whisper_frames=np.ones((3, 4), np.float32))
    v = Utterance.from_wire(u.to_wire())
    assert v.text == "héllo" and v.timings == {"asr": 0.3} and v.utterance_id == u.utterance_id
    assert np.array_equal(v.pcm, u.pcm) and v.pcm.dtype == np.int16
    assert v.whisper_frames is None  # in-process only, never on the wire


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "bad magic"),
        (b"\x00garbage\xff" * 3, "bad magic"),
        (b"EMU\x02" + struct.pack(">I", 2) + b"{}", "version 2"),
        (b"EMU\x01" + struct.pack(">I", 99) + b"{}", "truncated header"),
        (b"EMU\x01" + struct.pack(">I", 3) + b"{x}", "not JSON"),
        (b"EMU\x01" + struct.pack(">I", 2) + b"[]", "not a JSON object"),
    ],
)
def test_bad_payloads_are_rejected_with_a_reason(payload, why):
    with pytest.raises(UtteranceDecodeError, match=why):
        Utterance.from_wire(payload)


def test_truncated_pcm_and_unknown_fields():
    wire = _utt().to_wire()
    with pytest.raises(UtteranceDecodeError, match="PCM"):
        Utterance.from_wire(wire[:-10])
    hdr = json.dumps({"pcm_samples": 0, "sample_rate_hz": 16000, "bogus": 1}).encode()
    with pytest.raises(UtteranceDecodeError, match="fields"):
        Utterance.from_wire(b"EMU\x01" + struct.pack(">I", len(hdr)) + hdr)
