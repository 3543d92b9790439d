"""Pictures people look at: masks drawn over the image, with the prompts that made them.

The one overlay of the package (:func:`overlay_masks`): ``segany predict``, the automatic
overlays (:func:`overlay_records`) and the evaluation figures all draw masks with it, so a
mask looks the same wherever it is shown; callers choose only colours, opacity and order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .masks import rle_to_mask

PALETTE = np.array(
    [[30, 144, 255], [255, 99, 71], [50, 205, 50], [255, 215, 0], [186, 85, 211], [0, 206, 209],
     [255, 140, 0], [199, 21, 133], [154, 205, 50], [70, 130, 180]],
    dtype=np.float32,
)


def color_for(i: int, seed: int | None = None) -> np.ndarray:
    """Distinct colours for the first ten masks, then random but reproducible ones."""
    if i < len(PALETTE) and seed is None:
        return PALETTE[i]
    return np.random.RandomState((seed or 0) * 100003 + i).randint(40, 256, 3).astype(np.float32)


def overlay_masks(
    image: np.ndarray,
    masks: Iterable[np.ndarray],
    alpha: float = 0.5,
    colors: Sequence[Sequence[float]] | np.ndarray | None = None,
    outline_shade: float = 1.0,
) -> np.ndarray:
    """Blend each boolean HxW mask in its colour over an HxWx3 uint8 image, then outline it.

    Masks are drawn in order, each over the ones before (blend, then outline), in float32,
    clipped and truncated to uint8 once at the end. ``masks`` may be a generator: each mask
    is used once, so a caller with many full-size masks can decode them one at a time.

    Args:
        colors: one RGB per mask; :func:`color_for` (the palette) when None.
        outline_shade: the outline is the mask's colour times this (1 = the colour itself;
            the automatic overlays darken it so touching masks stay apart).

    The outline is the set of mask pixels with a 4-neighbour outside the mask (holes are
    outlined too); the image border does not count as outside, so a mask cut by the border
    is not outlined along it.
    """
    out = image.astype(np.float32).copy()
    for i, m in enumerate(masks):
        m = np.asarray(m, dtype=bool)
        if not m.any():
            continue
        c = color_for(i) if colors is None else np.asarray(colors[i], dtype=np.float32)
        out[m] = out[m] * (1 - alpha) + c * alpha
        edge = m & ~_erode(m)
        out[edge] = c * outline_shade
    return out.clip(0, 255).astype(np.uint8)


def overlay_records(
    image: np.ndarray, records: Sequence[dict[str, Any]], alpha: float = 0.5, max_side: int = 2048
) -> np.ndarray:
    """The image with every mask of ``records`` filled in its own colour and outlined, as
    ``segany auto --overlay`` writes it.

    ``records`` are the automatic generator's (or SA-1B's) annotations: an RLE
    ``segmentation`` and an ``area`` each. Largest masks are drawn first, so small ones stay
    visible on top; colours are random but reproducible (seed 0, record ``i`` always gets
    colour ``i``) with outlines at 0.6 of the colour. Images larger than ``max_side`` are
    shown downscaled (bilinear), their masks with them (nearest), decoded one at a time.
    """
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = image if scale == 1.0 else np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    colours = np.random.RandomState(0).randint(40, 256, size=(max(1, len(records)), 3)).astype(np.float32)
    order = sorted(range(len(records)), key=lambda k: -records[k]["area"])

    def decoded() -> Iterator[np.ndarray]:
        for i in order:
            m = rle_to_mask(records[i]["segmentation"])
            yield m if scale == 1.0 else np.asarray(Image.fromarray(m).resize(size, Image.NEAREST))

    return overlay_masks(base, decoded(), alpha=alpha, colors=colours[order], outline_shade=0.6)


def _erode(m: np.ndarray) -> np.ndarray:
    e = m.copy()
    e[1:, :] &= m[:-1, :]
    e[:-1, :] &= m[1:, :]
    e[:, 1:] &= m[:, :-1]
    e[:, :-1] &= m[:, 1:]
    return e


def render_overlay(
    image: np.ndarray,
    masks: np.ndarray | list[np.ndarray],
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
) -> Image.Image:
    """Image + masks + prompts (green = foreground point, red = background, box in yellow).

    Separate from :func:`save_overlay` so a caller can render first and write the overlay
    together with its masks (all files or none, see ``predict``)."""
    canvas = Image.fromarray(overlay_masks(image, masks))
    draw = ImageDraw.Draw(canvas)
    r = max(3, round(max(image.shape[:2]) / 150))
    if points is not None and labels is not None:
        for (x, y), lab in zip(np.asarray(points), np.asarray(labels)):
            if lab == -1:
                continue
            fill = (0, 220, 0) if lab == 1 else (230, 0, 0)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255), width=max(1, r // 3))
    if box is not None:
        x0, y0, x1, y1 = [float(v) for v in np.asarray(box).reshape(-1)[:4]]
        draw.rectangle([x0, y0, x1, y1], outline=(255, 230, 0), width=max(2, r // 2))
    return canvas


def save_overlay(
    image: np.ndarray,
    masks: np.ndarray | list[np.ndarray],
    path: str | os.PathLike,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
) -> None:
    """Write :func:`render_overlay` as a PNG, atomically (temp file, then rename)."""
    from .atomic_files import atomic_path

    canvas = render_overlay(image, masks, points=points, labels=labels, box=box)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
