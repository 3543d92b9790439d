"""Simulated clicks for interactive evaluation (paper appendix D.1; the RITM protocol).

- first click: the mask "centre" (the maximum of the mask's interior distance transform,
  deterministic) or a uniformly random interior pixel (seeded);
- every later click: in the error region between prediction and ground truth, the pixel
  farthest from that region's boundary; positive (foreground) when it lies in a miss, negative
  (background) when it lies in a false alarm, whichever error is "deeper".

Ignore regions (e.g. GrabCut's 128-valued band) are never clicked and never count as errors.
Distances treat the image border as a boundary, as the standard protocol pads the mask.
All coordinates are (x, y) pixels in the original image frame.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..masks import mask_iou


def _inner_distance(region: np.ndarray) -> np.ndarray:
    """*Squared* Euclidean distance (int64, exact) of each pixel of ``region`` to its nearest
    non-region pixel (image border included); callers only compare and rank distances.

    Why squared integers: OpenCV's exact transform (``DIST_MASK_PRECISE``) returns float32
    values whose last bits depend on ``cv2.setNumThreads`` (up to 1.5e-5 apart between 1
    and 2 threads on 480x640 masks), and that thread count is process-wide state other
    commands set. Near-equal maxima then ranked differently, moved a click, and every later
    click of that object followed: the same evaluation gave different numbers in one process
    and another. The squared distance of an exact transform is an integer (dx^2 + dy^2), and
    float32 rounding stays far below 0.5 on it for any image size this package reads, so
    rounding recovers it exactly: thread-independent values, true ties, and ties broken by
    row order as documented."""
    padded = np.pad(region.astype(np.uint8), 1, mode="constant")
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1].astype(np.float64)
    return np.rint(dist * dist).astype(np.int64)


def _clickable(mask: np.ndarray, ignore: np.ndarray | None) -> np.ndarray:
    """The mask minus the ignore region; the whole mask if the ignore region covers all of it
    (an object inside a COCO crowd region must still get its first click)."""
    region = np.asarray(mask, dtype=bool)
    if not region.any():
        raise ValueError("cannot place a click in an empty mask")
    if ignore is not None and (region & ~ignore).any():
        region = region & ~ignore
    return region


def center_click(mask: np.ndarray, ignore: np.ndarray | None = None) -> tuple[int, int]:
    """(x, y) of the pixel of ``mask`` farthest from its boundary (first pixel in row order on ties)."""
    region = _clickable(mask, ignore)
    dist = _inner_distance(region)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def random_click(mask: np.ndarray, rng: np.random.Generator, ignore: np.ndarray | None = None) -> tuple[int, int]:
    """(x, y) of a uniformly random pixel of ``mask`` (outside ``ignore``)."""
    ys, xs = np.nonzero(_clickable(mask, ignore))
    k = int(rng.integers(ys.size))
    return int(xs[k]), int(ys[k])


def first_click(
    mask: np.ndarray, mode: str, rng: np.random.Generator, ignore: np.ndarray | None = None
) -> tuple[int, int]:
    """The first click by ``mode``: ``"center"`` or ``"random"``."""
    if mode == "center":
        return center_click(mask, ignore)
    if mode == "random":
        return random_click(mask, rng, ignore)
    raise ValueError(f"unknown first-click mode {mode!r}; use 'center' or 'random'")


def next_click(
    pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None
) -> tuple[int, int, bool] | None:
    """The corrective click for prediction ``pred`` of ground truth ``gt``.

    Returns:
        (x, y, is_positive), or None when the prediction has no error left.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    valid = np.ones_like(gt) if ignore is None else ~ignore
    misses = gt & ~pred & valid
    false_alarms = ~gt & pred & valid
    d_miss = _inner_distance(misses)
    d_fa = _inner_distance(false_alarms)
    m_miss = int(d_miss.max()) if misses.any() else 0
    m_fa = int(d_fa.max()) if false_alarms.any() else 0
    if m_miss == 0 and m_fa == 0:
        return None
    positive = m_miss > m_fa
    dist = d_miss if positive else d_fa
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y), bool(positive)


def iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Intersection over union of two HxW masks, not counting ``ignore`` pixels; 1.0 if both are empty.

    :func:`segany.masks.mask_iou` in float64, which is exactly Python's ``intersection /
    union`` of the pixel counts (the numbers every report so far was made with).
    """
    return float(mask_iou(pred, gt, ignore, pairwise=False, dtype=torch.float64))


def number_of_clicks(ious: np.ndarray, threshold: float, max_clicks: int) -> int:
    """NoC@threshold: the first click count (1-based) whose IoU reaches ``threshold``, else ``max_clicks``."""
    ious = np.asarray(ious, dtype=np.float64)[:max_clicks]
    hit = np.flatnonzero(ious >= threshold)
    return int(hit[0]) + 1 if hit.size else max_clicks
