"""Classical interactive-segmentation baselines for ``segany eval prompts``.

The model's single-prompt numbers mean little on their own: a box around a high-contrast
object is easy for any method. These baselines get exactly the model's inputs (the same
XYXY box, the same simulated clicks) and are scored by the same code, so the report shows
what the model adds over decades-old tools:

- :func:`grabcut_box`: OpenCV GrabCut (Rother et al. 2004) initialised from the box
  (``GC_INIT_WITH_RECT``), the textbook box-to-mask method;
- :func:`grabcut_clicks`: GrabCut driven by clicks (seed disks, ``GC_INIT_WITH_MASK``), so the
  click protocol of :mod:`segany.eval.clicks` can be run on it;
- :func:`box_fill`: the box itself as the mask, the floor any box method must beat.

Where GrabCut looks: the box variant runs on the whole image, as the original method and
OpenCV's demo do; the click variant runs on a region of interest (ROI) around the clicks
(see :func:`grabcut_clicks`). Both are the ``context`` argument (None = whole image, else
the margin in units of the prompt region's longer side, at least :data:`MIN_MARGIN` px), and
the defaults were chosen on 55 objects of *training* images (DSB2018 ids 0-b, CVPPP plants
<= 124, COCO train2017; never on the eval splits): for boxes a local ROI starves the
background model (CVPPP leaves: mIoU 0.06 with a 1x margin vs 0.53 on the whole image,
because the ring around a leaf is mostly other leaves), while for clicks, which carry no
extent, the ROI is the only spatial prior and the whole image lets every similar-coloured
region join the mask (1-click mIoU 0.12 / 0.04 / 0.16 on the whole image vs 0.24 / 0.17 /
0.35 with a 1x ROI on DSB2018 / CVPPP / COCO). The whole-image box is also the slow part of
a run: its time grows with the image's pixel count (~0.15 s per object for 256x256, ~0.5 s
for 481x321, on one core of the shared 2-core machine).

OpenCV's GrabCut seeds its colour models with k-means++ from OpenCV's global RNG, so every
call first reseeds it (``seed``): a baseline's result does not depend on what ran before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..masks import batched_mask_to_box

ITERATIONS = 5  # GrabCut's EM iterations, OpenCV's demo and the usual benchmark setting
BOX_CONTEXT: float | None = None  # box: the whole image, as the original GrabCut
CLICK_CONTEXT: float | None = 1.0  # clicks: ROI margin, in units of the clicked region's longer side
MIN_MARGIN = 16  # ROI margin in pixels at least (tiny objects still get background samples)
MIN_SIDE = 2  # boxes thinner than this (pixels) are returned as they are
MIN_PIXELS = 16  # ... and so are boxes with fewer pixels: too few to fit 5-component colour models
CLICK_RADIUS = 5  # seed disks at clicks (pixels)
FIRST_WINDOW = 0.25  # first click: probable-foreground square of this fraction of the shorter image side

_FG_LABELS = (cv2.GC_FGD, cv2.GC_PR_FGD)


def _image(image: np.ndarray) -> np.ndarray:
    """A C-contiguous HxWx3 uint8 array for ``cv2.grabCut`` (grey images are replicated to 3 channels).

    Channel order is irrelevant: GrabCut's Gaussian mixtures and its contrast term treat the
    three channels symmetrically, so RGB is passed as it is.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"GrabCut needs a uint8 image, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {img.shape}")
    return np.ascontiguousarray(img[..., :3])


def box_pixels(box: Sequence[float] | np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Inclusive pixel bounds ``(x0, y0, x1, y1)`` of an XYXY box, clipped to an image of ``shape`` (H, W).

    The box follows SAM's convention (a mask's tight box has its last row/column as x1/y1), so
    a box covers the pixel columns floor(x0)..ceil(x1). Swapped corners are sorted; a box that
    misses the image returns None. Non-finite coordinates are a caller error (ValueError).
    """
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.size != 4 or not np.isfinite(b).all():
        raise ValueError(f"a box must be 4 finite numbers (x0, y0, x1, y1), got {box!r}")
    h, w = int(shape[0]), int(shape[1])
    xa, xb = sorted((b[0], b[2]))
    ya, yb = sorted((b[1], b[3]))
    x0, y0 = max(0, int(np.floor(xa))), max(0, int(np.floor(ya)))
    x1, y1 = min(w - 1, int(np.ceil(xb))), min(h - 1, int(np.ceil(yb)))
    if x0 > x1 or y0 > y1:
        return None
    return x0, y0, x1, y1


def box_fill(image: np.ndarray, box: Sequence[float] | np.ndarray) -> np.ndarray:
    """The box itself as an HxW bool mask: the trivial reference every box-prompted method must beat."""
    h, w = np.asarray(image).shape[:2]
    out = np.zeros((h, w), dtype=bool)
    bounds = box_pixels(box, (h, w))
    if bounds is not None:
        x0, y0, x1, y1 = bounds
        out[y0 : y1 + 1, x0 : x1 + 1] = True
    return out


def _roi(bounds: tuple[int, int, int, int], shape: tuple[int, int], context: float | None) -> tuple[int, int, int, int]:
    """Inclusive ROI bounds: ``bounds`` grown by ``context`` x its longer side (>= MIN_MARGIN), clipped."""
    h, w = shape
    if context is None:
        return 0, 0, w - 1, h - 1
    if context < 0:
        raise ValueError(f"context must be >= 0 or None, got {context}")
    x0, y0, x1, y1 = bounds
    m = max(MIN_MARGIN, int(np.ceil(context * max(x1 - x0 + 1, y1 - y0 + 1))))
    return max(0, x0 - m), max(0, y0 - m), min(w - 1, x1 + m), min(h - 1, y1 + m)


def _run_grabcut(roi: np.ndarray, labels: np.ndarray, rect: tuple[int, int, int, int] | None, iters: int, seed: int) -> None:
    """``cv2.grabCut`` in place on ``labels`` (rect init when ``rect`` is given, else mask init)."""
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(seed)
    if rect is not None:
        cv2.grabCut(roi, labels, rect, bgd, fgd, iters, cv2.GC_INIT_WITH_RECT)
    else:
        cv2.grabCut(roi, labels, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)


def grabcut_box(
    image: np.ndarray,
    box: Sequence[float] | np.ndarray,
    iters: int = ITERATIONS,
    context: float | None = BOX_CONTEXT,
    seed: int = 0,
) -> np.ndarray:
    """OpenCV GrabCut initialised from an XYXY box (``GC_INIT_WITH_RECT``): an HxW bool mask.

    Everything outside the box is sure background, the box probable foreground, as in the
    original method; ``context`` limits GrabCut to the box grown by that many times its longer
    side (None, the default: the whole image). Degenerate inputs never raise (except
    non-finite coordinates, see :func:`box_pixels`):

    - a box that misses the image gives an empty mask;
    - a box thinner than :data:`MIN_SIDE` or with fewer than :data:`MIN_PIXELS` pixels is
      returned as it is (too few pixels to fit GrabCut's 5-component colour model);
    - a box that covers the whole image (or ROI) leaves no background samples, so the
      rectangle is shrunk by one pixel on each side touching the edge: the 1-pixel image
      border becomes the background sample, which costs a negligible ring of pixels;
    - any ``cv2.error`` (OpenCV's "no fg/bg samples" assertions, k-means with too few samples)
      falls back to the box itself.
    """
    if iters < 1:
        raise ValueError(f"GrabCut iterations must be >= 1, got {iters}")
    img = _image(image)
    h, w = img.shape[:2]
    bounds = box_pixels(box, (h, w))
    if bounds is None:
        return np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = bounds
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    if min(bw, bh) < MIN_SIDE or bw * bh < MIN_PIXELS:
        return box_fill(img, bounds)
    rx0, ry0, rx1, ry1 = _roi(bounds, (h, w), context)
    roi = np.ascontiguousarray(img[ry0 : ry1 + 1, rx0 : rx1 + 1])
    rh, rw = roi.shape[:2]
    left, top, right, bottom = x0 - rx0, y0 - ry0, x1 - rx0, y1 - ry0
    if rw * rh - bw * bh < MIN_PIXELS:  # no background around the box: use the ROI's border ring
        left, top = max(left, 1), max(top, 1)
        right, bottom = min(right, rw - 2), min(bottom, rh - 2)
        if right - left + 1 < MIN_SIDE or bottom - top + 1 < MIN_SIDE:
            return box_fill(img, bounds)
    labels = np.zeros((rh, rw), np.uint8)
    try:
        _run_grabcut(roi, labels, (left, top, right - left + 1, bottom - top + 1), iters, seed)
    except cv2.error:
        return box_fill(img, bounds)
    out = np.zeros((h, w), dtype=bool)
    out[ry0 : ry1 + 1, rx0 : rx1 + 1] = np.isin(labels, _FG_LABELS)
    return out


def _pointed_region(
    xy: Sequence[tuple[int, int]], positive: Sequence[bool], shape: tuple[int, int], radius: int, window: float
) -> np.ndarray:
    """The square of ``window`` x the shorter image side around the first positive click (HxW bool).

    This is both the first click's probable-foreground prior and the anchor of the region of
    interest; no positive click gives an empty region.
    """
    h, w = shape
    out = np.zeros((h, w), dtype=bool)
    half = max(radius, int(round(window * min(h, w) / 2)))
    for (x, y), pos in zip(xy, positive):
        if pos:
            out[max(0, y - half) : max(0, y + half + 1), max(0, x - half) : max(0, x + half + 1)] = True
            break
    return out


def grabcut_clicks(
    image: np.ndarray,
    points: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    prev_mask: np.ndarray | None = None,
    iters: int = ITERATIONS,
    radius: int = CLICK_RADIUS,
    window: float = FIRST_WINDOW,
    context: float | None = CLICK_CONTEXT,
    seed: int = 0,
) -> np.ndarray:
    """Click-driven GrabCut (``GC_INIT_WITH_MASK``): the mask for all clicks so far, HxW bool.

    Args:
        image: HxWx3 uint8.
        points: Kx2 (x, y) clicks in pixels, oldest first.
        labels: K labels, 1 = foreground (positive) click, 0 = background (negative).
        prev_mask: this method's own previous mask (HxW bool), or None before the first result.
        iters: GrabCut EM iterations.
        radius: radius of the seed disk drawn at every click.
        window: first-click prior, as a fraction of the image's shorter side.
        context: ROI margin in units of the seeded region's longer side; None = whole image.
        seed: OpenCV RNG seed (GrabCut's k-means initialisation).

    The initial labels, and why:

    - every click is a disk of ``radius`` px: sure foreground at positive clicks, sure
      background at negative ones, later clicks overriding earlier ones where disks overlap.
      A disk rather than a pixel, because GrabCut's colour models need samples and a user's
      click means "this part", not "this pixel"; 5 px is well inside almost every object the
      simulation clicks on (the click is the point deepest inside the error region);
    - with a previous mask, it is probable foreground and the rest probable background: GrabCut
      re-estimates both colour models from it and may move any unseeded pixel, so earlier
      mistakes can still be undone and only the clicks are hard constraints;
    - with no previous mask (the first click), a probable-foreground square of ``window`` x the
      image's shorter side centred on the first positive click, the rest probable background. A
      click carries no scale, and neither the model nor this baseline is told the object's
      size; a fixed fraction of the image is a neutral prior (1/4 fits a typical GrabCut or
      COCO object, over-segments tiny nuclei and leaves, where the corrective clicks then act);
    - the region of interest is anchored on the clicks, not on the previous mask: the
      first-click square plus every positive click's disk, grown by ``context`` x its longer
      side. Were it grown from the previous mask (or from negative clicks, which land on that
      mask's false alarms), a mask that leaked would widen the next ROI, which then leaks
      further: on DSB2018 training images the mask of one nucleus grew with every negative
      click, taking in ever more of the image's other nuclei. An object larger than the ROI is cut at its
      edge until a corrective (positive) click lands in the missed part and widens the ROI;
      the previous mask outside the ROI is dropped;
    - the ROI's edges are sure background where the ROI ends inside the image (outside it is
      background by construction, and this guarantees background samples), and probable
      background on the image border: objects touching the border (common in COCO) are not
      clipped by a hard constraint, yet the border still seeds the background model.

    With no foreground seed at all (only negative clicks and no previous mask) the result is
    empty. Any ``cv2.error`` falls back to the initial foreground (previous mask or window,
    with the click disks applied).
    """
    if iters < 1:
        raise ValueError(f"GrabCut iterations must be >= 1, got {iters}")
    img = _image(image)
    h, w = img.shape[:2]
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    labs = np.asarray(labels).reshape(-1)
    if len(pts) == 0 or len(pts) != len(labs):
        raise ValueError(f"need one label per click and at least one click, got {len(pts)} points and {len(labs)} labels")
    if not np.isfinite(pts).all():
        raise ValueError("click coordinates must be finite")
    xy = [(int(round(x)), int(round(y))) for x, y in pts]
    positive = [bool(v) for v in labs]

    if prev_mask is not None:
        init_fg = np.asarray(prev_mask, dtype=bool)
        if init_fg.shape != (h, w):
            raise ValueError(f"prev_mask {init_fg.shape} does not match the image {(h, w)}")
    else:
        init_fg = _pointed_region(xy, positive, (h, w), radius, window)
    seeds = np.full((h, w), 255, np.uint8)  # 255 = unseeded, 1 = sure fg, 0 = sure bg
    for (x, y), pos in zip(xy, positive):
        cv2.circle(seeds, (x, y), int(radius), 1 if pos else 0, -1)
    fg_seed = seeds == 1
    if not (fg_seed.any() or (init_fg & (seeds != 0)).any()):
        return np.zeros((h, w), dtype=bool)

    anchor = _pointed_region(xy, positive, (h, w), radius, window) | fg_seed
    if not anchor.any():  # a previous mask but no positive click: nothing to anchor the ROI on
        raise ValueError("the region of interest needs a positive click")
    bx0, by0, bx1, by1 = (int(v) for v in batched_mask_to_box(anchor).tolist())
    rx0, ry0, rx1, ry1 = _roi((bx0, by0, bx1, by1), (h, w), context)
    roi = np.ascontiguousarray(img[ry0 : ry1 + 1, rx0 : rx1 + 1])
    lab = np.where(init_fg[ry0 : ry1 + 1, rx0 : rx1 + 1], cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    for sl, inside in (
        ((0, slice(None)), ry0 > 0),
        ((-1, slice(None)), ry1 < h - 1),
        ((slice(None), 0), rx0 > 0),
        ((slice(None), -1), rx1 < w - 1),
    ):
        lab[sl] = cv2.GC_BGD if inside else cv2.GC_PR_BGD
    s = seeds[ry0 : ry1 + 1, rx0 : rx1 + 1]
    lab[s == 1] = cv2.GC_FGD
    lab[s == 0] = cv2.GC_BGD
    fallback = np.isin(lab, _FG_LABELS)
    if fallback.all() or not fallback.any():
        out_roi = fallback  # one side without samples: GrabCut cannot fit its models
    else:
        try:
            _run_grabcut(roi, lab, None, iters, seed)
            out_roi = np.isin(lab, _FG_LABELS)
        except cv2.error:
            out_roi = fallback
    out = np.zeros((h, w), dtype=bool)
    out[ry0 : ry1 + 1, rx0 : rx1 + 1] = out_roi
    return out
