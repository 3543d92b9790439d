"""Edge non-maximum suppression: thin a soft edge map along its local normal.

The "standard lightweight postprocessing" of the SAM paper's edge experiment (appendix D.2)
is the edge NMS of the structured-edge toolbox (Dollar & Zitnick): estimate each pixel's edge
orientation from second derivatives of a smoothed map, then keep a pixel only if it is not
weaker than its two neighbours one pixel away along the normal. This is our own vectorised
implementation of that procedure; the same function thins the Sobel baseline so that both are
scored alike.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def triangle_smooth(image: np.ndarray, radius: int) -> np.ndarray:
    """Separable triangle filter of the given radius (``convTri``), with reflected borders."""
    if radius <= 0:
        return image.astype(np.float64, copy=True)
    ramp = np.arange(1, radius + 2, dtype=np.float64)
    kernel = np.concatenate([ramp, ramp[-2::-1]])
    kernel /= kernel.sum()
    out = ndimage.convolve1d(image.astype(np.float64), kernel, axis=0, mode="reflect")
    return ndimage.convolve1d(out, kernel, axis=1, mode="reflect")


def edge_orientation(edges: np.ndarray, smooth_radius: int = 4) -> np.ndarray:
    """Normal direction (radians in [0, pi)) of the edge through each pixel, from second derivatives."""
    e = triangle_smooth(edges, smooth_radius)
    oy, ox = np.gradient(e)
    _, oxx = np.gradient(ox)
    oyy, oxy = np.gradient(oy)
    return np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5)), np.pi)


def edge_nms(
    edges: np.ndarray,
    orientation: np.ndarray | None = None,
    radius: int = 1,
    border: int = 5,
    margin: float = 1.01,
) -> np.ndarray:
    """Suppress pixels that are weaker than a neighbour along the edge normal.

    Args:
        edges: HxW soft edge map (>= 0).
        orientation: HxW normal angles; estimated with :func:`edge_orientation` when omitted.
        radius: how far along the normal to compare (pixels).
        border: width of the image border over which responses fade linearly to 0 (the
            orientation estimate is unreliable there).
        margin: a pixel survives only if ``margin * value >= neighbour`` (tolerates flat tops).
    Returns:
        HxW thinned edge map, same dtype as float64.
    """
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 2:
        raise ValueError(f"edge map must be 2-D, got shape {e.shape}")
    if orientation is None:
        orientation = edge_orientation(e)
    h, w = e.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cos_o, sin_o = np.cos(orientation), np.sin(orientation)
    keep = np.ones_like(e, dtype=bool)
    for d in range(-radius, radius + 1):
        if d == 0:
            continue
        # x is the column (cos), y the row (sin), as in the toolbox; clamp to the image
        cx = np.clip(xx + d * cos_o, 0, w - 1.001)
        cy = np.clip(yy + d * sin_o, 0, h - 1.001)
        neighbour = ndimage.map_coordinates(e, [cy, cx], order=1, mode="nearest")
        keep &= e * margin >= neighbour
    out = np.where(keep, e, 0.0)
    if border > 0:
        ramp_x = np.minimum(np.minimum(np.arange(w), np.arange(w)[::-1]) / border, 1.0)
        ramp_y = np.minimum(np.minimum(np.arange(h), np.arange(h)[::-1]) / border, 1.0)
        out *= ramp_y[:, None] * ramp_x[None, :]
    return out
