"""Image embeddings on disk, so a server computes each image's embedding once.

Files are safetensors (no pickle) holding the 1x256x64x64 embedding and, as metadata, the
image's frames and a fingerprint of the image encoder that produced it: an embedding from
another model would silently give garbage masks, so loading it is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .atomic_files import atomic_path
from .modeling.fingerprint import image_encoder_digest

FORMAT = "segany-embedding-v1"


def save_embedding_file(
    path: str | os.PathLike,
    model: nn.Module,
    features: torch.Tensor,
    original_size: tuple[int, int],
    input_size: tuple[int, int],
) -> None:
    """Atomically write an embedding file (temp file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {
        "format": FORMAT,
        "original_size": json.dumps(list(original_size)),
        "input_size": json.dumps(list(input_size)),
        "encoder": image_encoder_digest(model),
        "img_size": str(model.image_encoder.img_size),
    }
    with atomic_path(path) as tmp:
        save_file({"features": features.detach().cpu().contiguous()}, str(tmp), metadata=meta)


def load_embedding_file(
    path: str | os.PathLike, model: nn.Module
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Read an embedding file written for ``model``; ValueError if it is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"embedding file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            features = f.get_tensor("features")
    except Exception as exc:
        raise ValueError(f"cannot read embedding file {path}: {type(exc).__name__}: {exc}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a segany embedding file")
    if meta.get("encoder") != image_encoder_digest(model):
        raise ValueError(f"{path} was computed by a different image encoder than this model's")
    original = tuple(json.loads(meta["original_size"]))
    inp = tuple(json.loads(meta["input_size"]))
    if features.ndim != 4 or features.shape[0] != 1:
        raise ValueError(f"{path}: embedding has shape {tuple(features.shape)}, expected 1xCxHxW")
    return features, (int(original[0]), int(original[1])), (int(inp[0]), int(inp[1]))
