"""Audio sources: files now; microphone and RTP in their own modules."""

from emomon.streamer.sources.base import AudioChunk, AudioSource, SourceError

__all__ = ["AudioChunk", "AudioSource", "SourceError"]
