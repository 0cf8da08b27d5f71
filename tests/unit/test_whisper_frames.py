"""The ASR pass's encoder frames are exactly what the emotion model was trained on."""

import numpy as np

from emomon.model.audio import whisper_encoder_frames
from emomon.streamer.transcriber import Transcriber


def test_transcriber_frames_equal_model_recipe(call_pcm):
    tr = Transcriber()
    try:
        audio = call_pcm[int(8.4 * 16000) : int(10.0 * 16000)].astype(np.float32) / 32768
        out = tr.transcribe_sync(audio)
        ref = whisper_encoder_frames(tr.model, audio)
        assert out.frames is not None and out.frames.shape == ref.shape == (80, 384)
        assert np.array_equal(out.frames, ref)
        assert "know" in out.text.lower()
    finally:
        tr.close()
