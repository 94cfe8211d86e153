"""dfdetect: find face deepfakes in videos and images.

Internally every score is P(fake): fake = 1 is the positive class (see :mod:`dfdetect.labels`).
"""

__version__ = "0.1.0"
