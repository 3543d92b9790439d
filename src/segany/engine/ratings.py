"""The mask-quality rating study (paper appendix E and G): the pool, its order, ground-truth
import and the statistics.

Why a study at all: IoU against a reference needs a reference, and the paper's point was
that its automatic masks are about as good as human ones. So people rate masks 1-10 without
knowing where each came from, and the mean rating per source (manual, prefilled, automatic,
model version, SA-1B ground truth) is compared with a bootstrap confidence interval.

- **Pool.** Every live (not deleted) mask of the store, with its ``source`` and
  ``model_version``, plus ground-truth masks imported from an SA-1B folder
  (:func:`import_ground_truth`). Each gets a rating item with a random opaque id; the page
  only ever sees that id, the image and the mask. Ground truth lives in the store's
  ``rating_items`` table, never in ``masks``, so ``segany engine export`` never writes it.
- **Order.** Each annotator sees the pool in their own random order: items sorted by
  ``sha256(annotator, item id)``, minus those they rated. A reload continues where they were,
  nothing is shown twice to one annotator (a rating is final, see
  :meth:`Store.save_rating`), and masks accepted later slot into the order at random.
- **Statistics.** :func:`rating_summary`: per source and per (source, model version), the
  mean over masks of each mask's mean rating, with a seeded percentile bootstrap over masks
  (a mask rated by three people counts once, so the interval reflects how many masks were
  rated). The bootstrap draws how often each distinct value is picked from one multinomial
  per resample, which is the same distribution as drawing masks with replacement but costs
  ``resamples x distinct values`` instead of ``resamples x masks``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..atomic_files import write_all_or_nothing
from ..data import sa1b
from ..image_io import ImageError
from ..masks import validate_rle
from .image_files import DEFAULT_MAX_PIXELS, image_header_size
from .security import is_present_file
from .store import GROUND_TRUTH, RATING_MAX, RATING_MIN, SOURCES, GroundTruthMask, RatingItem, Store, StoreError

log = logging.getLogger(__name__)

SOURCE_ORDER = (*SOURCES, GROUND_TRUTH)
DEFAULT_RESAMPLES = 10_000
REPORT_FILES = ("ratings.md", "ratings.json", "ratings_histogram.png")


class EmptyPool(ValueError):
    """Nothing to rate: no live store mask and no imported ground truth (on the served images)."""


# ---------------------------------------------------------------------- the pool and its order


def servable_images(store: Store, roots: list[Path]) -> set[int]:
    """Ids of the images whose file lies under ``roots`` and is there.

    The rating page only offers masks whose image it can show; the stored paths are resolved
    already, so this is a prefix test and one ``stat`` per image, not a resolve.
    """
    return {
        row.id
        for row in store.images()
        if any(Path(row.path).is_relative_to(root) for root in roots) and is_present_file(Path(row.path))
    }


def order_key(annotator: str, item_id: str) -> str:
    """Where ``item_id`` stands in ``annotator``'s order: a hash, so the order is random,
    the same on every request and different for every annotator."""
    return hashlib.sha256(f"{annotator}\n{item_id}".encode()).hexdigest()


def _pool(store: Store, annotator: str | None, image_ids: set[int] | None) -> list:
    """The pool on ``image_ids`` (all images when None), store masks accepted since the last
    call included; :class:`EmptyPool` when it is empty."""
    store.sync_rating_items()
    pool = [e for e in store.rating_pool(annotator) if image_ids is None or e.image_id in image_ids]
    if not pool:
        raise EmptyPool(
            "nothing to rate: the store has no accepted masks and no imported ground truth on the served images "
            "(accept masks in `segany serve`, or `segany engine import-gt SA1B_DIR --db DB`)"
        )
    return pool


def require_pool(store: Store, roots: list[Path]) -> int:
    """How many masks a rating server over ``roots`` offers; :class:`EmptyPool` (a
    ``ValueError``, so ``segany serve --rate`` exits with status 2) when none."""
    return len(_pool(store, None, servable_images(store, roots)))


@dataclass(frozen=True)
class NextItem:
    """What the rating page shows next: ``item`` (None when the annotator is done) and progress."""

    item: RatingItem | None
    rated: int  # items of the pool this annotator has rated
    remaining: int  # items still to rate, the one shown included


def next_item(store: Store, annotator: str, image_ids: set[int] | None = None) -> NextItem:
    """The annotator's next unrated item (in their order) among the pool on ``image_ids``.

    New store masks join the pool first. An item whose row cannot be read is logged and
    passed over, so one bad row never blocks an annotator. Raises :class:`EmptyPool` when
    there is nothing to rate at all.
    """
    pool = _pool(store, annotator, image_ids)
    rated = sum(e.rated for e in pool)
    todo = sorted((e.item_id for e in pool if not e.rated), key=lambda i: order_key(annotator, i))
    for k, item_id in enumerate(todo):
        try:
            return NextItem(store.rating_item(item_id), rated, len(todo) - k)
        except StoreError as exc:
            log.warning("skipping rating item %s: %s", item_id, exc)
    return NextItem(None, rated, 0)


# ---------------------------------------------------------------------- ground truth from SA-1B


@dataclass(frozen=True)
class GroundTruthSet:
    """The masks read from an SA-1B folder, ready for :func:`import_ground_truth`."""

    folder: Path
    masks: list[GroundTruthMask]
    records: int  # SA-1B records read
    empty_records: int  # records without annotations


@dataclass(frozen=True)
class ImportSummary:
    records: int
    masks: int  # ground-truth masks offered to the pool
    added: int  # of which new (the rest were imported before)
    empty_records: int


def read_ground_truth(
    folder: str | Path, *, max_per_image: int | None = None, seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS
) -> GroundTruthSet:
    """The masks of an SA-1B folder, read and checked before anything is opened for writing.

    Every record's image must exist and its header must have the size the JSON states (a
    mask is only meaningful over its own image); ``max_per_image`` samples that many masks of
    each image (seeded per record, so a rerun picks the same ones). Every RLE must decode to
    exactly its image's size. Raises ``ValueError``
    (SA1BError included) naming the file at fault, or when the folder holds no mask at all.
    """
    if max_per_image is not None and max_per_image < 1:
        raise ValueError(f"--max-per-image must be at least 1, got {max_per_image}")
    paths = sa1b.list_records(folder)
    masks: list[GroundTruthMask] = []
    empty = 0
    for index, json_path in enumerate(
        tqdm(paths, desc="reading SA-1B records", unit="record", disable=len(paths) < 20)
    ):
        rec = sa1b.read_record(json_path)
        name = json_path.name
        if not is_present_file(rec.image_path):
            raise ValueError(f"{name}: its image {rec.image_path.name} is missing")
        try:
            w, h = image_header_size(rec.image_path, max_pixels)
        except ImageError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if (w, h) != (rec.width, rec.height):
            raise ValueError(f"{name}: the JSON says {rec.width}x{rec.height} but {rec.image_path.name} is {w}x{h}")
        anns = rec.annotations
        if not anns:
            empty += 1
            continue
        chosen: Iterable[int] = range(len(anns))
        if max_per_image is not None and len(anns) > max_per_image:
            rng = np.random.default_rng([seed, index])
            chosen = sorted(rng.choice(len(anns), size=max_per_image, replace=False).tolist())
        for k in chosen:
            ann = anns[k]
            label = f"{name} annotation {k}"
            if not isinstance(ann, dict) or "segmentation" not in ann:
                raise ValueError(f"{label} has no segmentation")
            # checked here too (the store checks again) so a bad mask fails before the store is opened
            rle = validate_rle(ann["segmentation"], (h, w), field=f"{label} segmentation")
            key = f"{rec.image_path.resolve()}#{ann.get('id', k)}"
            masks.append(GroundTruthMask(rec.image_path, w, h, key, rle, label))
    if not masks:
        raise ValueError(f"no ground-truth masks in {folder}: its {len(paths)} SA-1B records have no annotations")
    return GroundTruthSet(Path(folder), masks, len(paths), empty)


def import_ground_truth(store: Store, gt: GroundTruthSet) -> ImportSummary:
    """Add the masks of ``gt`` to the rating pool as ``ground_truth``, all or nothing.

    Idempotent: a mask imported before (same image file, same annotation id) is not added twice.
    """
    added = store.add_ground_truth(gt.masks)
    return ImportSummary(gt.records, len(gt.masks), added, gt.empty_records)


# ---------------------------------------------------------------------- statistics


def bootstrap_mean_ci(
    values: Iterable[float], *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its percentile-bootstrap interval at ``level``.

    Resampling n values with replacement only changes how often each distinct value is
    drawn, so each resample is one multinomial draw over the distinct values (vectorised
    over all resamples at once; exact, not an approximation).
    """
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("the bootstrap needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    distinct, counts = np.unique(x, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(x.size, counts / x.size, size=resamples)  # (resamples, distinct values)
    means = draws @ distinct / x.size
    low, high = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(x.mean()), float(low), float(high)


def _group_stats(rows: list, resamples: int, seed: int, level: float) -> dict[str, Any]:
    per_mask: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        per_mask[r.item_id].append(r.rating)
    mean, low, high = bootstrap_mean_ci(
        [float(np.mean(v)) for v in per_mask.values()], resamples=resamples, seed=seed, level=level
    )
    histogram = np.bincount([r.rating for r in rows], minlength=RATING_MAX + 1)[RATING_MIN:]
    return {
        "masks": len(per_mask),
        "ratings": len(rows),
        "raters": len({r.annotator for r in rows}),
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "histogram": [int(c) for c in histogram],
    }


def _source_rank(source: str) -> tuple[int, str]:
    return (SOURCE_ORDER.index(source) if source in SOURCE_ORDER else len(SOURCE_ORDER), source)


def rating_summary(
    store: Store, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Mean rating with its bootstrap interval, counts and the rating histogram, per source
    and per (source, model version).

    Ratings of masks deleted since they were rated are left out (they are not in the
    dataset any more) and counted in ``left_out_deleted``.
    """
    rows = store.ratings()
    live = [r for r in rows if r.live]
    if not live:
        raise ValueError(
            "no ratings in the store yet (rate masks in `segany serve IMAGES --db DB --rate`)"
            + (f"; {len(rows)} ratings are of masks deleted since" if rows else "")
        )
    by_source: dict[str, list] = defaultdict(list)
    by_version: dict[tuple[str, str], list] = defaultdict(list)
    for r in live:
        by_source[r.source].append(r)
        by_version[(r.source, r.model_version)].append(r)
    return {
        "resamples": resamples,
        "seed": seed,
        "level": level,
        "ratings": len(live),
        "raters": len({r.annotator for r in live}),
        "left_out_deleted": len(rows) - len(live),
        "by_source": [
            {"source": s, **_group_stats(by_source[s], resamples, seed, level)}
            for s in sorted(by_source, key=_source_rank)
        ],
        "by_model_version": [
            {"source": s, "model_version": v, **_group_stats(by_version[(s, v)], resamples, seed, level)}
            for s, v in sorted(by_version, key=lambda sv: (_source_rank(sv[0]), sv[1]))
        ],
    }


def _table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    pct = f"{summary['level']:.0%}"
    header = ["source", "model version", "masks", "ratings", "raters", "mean", f"{pct} CI"]
    rows = [
        [
            g["source"],
            g.get("model_version", "(all)") or "-",
            str(g["masks"]),
            str(g["ratings"]),
            str(g["raters"]),
            f"{g['mean']:.2f}",
            f"[{g['ci_low']:.2f}, {g['ci_high']:.2f}]",
        ]
        for g in [*summary["by_source"], *summary["by_model_version"]]
    ]
    return header, rows


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table (sources first, then each model version)."""
    header, rows = _table_rows(summary)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells: list[str]) -> str:  # names left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header), "-" * len(line(header)), *(line(r) for r in rows)]
    out.append(_footnote(summary))
    return "\n".join(out)


def _footnote(summary: dict[str, Any]) -> str:
    text = (
        f"{summary['ratings']} ratings by {summary['raters']} raters; mean over masks of each mask's mean rating, "
        f"percentile bootstrap over masks ({summary['resamples']} resamples, seed {summary['seed']})"
    )
    if summary["left_out_deleted"]:
        text += f"; {summary['left_out_deleted']} ratings of masks deleted since are left out"
    return text


def format_markdown(summary: dict[str, Any]) -> str:
    header, rows = _table_rows(summary)
    lines = ["# Mask-quality ratings", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", _footnote(summary) + ".", "", "![rating distribution per source](ratings_histogram.png)", ""]
    return "\n".join(lines)


def plot_histogram(summary: dict[str, Any], path: str | Path) -> None:
    """The rating distribution per source as grouped bars (percent of that source's ratings)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = summary["by_source"]
    values = np.arange(RATING_MIN, RATING_MAX + 1)
    width = 0.8 / len(groups)
    colours = {"manual": "tab:blue", "prefilled": "tab:orange", "automatic": "tab:green", GROUND_TRUTH: "tab:grey"}
    fig, ax = plt.subplots(figsize=(8, 4))
    try:
        for k, g in enumerate(groups):
            share = 100.0 * np.asarray(g["histogram"], float) / max(1, g["ratings"])
            label = f"{g['source']}: {g['mean']:.2f} [{g['ci_low']:.2f}, {g['ci_high']:.2f}], {g['masks']} masks"
            ax.bar(
                values + (k - (len(groups) - 1) / 2) * width, share, width, label=label, color=colours.get(g["source"])
            )
        ax.set_xticks(values)
        ax.set_xlabel("mask quality rating (1 = poor, 10 = perfect)")
        ax.set_ylabel("percent of ratings")
        ax.set_title("Mask-quality ratings per source (mean, 95% bootstrap CI)")
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def write_report(summary: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """``ratings.md``, ``ratings.json`` and ``ratings_histogram.png`` in ``out_dir``, all or none."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = (out / name for name in REPORT_FILES)
    write_all_or_nothing(
        [
            (md, lambda tmp: tmp.write_text(format_markdown(summary), encoding="utf-8")),
            (js, lambda tmp: tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")),
            (png, lambda tmp: plot_histogram(summary, tmp)),
        ]
    )
    return [md, js, png]
