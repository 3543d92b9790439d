"""Pictures people look at: masks drawn over the image, with the prompts that made them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

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


def overlay_masks(image: np.ndarray, masks: np.ndarray | list[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """Blend each boolean HxW mask in its colour over an HxWx3 uint8 image, with outlines."""
    out = image.astype(np.float32).copy()
    for i, m in enumerate(masks):
        m = np.asarray(m, dtype=bool)
        if not m.any():
            continue
        c = color_for(i)
        out[m] = out[m] * (1 - alpha) + c * alpha
        edge = m & ~_erode(m)
        out[edge] = c
    return out.clip(0, 255).astype(np.uint8)


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
    from .automatic.outputs import atomic_write

    canvas = render_overlay(image, masks, points=points, labels=labels, box=box)
    atomic_write(Path(path), lambda tmp: canvas.save(tmp, format="PNG"))
