"""The fully automatic stage of the data engine (paper section 4 and appendix B).

``grid`` (point grids, crop windows), ``filters`` (scores, NMS, cleanup), ``generator``
(:class:`SamAutomaticMaskGenerator`), ``presets`` (the paper's settings), ``batch`` (many
images, resumable folder runs, SA-1B/COCO/PNG writers).
"""

from .generator import MaskSet, SamAutomaticMaskGenerator
from .presets import PRESETS, preset

__all__ = ["PRESETS", "MaskSet", "SamAutomaticMaskGenerator", "preset"]
