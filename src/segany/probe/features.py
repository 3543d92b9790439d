"""Per-mask features that need no decoder: the image embedding pooled inside the mask, a
point at the mask's centre (the prompt), and a colour histogram (the probe's baseline).

Pooling follows the frames of :mod:`segany.modeling.sam`: the embedding grid covers the
padded *input* square, so the mask is resized to the input frame, padded, and each grid
cell weighted by the fraction of it the mask covers (area-weighted, not nearest: a mask
smaller than a cell still gets its cell, with a small weight, and a cell half inside counts
half).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import distance_transform_edt

from ..masks import mask_window

HSV_BINS = (8, 4, 4)
"""Hue x saturation x value bins of :func:`colour_histograms` (128 in all): hue matters
most for object colour, 4 levels each of saturation and value separate grey/white/black."""


def grid_weights(
    masks: torch.Tensor, input_size: tuple[int, int], img_size: int, grid: tuple[int, int]
) -> torch.Tensor:
    """BxHxW bool masks (original frame) -> Bx(gh)x(gw) coverage in [0, 1] of each cell of
    the image-embedding grid.

    ``input_size`` is the resized image inside the ``img_size`` square (the predictor's
    ``input_size``); the square is split into ``grid`` cells.
    """
    m = masks[:, None].float()
    m = F.interpolate(m, size=input_size, mode="area") if m.shape[-2:] != input_size else m
    m = F.pad(m, (0, img_size - input_size[1], 0, img_size - input_size[0]))
    return F.adaptive_avg_pool2d(m, grid)[:, 0]


def pooled_embeddings(image_embedding: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """1xCxhxw image embedding and Bxhxw cell weights -> BxC weighted mean inside each mask."""
    feats = image_embedding[0].float().flatten(1)  # C x hw
    w = weights.float().flatten(1)  # B x hw
    return (w @ feats.T) / w.sum(dim=1, keepdim=True).clamp_min(1e-12)


def centre_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the mask pixel farthest from its boundary.

    Why not the centroid: for a ring, a crescent or an L-shape the centroid lies outside
    the mask, and a foreground click there would ask for another object. The deepest
    interior pixel is inside by construction and central for convex shapes.
    """
    window = mask_window(mask)
    if window is None:
        raise ValueError("an empty mask has no centre point")
    crop = np.pad(np.asarray(mask[window], dtype=bool), 1)  # pad: the image border counts as outside
    dist = distance_transform_edt(crop)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x - 1 + window[1].start), float(y - 1 + window[0].start)


def hsv_bin_index(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxW index of each pixel's :data:`HSV_BINS` bin (computed once per
    image, then counted per mask)."""
    hsv = np.asarray(Image.fromarray(image).convert("HSV"), dtype=np.int64)
    nh, ns, nv = HSV_BINS
    h, s, v = (hsv[..., 0] * nh) >> 8, (hsv[..., 1] * ns) >> 8, (hsv[..., 2] * nv) >> 8
    return (h * ns + s) * nv + v


def colour_histogram(bin_index: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Normalised HSV histogram (sums to 1) of the pixels inside one HxW mask."""
    counts = np.bincount(bin_index[mask], minlength=int(np.prod(HSV_BINS))).astype(np.float64)
    return (counts / max(counts.sum(), 1.0)).astype(np.float32)
