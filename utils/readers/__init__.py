"""Readers of each dataset's layout and of media: Aff-Wild2, DFEW, OpenPose, PyAV containers, log-mel."""
