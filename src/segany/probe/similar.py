"""``segany probe similar``: the masks nearest a query mask in an embedding space, drawn as a
grid of crops like the paper's figure 17 (query first, framed in magenta).

Similarity is the cosine of the stored features (float16 on disk, float32 here). The query
itself is excluded from its neighbours; ``other_images`` also excludes the rest of its
image, for "the same kind of thing elsewhere" rather than "its neighbours in the photo".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..image_io import load_image
from ..masks import rle_to_mask
from ..visualize import overlay_masks
from .store import MaskEmbeddings

QUERY_COLOUR = (1.0, 0.0, 1.0)  # magenta, as the paper's query box
MASK_COLOUR = (30, 144, 255)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` (NxD) with every row of ``b`` (MxD); a zero
    row has similarity 0 with everything."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def nearest(
    emb: MaskEmbeddings, query: int, feature: str, k: int, other_images: bool = False, include_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the ``k`` masks most similar to mask ``query``
    (most similar first; ties in index order). ``include_self`` keeps the query among the
    candidates (it is then first: a vector is most similar to itself)."""
    if k < 1:
        raise ValueError(f"--k must be at least 1, got {k}")
    sims = cosine_matrix(emb.feature(feature)[query : query + 1], emb.feature(feature))[0]
    keep = np.ones(len(emb), dtype=bool)
    if not include_self:
        keep[query] = False
    if other_images:
        keep &= emb.image_sha256 != emb.image_sha256[query]
    candidates = np.flatnonzero(keep)
    if len(candidates) == 0:
        raise ValueError("no other masks to compare with" + (" on other images" if other_images else ""))
    order = candidates[np.argsort(-sims[candidates], kind="stable")][:k]
    return order, sims[order]


def mask_crop(image: np.ndarray, mask: np.ndarray, box: np.ndarray, size: int, margin: float = 0.2) -> np.ndarray:
    """A ``size`` x ``size`` tile: the square around the mask's box (plus ``margin`` of its
    side as context), the mask overlaid and outlined."""
    from PIL import Image

    h, w = mask.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0 + 1, y1 - y0 + 1) * (1 + 2 * margin)
    side = max(side, 16.0)
    cx, cy = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    s = round(side)
    canvas = np.full((s, s, 3), 255, dtype=np.uint8)
    cm = np.zeros((s, s), dtype=bool)
    sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(left + s, w), min(top + s, h)
    canvas[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = image[sy0:sy1, sx0:sx1]
    cm[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = mask[sy0:sy1, sx0:sx1]
    tile = overlay_masks(canvas, [cm], alpha=0.4, colors=[MASK_COLOUR])
    return np.asarray(Image.fromarray(tile).resize((size, size), Image.BILINEAR))


def _image_of(emb: MaskEmbeddings, i: int, cache: dict[str, np.ndarray]) -> np.ndarray:
    path = str(emb.image_path[i])
    if path not in cache:
        if not Path(path).is_file():
            raise ValueError(f"image {path} of mask {emb.mask_id[i]} is missing (moved since it was embedded?)")
        image = load_image(path)
        if image.shape[:2] != tuple(int(v) for v in emb.rle_size[i]):
            raise ValueError(f"image {path} of mask {emb.mask_id[i]} changed size since it was embedded")
        cache[path] = image
    return cache[path]


def render_similar(
    emb: MaskEmbeddings,
    query: int,
    neighbours: np.ndarray,
    sims: np.ndarray,
    feature: str,
    path: str | os.PathLike,
    tile: int = 112,
    cols: int = 6,
) -> Path:
    """Write the grid PNG (atomically): the query, then ``neighbours`` with their similarity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [query, *[int(i) for i in neighbours]]
    cols = min(cols, len(order))
    rows = -(-len(order) // cols)
    inch = tile / 80
    fig, axes = plt.subplots(rows, cols, figsize=(cols * inch, rows * (inch + 0.32)), squeeze=False)
    images: dict[str, np.ndarray] = {}
    for ax in axes.flat:
        ax.axis("off")
    for n, i in enumerate(order):
        ax = axes.flat[n]
        crop = mask_crop(_image_of(emb, i, images), rle_to_mask(emb.rle(i)), emb.box[i], tile)
        ax.imshow(crop)
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        name = f"{emb.image[i]}:{emb.annotation_id[i]}"
        label = str(emb.category[i] or emb.label[i])
        head = "query" if n == 0 else f"{sims[n - 1]:.3f}"
        ax.set_title(f"{head}\n{label}" if label else head, fontsize=6.5, pad=2)
        ax.set_xlabel(name, fontsize=4.5, labelpad=1)
        for spine in ax.spines.values():
            spine.set_edgecolor(QUERY_COLOUR if n == 0 else (0.7, 0.7, 0.7))
            spine.set_linewidth(3 if n == 0 else 0.5)
    fig.suptitle(
        f"{len(neighbours)} nearest masks to {emb.mask_id[query]} by cosine similarity of the {feature} embedding",
        fontsize=7,
    )
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 0.97))  # room for the title
    target = Path(path)
    save_palette_png(fig, target, dpi=80)
    return target


def save_palette_png(fig: Any, path: Path, dpi: int) -> None:
    """Save a matplotlib figure as a 256-colour PNG, atomically, and close it.

    Why: a grid of photo crops saved in full colour is several hundred KB; quantised to a
    palette it is a third of that and still shows what the crops are."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    from ..atomic_files import write_bytes_atomic

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    write_bytes_atomic(path, out.getvalue())
