"""Binary masks <-> polygons, for the polygon formats (COCO polygons, YOLO-seg).

Geometry. A pixel ``(x, y)`` is the unit square ``[x, x+1] x [y, y+1]``: COCO's frame, in
which pycocotools rasterises a polygon by pixel centres (a pixel is set when its centre
``(x+0.5, y+0.5)`` is inside). The polygons made here run a quarter pixel inside the mask's
outline -- through the centres of the boundary sub-pixels of the mask upsampled 2x -- so
every set pixel's centre is inside, every unset pixel's centre outside, and pycocotools
gives back exactly the mask (:func:`polygons_to_mask`). OpenCV's contours of the mask
itself run through the boundary pixels' centres, which would lose half a pixel all round
(a 4x4 square would come back 3x3).

Holes. COCO's polygon list is a *union* (pycocotools merges the parts), so a hole written
as a polygon of its own would be filled in. Each hole is therefore cut into the polygon
around it with a zero-width bridge (the "keyhole" trick; Ultralytics joins the segments of
one COCO object for YOLO the same way): the polygon runs to the nearest hole vertex, round
the hole the other way and back along the same bridge. Even-odd and non-zero fill rules
both leave the hole empty and the doubled bridge adds no area; an editor shows a slit.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy.spatial import cKDTree

from ..masks import mask_window, rasterize_polygons


def _signed_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def bridge(outer: np.ndarray, inner: np.ndarray, reverse_inner: bool = True) -> np.ndarray:
    """One polygon that runs round ``outer`` and, over a zero-width bridge, round ``inner``.

    The bridge joins the closest pair of vertices. ``reverse_inner`` makes ``inner`` wind
    the other way from ``outer`` (what a hole needs under the non-zero rule); joining two
    separate parts into one YOLO line keeps both windings as they are. Nx2, Mx2 -> (N+M+2)x2.
    """
    if len(inner) == 0:
        return outer
    if reverse_inner and (_signed_area(outer) > 0) == (_signed_area(inner) > 0):
        inner = inner[::-1]
    dist, idx = cKDTree(inner).query(outer)
    i = int(np.argmin(dist))
    j = int(idx[i])
    return np.concatenate([outer[: i + 1], inner[j:], inner[: j + 1], outer[i:]])


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[np.ndarray]:
    """HxW bool mask -> one Kx2 float polygon (x, y in pixels, COCO frame) per connected part.

    Parts are OpenCV's outer contours (``cv2.findContours`` with ``RETR_CCOMP``, 8-connected);
    each part's holes are bridged into it (see the module docstring), and a part inside a
    hole is a part of its own. ``tolerance`` > 0 simplifies each contour with
    ``cv2.approxPolyDP`` (that many pixels; 0 keeps every stair step, which is exact).
    Empty mask -> [].
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {m.shape}")
    window = mask_window(m)
    if window is None:
        return []
    (y0, y1), (x0, x1) = (window[0].start, window[0].stop), (window[1].start, window[1].stop)
    crop = np.pad(m[y0:y1, x0:x1], 1).astype(np.uint8)
    up = np.repeat(np.repeat(crop, 2, axis=0), 2, axis=1)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if tolerance > 0:
        contours = [cv2.approxPolyDP(c, 2.0 * tolerance, True) for c in contours]
    # sub-pixel s of the padded, doubled crop has its centre at (s + 0.5) / 2 - 1 + offset
    offset = np.array([x0 - 1.0, y0 - 1.0])
    pts = [c.reshape(-1, 2).astype(np.float64) * 0.5 + 0.25 + offset for c in contours]
    tree = hierarchy.reshape(-1, 4)  # next, previous, first child, parent
    out = []
    for k in range(len(pts)):
        if tree[k, 3] != -1:
            continue  # a hole: bridged into its parent below
        poly = pts[k]
        child = tree[k, 2]
        while child != -1:
            if len(pts[child]) >= 3:
                poly = bridge(poly, pts[child])
            child = tree[child, 0]
        if len(poly) >= 3:
            out.append(poly)
    return out


def join_polygons(polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Several parts as one polygon, joined by zero-width bridges (one YOLO-seg line per
    instance). The parts keep their windings; their areas add under the even-odd rule."""
    if not polygons:
        return np.zeros((0, 2))
    out = np.asarray(polygons[0], dtype=np.float64)
    for p in polygons[1:]:
        out = bridge(out, np.asarray(p, dtype=np.float64), reverse_inner=False)
    return out


def polygons_to_mask(polygons: Sequence[Sequence[float] | np.ndarray], height: int, width: int) -> np.ndarray:
    """Polygons (flat ``[x0, y0, x1, y1, ...]`` lists or Kx2 arrays, COCO frame) -> HxW bool
    mask, rasterised as pycocotools does (``annToMask``): the parts' union."""
    flat = [np.asarray(p, dtype=np.float64).reshape(-1).tolist() for p in polygons]
    for k, p in enumerate(flat):
        if len(p) < 6 or len(p) % 2:
            raise ValueError(f"polygon {k} has {len(p)} coordinates; a polygon needs an even number, at least 6")
    # pycocotools reads a 4-number list as a box; every polygon here has >= 3 points.
    return rasterize_polygons(flat, height, width)
