"""The official segment-anything package as a test oracle, with shared random weights.

Both implementations get the *same* random state dict (every tensor random, including the
zero-initialised relative position tables), so any difference is an implementation
difference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

STUBS = str(Path(__file__).parent / "stubs")


def import_reference():
    """Import segment_anything with the torchvision stand-in, or skip the test."""
    if STUBS not in sys.path:
        sys.path.insert(0, STUBS)
    return pytest.importorskip("segment_anything")


def reference_sam(depth: int = 2, global_attn: tuple[int, ...] = (1,), embed_dim: int = 768, heads: int = 12):
    ref = import_reference()
    from segment_anything.build_sam import _build_sam

    return _build_sam(
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=heads,
        encoder_global_attn_indexes=list(global_attn),
        checkpoint=None,
    ), ref


def random_state_dict(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every parameter/buffer random with a scale that keeps activations sane."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            out[k] = v.clone()
            continue
        if k.endswith("norm1.weight") or k.endswith("norm2.weight") or ".norm" in k and k.endswith("weight"):
            t = 1.0 + 0.1 * torch.randn(v.shape, generator=g)
        elif v.ndim >= 2 and "rel_pos" not in k and "gaussian" not in k and "pos_embed" not in k:
            fan_in = v[0].numel() if v.ndim > 1 else v.numel()
            t = torch.randn(v.shape, generator=g) / max(fan_in, 1) ** 0.5
        else:
            t = 0.1 * torch.randn(v.shape, generator=g)
            if "gaussian" in k:
                t = torch.randn(v.shape, generator=g)
        out[k] = t
    return out


def max_abs_diff(a, b) -> float:
    """Largest absolute difference of two arrays/tensors of the same shape (0 when empty)."""
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return 0.0 if a.size == 0 else float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
