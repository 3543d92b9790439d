"""Model fingerprints: short strings that say which weights made a result, in one place.

A fingerprint is stored next to results and compared on the next run, so its value for a
given model must never change: every stored output, resume folder and embedding file would
silently stop matching (or, worse, a changed scheme could start matching other weights).
There are three, because the three keys promise different things and have always been
computed differently; each keeps its exact old value:

- :func:`weights_sha256`: every byte of every tensor, the dtypes and the model's config --
  the provenance of ``segany auto`` outputs, where a ``--dtype`` cast or another
  ``mask_threshold`` must count as another model (~1 s for ViT-H).
- :func:`sampled_weights_digest`: names, shapes and 4096 evenly spaced values per tensor
  (as float32) -- the signature of resumable evaluations, cheap enough to take at every
  start; two real checkpoints that agree on all samples do not occur.
- :func:`image_encoder_digest`: the image encoder's first and last two tensors plus the
  prompt encoder's positional-encoding matrix (first 64 KiB of each) -- the key of
  embedding files, which stay valid for any model sharing that encoder (the decoder may
  differ: the embedding does not depend on it).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

SAMPLES_PER_TENSOR = 4096  # sampled_weights_digest: values taken from each tensor
ENCODER_BYTES_PER_TENSOR = 65536  # image_encoder_digest: leading bytes hashed per tensor


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 (64 hex digits) over the model's configuration, ``mask_threshold`` and every
    tensor of its state (names, dtypes, shapes, bytes).

    Why the weights and not the checkpoint file: they are what decides the outputs, whatever
    the path, the file format (``.pth`` or its ``.safetensors`` export), the embedded default
    or a ``--dtype`` cast; and it costs one pass over memory (~1 s for ViT-H)."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json"):
        h.update(config.to_json().encode())
    h.update(f"mask_threshold={getattr(model, 'mask_threshold', None)}\n".encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        flat = t.contiguous().cpu().reshape(-1)
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sampled_weights_digest(model: nn.Module | None) -> str:
    """A short digest (16 hex digits) of a model's weights: names, shapes and an evenly
    spaced sample of values; ``"none"`` for no model.

    Hashing every byte of ViT-H (2.5 GB) would take seconds for no gain: two different
    checkpoints that agree on names, shapes and 4096 sampled values per tensor do not occur.
    The last element of each tensor is always sampled. Values are compared as float32, so a
    half-precision copy of a model has (nearly always) another digest only through rounding.
    """
    if model is None:
        return "none"
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1).float().cpu()
        if flat.numel() > SAMPLES_PER_TENSOR:
            flat = flat[torch.linspace(0, flat.numel() - 1, SAMPLES_PER_TENSOR).long()]
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(flat.numpy().astype(np.float32).tobytes())
    return h.hexdigest()[:16]


def image_encoder_digest(model: nn.Module) -> str:
    """Short hash (16 hex digits) identifying a model's image encoder weights (and the prompt PE).

    Only what an embedding depends on: the image encoder (sampled by its first and last two
    tensors, enough to tell real checkpoints apart) and the positional encoding the decoder
    pairs with it. SHA-1 is a checksum here, not a security measure.
    """
    h = hashlib.sha1()
    params = list(model.image_encoder.state_dict().items())
    picks = params[:2] + params[-2:] + [("pe", model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix)]
    for name, t in picks:
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes()[:ENCODER_BYTES_PER_TENSOR])
    return h.hexdigest()[:16]
