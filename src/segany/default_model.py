"""The embedded default model: segany's own small trained model, shipped in the package.

No pretrained SAM weights can be downloaded where segany is built, so the default is a
model segany trained itself (see the training docs). Until those weights exist in
``segany/weights/``, the default is a randomly initialised ``segany_cnn`` model and every
caller is told so: its masks are meaningless.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .modeling import Sam
from .modeling.build import build_model

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "segany_default.safetensors"


def default_weights_path() -> Path | None:
    """Path of the shipped default weights, or None when none are shipped yet."""
    return DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None


def load_default_model(device: str | torch.device = "cpu", warn: bool = True) -> Sam:
    """The shipped trained model, or (clearly flagged) a random-init ``segany_cnn``.

    ``warn=False`` is for callers that tell the user themselves (the CLI prints a note).
    """
    path = default_weights_path()
    if path is not None:
        model = build_model("auto", path)
        model.is_trained = True  # type: ignore[assignment]
    else:
        if warn:
            warnings.warn(
                "segany has no trained default weights yet (segany/weights/segany_default.safetensors); "
                "using a RANDOMLY INITIALISED segany_cnn model: its masks are meaningless",
                stacklevel=2,
            )
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = build_model("segany_cnn")
        model.is_trained = False  # type: ignore[assignment]
    return model.to(device).eval()
