"""segany: a complete, fast implementation of Segment Anything (Kirillov et al., 2023).

Drop-in names from the official package: ``sam_model_registry``, ``SamPredictor``,
``SamAutomaticMaskGenerator`` (when installed parts exist), plus segany's own additions.
"""

from .automatic import SamAutomaticMaskGenerator
from .default_model import load_default_model
from .modeling import Sam
from .modeling.build import (
    build_model,
    build_sam,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    sam_model_registry,
)
from .modeling.checkpoint import CheckpointError, save_checkpoint
from .predictor import PromptOutsideImageWarning, SamPredictor

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "PromptOutsideImageWarning",
    "Sam",
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "build_model",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "load_default_model",
    "sam_model_registry",
    "save_checkpoint",
]
