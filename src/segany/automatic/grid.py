"""Point grids and crop windows of the automatic stage (paper appendix B, "Segmenting
everything").

The image is prompted with a regular grid of foreground points. With ``crop_n_layers = n``
the same is repeated on zoomed-in crops: layer k (1..n) splits the image into 2^k x 2^k
windows that overlap, and its grid is downscaled by ``crop_n_points_downscale_factor**k``
per side. Geometry and rounding follow the official package exactly, because which pixels a
crop holds decides which masks come out.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n)x2 points (x, y) at the centres of an n x n tiling of [0, 1]^2, x fastest."""
    if n_per_side < 1:
        raise ValueError(f"points per side must be >= 1, got {n_per_side}")
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One normalised grid per crop layer 0..n_layers; layer i has n / scale^i points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def _crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
    return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop windows (XYXY, pixels) and their layer index, whole image first.

    Layer k has (2^k)^2 windows, ordered column of x0 outer, y0 inner; neighbouring windows
    overlap by ``overlap_ratio * short_side * 2 / 2^k`` pixels.
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layers = [0]
    for i_layer in range(n_layers):
        n_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_side))
        crop_w = _crop_len(im_w, n_side, overlap)
        crop_h = _crop_len(im_h, n_side, overlap)
        xs = [int((crop_w - overlap) * i) for i in range(n_side)]
        ys = [int((crop_h - overlap) * i) for i in range(n_side)]
        for x0, y0 in product(xs, ys):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i_layer + 1)
    return boxes, layers


def grid_points_for_crop(grid: np.ndarray, crop_box: list[int]) -> np.ndarray:
    """Normalised grid -> Nx2 float64 pixel points in the crop's own frame."""
    x0, y0, x1, y1 = crop_box
    return grid * np.array([[x1 - x0, y1 - y0]], dtype=np.float64)
