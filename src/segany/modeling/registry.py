"""Compatibility names: what ``segany.modeling.registry`` used to define, re-exported.

Each concept now has one home, and new code should import from it:

- ``config.py``: :class:`SamConfig` and ``MODEL_CONFIGS`` (what each model is);
- ``build.py``: ``build_from_config``, ``build_model``, the official ``sam_model_registry``
  and ``build_sam_*`` functions;
- ``checkpoint.py``: ``CheckpointError``, reading, checking, loading and saving files;
- ``convert_hf.py``: Hugging Face key names.

This module defines nothing; it exists so that existing imports keep working.
"""

from .build import (
    build_from_config,
    build_model,
    build_sam,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    build_segany_cnn,
    build_segany_tiny,
    sam_model_registry,
)
from .checkpoint import (
    CheckpointError,
    check_config_against_state,
    config_from_metadata,
    config_from_state,
    guess_model_type,
    load_into,
    read_checkpoint,
    save_checkpoint,
)
from .config import EMBEDDING_GRID, MODEL_CONFIGS, PROMPT_EMBED_DIM, SamConfig

__all__ = [
    "EMBEDDING_GRID",
    "MODEL_CONFIGS",
    "PROMPT_EMBED_DIM",
    "CheckpointError",
    "SamConfig",
    "build_from_config",
    "build_model",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_segany_cnn",
    "build_segany_tiny",
    "check_config_against_state",
    "config_from_metadata",
    "config_from_state",
    "guess_model_type",
    "load_into",
    "read_checkpoint",
    "save_checkpoint",
    "sam_model_registry",
]
