"""The model the annotation server runs, as the server describes and exports it.

Names for the statistics (which model proposed a mask), where it runs (the startup line),
and the CPU copy of its decoder that the page receives as ONNX. The served model itself is
used where the caller put it (``--device``); nothing here moves it.
"""

from __future__ import annotations

import copy
from typing import Any


def model_version_of(model: Any) -> str:
    """A short name identifying the model that proposed masks (for the statistics)."""
    from ..modeling.fingerprint import image_encoder_digest

    kind = "segany_default" if getattr(model, "is_trained", False) else f"untrained-{model.img_size}px"
    return f"{kind}@{image_encoder_digest(model)[:8]}"


def model_device(model: Any) -> str:
    """The device the model's weights are on (``cpu``, ``cuda:0``, ...)."""
    try:
        return str(next(model.parameters()).device)
    except (StopIteration, AttributeError):
        return "cpu"


def model_placement(model: Any) -> str:
    """Where and in what type the model runs, for the startup line (``cuda:0, bfloat16``)."""
    try:
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    except (StopIteration, AttributeError):
        dtype = "float32"
    return f"{model_device(model)}, {dtype}"


def decoder_export_copy(model: Any) -> Any:
    """A float32 CPU copy of just the prompt encoder and mask decoder, for the ONNX export.

    ``export_decoder`` moves the model it is given to the CPU in place: handing it the
    served model would silently pull a GPU model off its device (and the image encoder,
    the big part, is not in the decoder graph anyway).
    """
    import torch

    shell = torch.nn.Module()
    shell.prompt_encoder = copy.deepcopy(model.prompt_encoder).float().cpu().eval()
    shell.mask_decoder = copy.deepcopy(model.mask_decoder).float().cpu().eval()
    shell.img_size = int(model.img_size)
    shell.mask_threshold = float(getattr(model, "mask_threshold", 0.0))
    return shell.eval()
