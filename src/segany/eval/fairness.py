"""Fairness across groups (paper section 6, table 2): mIoU at 1 and 3 points per group, with 95% CIs.

The paper measures SAM's point-to-mask quality separately for groups of people (perceived
gender presentation, age, skin tone) with random first clicks, and reports 95% confidence
intervals. Here any metadata column can define the groups: per-object fields from the loaders
(``dataset``, ``category``, ``supercategory``, ``size``, SA-1B annotation/image fields) or
image-level columns from a CSV (``--metadata``, one row per image with an ``image`` column).
Confidence intervals are percentile bootstrap intervals over objects (fixed seed).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..predictor import SamPredictor
from . import report, runner
from .datasets import EvalImage
from .points import ClickExperiment, ObjectTrace, traces_from_record

FAIRNESS_CLICKS = (1, 3)


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its percentile bootstrap confidence interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to bootstrap")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def read_metadata(path: str | Path) -> dict[str, dict[str, str]]:
    """Image-level metadata CSV -> {image id: {column: value}} (needs an ``image`` column)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ValueError(f"cannot read metadata CSV {path}: {exc}") from exc
    if not rows or "image" not in rows[0]:
        raise ValueError(f"metadata CSV {path} needs a header with an 'image' column")
    return {str(r["image"]): {k: v for k, v in r.items() if k != "image"} for r in rows}


def group_table(
    traces: Sequence[ObjectTrace], column: str, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per value of ``column``: object count and mIoU (with 95% CI) at 1 and 3 clicks (top track)."""
    groups: dict[str, list[ObjectTrace]] = {}
    for tr in traces:
        if column in tr.meta and tr.meta[column] not in (None, ""):
            groups.setdefault(str(tr.meta[column]), []).append(tr)
    if not groups:
        raise ValueError(f"no object has a value for metadata column {column!r}")
    out = {}
    for value in sorted(groups):
        trs = groups[value]
        row: dict[str, Any] = {"objects": len(trs)}
        for n in FAIRNESS_CLICKS:
            mean, lo, hi = bootstrap_ci([t.iou_at("top", n) for t in trs], n_boot, seed=seed)
            row[f"mIoU@{n}"] = {"mean": mean, "ci95": [lo, hi]}
        out[value] = row
    return out


def _plot(groups: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(groups)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.5), squeeze=False)
    for ax, (column, table) in zip(axes[0], groups.items()):
        names = list(table)
        y = np.arange(len(names))
        for k, (clicks_n, marker) in enumerate(zip(FAIRNESS_CLICKS, ("o", "s"))):
            means = np.array([100 * table[v][f"mIoU@{clicks_n}"]["mean"] for v in names])
            ci = np.array([[100 * c for c in table[v][f"mIoU@{clicks_n}"]["ci95"]] for v in names])
            ax.errorbar(means, y + 0.15 * (k - 0.5), xerr=[means - ci[:, 0], ci[:, 1] - means], fmt=marker,
                        capsize=3, label=f"{clicks_n} point{'s' if clicks_n > 1 else ''}")
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=8)
        ax.set_xlabel("mIoU (%) with 95% CI")
        ax.set_title(column)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    report.save_figure(fig, path)


class FairnessExperiment(ClickExperiment):
    """``segany eval fairness``: 3 clicks per object (resumable, as ``eval points``), then mIoU per group."""

    name = "fairness"
    title = "Fairness across groups (paper section 6, table 2)"

    def __init__(
        self, predictor: SamPredictor, group_by: Sequence[str] = ("supercategory", "size"),
        metadata_csv: str | Path | None = None, first: str = "random", seed: int = 0, n_boot: int = 1000,
    ) -> None:
        super().__init__(predictor, first, max(FAIRNESS_CLICKS), seed, keep_examples=0)
        self.group_by = list(group_by)
        self.metadata_csv = metadata_csv
        self.metadata = read_metadata(metadata_csv) if metadata_csv else {}
        self.n_boot = n_boot

    def summarise_dataset(self, dataset: str, finished: list[tuple[Any, dict[str, Any]]]) -> list[ObjectTrace]:
        return [t for _, rec in finished for t in traces_from_record(rec)]

    def summarise(self, datasets: dict[str, Any]) -> runner.Summary:
        traces = [t for trs in datasets.values() for t in trs]
        for tr in traces:
            tr.meta.update(self.metadata.get(str(tr.meta.get("image")), {}))
        if not traces:
            raise ValueError("no objects to evaluate")
        groups = {c: group_table(traces, c, self.n_boot, self.seed) for c in self.group_by}
        md = (f"{len(traces)} objects from {', '.join(datasets)}; {self.first} first click; mIoU (%) with 95% "
              f"percentile bootstrap intervals ({self.n_boot} resamples).\n\n")
        for column, table in groups.items():
            md += f"## {column}\n\n"
            rows = []
            for value, r in table.items():
                cells: list[Any] = [value, r["objects"]]
                for n in FAIRNESS_CLICKS:
                    m = r[f"mIoU@{n}"]
                    cells.append(f"{100 * m['mean']:.1f} ({100 * m['ci95'][0]:.1f}-{100 * m['ci95'][1]:.1f})")
                rows.append(cells)
            md += report.markdown_table([column, "objects", "mIoU@1 (95% CI)", "mIoU@3 (95% CI)"], rows) + "\n"
        md += "![groups](groups.png)\n"
        _plot(groups, self.ctx.out_dir / "groups.png")
        settings = {"datasets": list(datasets), "first_click": self.first, "seed": self.seed, "bootstrap": self.n_boot,
                    "group_by": self.group_by, "metadata": str(self.metadata_csv) if self.metadata_csv else None}
        return runner.Summary({"settings": settings, "objects": len(traces), "groups": groups}, md)


def run(
    predictor: SamPredictor,
    datasets: dict[str, Sequence[EvalImage]],
    out_dir: Path,
    model_info: dict[str, Any],
    command: str,
    group_by: Sequence[str] = ("supercategory", "size"),
    metadata_csv: str | Path | None = None,
    first: str = "random",
    seed: int = 0,
    n_boot: int = 1000,
    show_progress: bool = True,
    resume_run: bool = True,
    partial: bool = False,
) -> dict[str, Any]:
    """Simulate 3 clicks per object, group by each column and write the report (resumable, as ``eval points``;
    ``partial``: report the finished images only)."""
    experiment = FairnessExperiment(predictor, group_by, metadata_csv, first, seed, n_boot)
    options = runner.RunOptions(out_dir, model_info, command, show_progress, resume_run, partial)
    return runner.run(experiment, datasets, options)
