"""Data engine statistics per stage and model version (paper section 4).

The paper reports, per stage, how many images and masks were collected, masks per image
and the annotation time per mask (34 s falling to 14 s in the assisted-manual stage as
the model was retrained), and the clicks an annotator needed. This module computes the
same numbers from the store, grouped by mask ``source`` (manual = assisted-manual,
prefilled = semi-automatic, automatic) and ``model_version``, and once more per model
version alone (all stages together, beside what the registry says about the version), and
plots them.

Clicks per mask are averaged over the masks that recorded them (the page counts its
prompts; masks saved by older versions, pre-filled or posted without a count have none), and
the table says how many that was, so a mean over a few masks is not read as one over all.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_files import atomic_path
from .store import MaskRow, Store


def _effort(masks: list[MaskRow]) -> dict[str, Any]:
    """Masks per image, seconds per mask and clicks per mask of one group of masks."""
    images = {m.image_id for m in masks}
    seconds = np.array([m.seconds for m in masks], dtype=float)
    clicks = np.array([m.clicks for m in masks if m.clicks is not None], dtype=float)
    return {
        "images": len(images),
        "masks": len(masks),
        "masks_per_image": len(masks) / max(1, len(images)),
        "seconds_per_mask_mean": float(seconds.mean()) if len(seconds) else 0.0,
        "seconds_per_mask_median": float(np.median(seconds)) if len(seconds) else 0.0,
        "masks_with_clicks": int(len(clicks)),
        "clicks_per_mask_mean": float(clicks.mean()) if len(clicks) else None,
        "clicks_per_mask_median": float(np.median(clicks)) if len(clicks) else None,
        "annotators": len({m.annotator for m in masks}),
    }


def engine_statistics(store: Store, skipped: list[tuple[int, str]] | None = None) -> list[dict[str, Any]]:
    """One row per (source, model_version): images, masks, masks/image, seconds/mask, clicks/mask.

    Unreadable mask rows (see :meth:`Store.masks`) are left out; pass ``skipped`` to get
    them as ``(mask_id, reason)`` so the caller can say so.
    """
    groups: dict[tuple[str, str], list[MaskRow]] = defaultdict(list)
    for m in store.masks(skipped=skipped):
        groups[(m.source, m.model_version)].append(m)
    return [
        {"stage": source, "model_version": version, **_effort(masks)}
        for (source, version), masks in sorted(groups.items())
    ]


def version_statistics(store: Store, skipped: list[tuple[int, str]] | None = None) -> list[dict[str, Any]]:
    """One row per model version (every stage together), with the registry's parent and eval mIoU@1.

    Versions are listed in the registry's order (oldest first), then the unregistered labels
    masks carry (the shipped model, a served checkpoint), by name. A registered version that
    has proposed no mask yet is listed with zero masks: it is the one to serve next.
    """
    by_version: dict[str, list[MaskRow]] = defaultdict(list)
    for m in store.masks(skipped=skipped):
        by_version[m.model_version].append(m)
    registered = {v.name: v for v in store.model_versions()}
    order = list(registered) + sorted(set(by_version) - set(registered))
    rows = []
    for name in order:
        reg = registered.get(name)
        mean = (reg.metrics.get("points") or {}).get("mean") if reg else None
        rows.append(
            {
                "model_version": name,
                "registered": reg is not None,
                "parent": reg.parent if reg else None,
                "trained_on_masks": reg.masks if reg else None,
                "eval_miou_1": float(mean["mIoU"]["1"]) if mean else None,
                **_effort(by_version.get(name, [])),
            }
        )
    return rows


def _num(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.1f}"


def format_table(rows: list[dict[str, Any]], total_images: int, versions: list[dict[str, Any]] | None = None) -> str:
    """The per-stage table and, given ``versions`` (:func:`version_statistics`), the per-version one."""
    header = (
        f"{'stage':<10} {'model':<30} {'images':>6} {'masks':>6} {'masks/img':>9} {'s/mask':>7} {'median':>7} "
        f"{'clicks/mask':>11} {'(of)':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['stage']:<10} {r['model_version'][:30]:<30} {r['images']:>6} {r['masks']:>6} "
            f"{r['masks_per_image']:>9.1f} {r['seconds_per_mask_mean']:>7.1f} {r['seconds_per_mask_median']:>7.1f} "
            f"{_num(r.get('clicks_per_mask_mean'), 11)} {r.get('masks_with_clicks', 0):>6}"
        )
    lines.append(f"images in the store: {total_images}")
    if versions:
        header = (
            f"{'model version':<30} {'parent':<24} {'images':>6} {'masks':>6} {'masks/img':>9} {'s/mask':>7} "
            f"{'clicks/mask':>11} {'eval mIoU@1':>11}"
        )
        lines += ["", header, "-" * len(header)]
        for v in versions:
            miou = None if v["eval_miou_1"] is None else 100 * v["eval_miou_1"]
            lines.append(
                f"{v['model_version'][:30]:<30} {(v['parent'] or '-')[:24]:<24} {v['images']:>6} {v['masks']:>6} "
                f"{v['masks_per_image']:>9.1f} {v['seconds_per_mask_mean']:>7.1f} "
                f"{_num(v['clicks_per_mask_mean'], 11)} {_num(miou, 11)}"
            )
    return "\n".join(lines)


def plot_statistics(rows: list[dict[str, Any]], path: str | Path, versions: list[dict[str, Any]] | None = None) -> Path:
    """Bar charts per stage/model (masks per image, seconds and clicks per mask, images) and,
    given ``versions``, a second row of the same per model version (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    colours = {"manual": "tab:blue", "prefilled": "tab:orange", "automatic": "tab:green"}
    panels = [
        ("masks per image", "masks_per_image"),
        ("seconds per mask (mean)", "seconds_per_mask_mean"),
        ("clicks per mask (mean)", "clicks_per_mask_mean"),
        ("images", "images"),
    ]
    figure_rows = [
        (
            "stage / model",
            rows,
            [f"{r['stage']}\n{r['model_version'][:18]}" for r in rows],
            [colours.get(r["stage"], "grey") for r in rows],
        )
    ]
    if versions:
        figure_rows.append(
            (
                "model version",
                versions,
                [v["model_version"][:18] for v in versions],
                ["tab:purple" if v["registered"] else "grey" for v in versions],
            )
        )
    fig, axes = plt.subplots(len(figure_rows), len(panels), figsize=(16, 4 * len(figure_rows)), squeeze=False)
    for line, (what, data, labels, colour) in zip(axes, figure_rows):
        for ax, (title, key) in zip(line, panels):
            values = [0.0 if d.get(key) is None else float(d[key]) for d in data]
            ax.bar(range(len(values)), values or [0], color=colour or ["grey"])
            ax.set_xticks(range(max(1, len(labels))), labels or ["(none)"], fontsize=7)
            ax.set_title(f"{title}, per {what}", fontsize=9)
            if key == "clicks_per_mask_mean":
                for x, d in enumerate(data):
                    if d.get(key) is None:
                        ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7)
    fig.suptitle("segany data engine: statistics per stage and model version")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
