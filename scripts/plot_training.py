"""Plot a training run's curve: train loss, train IoU and the held-out validation IoUs.

    python scripts/plot_training.py runs/segany_cnn --out docs/training_curve.png

Reads OUT_DIR/metrics.jsonl (one line a step) and OUT_DIR/val.jsonl (one line a validation)
as the trainer writes them. The x axis is cumulative training compute (wall seconds of
the steps, data loading and validation included, summed over every resumed piece), since the run is trained in pieces of varying
length on a shared CPU. Train curves are smoothed with a running mean.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from segany.atomic_files import atomic_path


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _smooth(values: list[float], window: int) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if len(x) < window:
        return x
    kernel = np.ones(window) / window
    head = np.cumsum(x[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(x, kernel, mode="valid")])


def _step_seconds(rows: list[dict]) -> list[float]:
    """Wall seconds of each step (data loading included) from the log's time stamps; a gap
    longer than a few steps is a stop between pieces, where the step's own ``sec`` is used."""
    out = [rows[0].get("sec", 0.0)]
    for prev, row in zip(rows, rows[1:]):
        gap = row["time"] - prev["time"]
        out.append(gap if 0 < gap < 10 * max(row.get("sec", 1.0), 1.0) else row.get("sec", 0.0))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="training output folder (metrics.jsonl, val.jsonl)")
    ap.add_argument("--out", type=Path, default=None, help="PNG to write (default RUN/curve.png)")
    ap.add_argument("--window", type=int, default=100, help="running-mean window in steps")
    ap.add_argument("--start-hours", type=float, default=0.0,
                    help="compute hours of earlier pieces whose logs are gone (a run restarted with --init-from)")
    ap.add_argument("--start-step", type=int, default=0, help="steps of those earlier pieces (added to the step count)")
    ap.add_argument("--compute", default="CPU-core hours",
                    help="what the step times measure, for the x axis (a GPU run: 'H200 hours')")
    args = ap.parse_args(argv)
    rows = _read(args.run / "metrics.jsonl")
    if not rows:
        print(f"no metrics in {args.run}", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = args.start_hours + np.cumsum(_step_seconds(rows)) / 3600.0
    step_hours = dict(zip((r["step"] for r in rows), hours))
    val = [v for v in _read(args.run / "val.jsonl") if v["step"] in step_hours]
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax_loss.plot(hours, _smooth([r["loss"] for r in rows], args.window), color="tab:red")
    ax_loss.set_xlabel(f"training compute ({args.compute})")
    ax_loss.set_ylabel(f"train loss (running mean of {args.window} steps)")
    ax_loss.grid(alpha=0.3)
    ax_iou.plot(hours, _smooth([r["iou_first_selected"] for r in rows], args.window), label="train: first prompt", alpha=0.8)
    ax_iou.plot(hours, _smooth([r["iou_last"] for r in rows], args.window), label="train: trained pass", alpha=0.8)
    if val:
        vh = [step_hours[v["step"]] for v in val]
        for key, label in (("val_point", "held-out: 1 point"), ("val_box", "held-out: box"), ("val_3clicks", "held-out: 3 clicks")):
            ax_iou.plot(vh, [v[key] for v in val], marker="o", label=label)
    ax_iou.set_xlabel(f"training compute ({args.compute})")
    ax_iou.set_ylabel("IoU")
    ax_iou.set_ylim(0, 1)
    ax_iou.grid(alpha=0.3)
    ax_iou.legend(loc="lower right", fontsize=8)
    total = args.start_step + rows[-1]["step"]
    since = f" (this log from step {args.start_step}, {args.start_hours:.2f} h)" if args.start_step or args.start_hours else ""
    fig.suptitle(f"{args.run.name}: {total} steps, {hours[-1]:.2f} h{since}")
    if args.start_hours:
        for ax in (ax_loss, ax_iou):
            ax.axvline(args.start_hours, color="grey", lw=0.8, ls="--")
    fig.tight_layout()
    out = args.out or args.run / "curve.png"
    with atomic_path(out) as tmp:  # creates the folder; a failed save leaves the old curve
        fig.savefig(tmp, dpi=110)
    print(f"wrote {out} ({total} steps, {hours[-1]:.2f} compute hours, {len(val)} validations)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
