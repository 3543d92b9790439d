"""Data engine statistics per stage and model version (paper section 4).

The paper reports, per stage, how many images and masks were collected, masks per image
and the annotation time per mask (34 s falling to 14 s in the assisted-manual stage as
the model was retrained). This module computes the same numbers from the store, grouped
by mask ``source`` (manual = assisted-manual, prefilled = semi-automatic, automatic)
and ``model_version``, and plots them.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_files import atomic_path
from .store import Store


def engine_statistics(store: Store, skipped: list[tuple[int, str]] | None = None) -> list[dict[str, Any]]:
    """One row per (source, model_version): images, masks, masks/image, seconds/mask.

    Unreadable mask rows (see :meth:`Store.masks`) are left out; pass ``skipped`` to get
    them as ``(mask_id, reason)`` so the caller can say so.
    """
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for m in store.masks(skipped=skipped):
        groups[(m.source, m.model_version)].append(m)
    rows = []
    for (source, version), masks in sorted(groups.items()):
        images = {m.image_id for m in masks}
        seconds = np.array([m.seconds for m in masks], dtype=float)
        annotators = {m.annotator for m in masks}
        rows.append(
            {
                "stage": source,
                "model_version": version,
                "images": len(images),
                "masks": len(masks),
                "masks_per_image": len(masks) / max(1, len(images)),
                "seconds_per_mask_mean": float(seconds.mean()) if len(seconds) else 0.0,
                "seconds_per_mask_median": float(np.median(seconds)) if len(seconds) else 0.0,
                "annotators": len(annotators),
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]], total_images: int) -> str:
    header = f"{'stage':<10} {'model':<30} {'images':>6} {'masks':>6} {'masks/img':>9} {'s/mask':>7} {'median':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['stage']:<10} {r['model_version'][:30]:<30} {r['images']:>6} {r['masks']:>6} "
            f"{r['masks_per_image']:>9.1f} {r['seconds_per_mask_mean']:>7.1f} {r['seconds_per_mask_median']:>7.1f}"
        )
    lines.append(f"images in the store: {total_images}")
    return "\n".join(lines)


def plot_statistics(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Bar charts of masks per image and seconds per mask per stage/model (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    labels = [f"{r['stage']}\n{r['model_version'][:18]}" for r in rows] or ["(none)"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    series = [
        ("masks per image", [r["masks_per_image"] for r in rows]),
        ("seconds per mask (mean)", [r["seconds_per_mask_mean"] for r in rows]),
        ("images", [r["images"] for r in rows]),
    ]
    colours = {"manual": "tab:blue", "prefilled": "tab:orange", "automatic": "tab:green"}
    for ax, (title, values) in zip(axes, series):
        ax.bar(range(len(values)), values or [0], color=[colours.get(r["stage"], "grey") for r in rows] or ["grey"])
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(title)
    fig.suptitle("segany data engine: statistics per stage and model version")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
