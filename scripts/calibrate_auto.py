"""Calibrate the automatic generator's filters for a model, on held-out TRAINING images only.

    .venv/bin/python scripts/calibrate_auto.py runs/sa1b_train/*

Why: the official filters (predicted IoU > 0.88, stability >= 0.95 at logit offset 1.0) are
set for SAM ViT-H. A small model trained here predicts lower IoUs and softer logits (the
embedded default tops out near 0.34 predicted IoU, its logits rarely pass +1), so at the
official settings it keeps no mask at all. Those settings stay the defaults of
``SamAutomaticMaskGenerator`` (drop-in parity); this script measures the settings that suit
a given model, and ``segany auto`` uses them for the embedded default model (preset
``segany-default``, ``src/segany/automatic/presets.py``).

Data: the images the training loop holds out (``RecordIndex(..., holdout_every, "val")``,
every ``--holdout-every``-th record of each converted train folder, never trained on), taken
round-robin over the folders given, at most ``--limit`` of them. Never an evaluation split:
thresholds chosen on a benchmark would make its numbers optimistic.

Method: per image the public generator runs once per candidate ``--offsets`` value with no
filtering (pred_iou_thresh 0, stability_score_thresh 0, box NMS off), which yields every
candidate mask with its predicted IoU and its stability score at that offset (the masks
themselves do not depend on the offset). Each candidate's IoU with every ground-truth mask
is computed once (``segany.masks.mask_iou``). Every setting (offset, stability threshold,
IoU threshold) is then simulated exactly as the generator applies it: ``iou > t`` (t > 0),
``stability >= s`` (s > 0), greedy box NMS at ``--box-nms-thresh`` ranked by predicted IoU.
Greedy NMS visits masks in predicted-IoU order, so for one (offset, s) the result for every
IoU threshold is a prefix of one NMS pass: the whole IoU grid costs one pass.

Criterion: F1 of precision and recall at mask IoU >= ``--match-iou`` (0.5), pooled over the
images -- precision: kept masks that match some ground-truth mask; recall: ground-truth masks
matched by some kept mask. Why F1: it is zero both for keeping nothing (the failure that
prompted this) and for keeping every duplicate and fragment, and needs no arbitrary recall
floor. The training annotations are incomplete (COCO labels only some objects), so precision
is an underestimate; that biases the choice towards stricter filters, the safe side for a
first look at ``segany auto``. Ties go to the stricter setting (fewer masks).

Output: a table of the best settings (and the official ones), a PNG of F1 against the IoU
threshold, and a JSON (atomic write) holding the chosen ``pred_iou_thresh``,
``stability_score_offset`` and ``stability_score_thresh`` plus how they were measured
(criterion, scores, images, the weights file's SHA-256). Without ``--checkpoint`` the JSON is
the embedded default model's preset file, ``src/segany/automatic/segany_default_thresholds.json``,
which ``presets.py`` reads: rerunning this script after retraining updates the preset.
Runs on one thread, niced (``--threads``, ``--nice``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segany import SamAutomaticMaskGenerator
from segany.atomic_files import atomic_path, write_json_atomic
from segany.automatic.presets import DEFAULT_MODEL_THRESHOLDS_FILE
from segany.data.sa1b import RecordIndex, SA1BError, SA1BRecord
from segany.default_model import default_weights_path, load_default_model
from segany.file_hash import file_sha256
from segany.image_io import load_image
from segany.masks import box_iou, box_xywh_to_xyxy, mask_iou, rle_to_mask
from segany.modeling import Sam
from segany.modeling.registry import build_model

OFFICIAL = {"pred_iou_thresh": 0.88, "stability_score_offset": 1.0, "stability_score_thresh": 0.95}
IOU_GRID = [round(0.01 * i, 2) for i in range(96)]  # 0.00 ... 0.95
STABILITY_GRID = [round(0.05 * i, 2) for i in range(20)]  # 0.00 ... 0.95
MASK_CHUNK = 64  # candidate masks decoded at once for the IoU with ground truth


@dataclass
class Candidates:
    """Every unfiltered candidate mask of one image, as the setting simulation needs them."""

    iou_pred: np.ndarray  # C float32, predicted IoU
    stability: dict[float, np.ndarray]  # offset -> C float32 stability score
    suppresses: np.ndarray  # CxC bool: box IoU > the NMS threshold
    match: np.ndarray  # CxG bool: mask IoU with ground-truth mask g >= match IoU
    n_gt: int


@dataclass(frozen=True)
class Score:
    """Counts pooled over images for one setting, and the rates made from them."""

    kept: int
    true_pos: int
    recalled: int
    n_gt: int
    images: int

    @property
    def precision(self) -> float:
        return self.true_pos / self.kept if self.kept else 0.0

    @property
    def recall(self) -> float:
        return self.recalled / self.n_gt if self.n_gt else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    @property
    def per_image(self) -> float:
        return self.kept / self.images if self.images else 0.0


def heldout_records(folders: list[str], holdout_every: int, limit: int) -> list[SA1BRecord]:
    """The training loop's held-out records of each folder, interleaved folder by folder
    (so ``limit`` samples every source, not just the first), at most ``limit``."""
    if holdout_every < 1:
        raise ValueError(f"--holdout-every must be >= 1, got {holdout_every}")
    per_folder = [RecordIndex([f], holdout_every=holdout_every, split="val") for f in folders]
    out: list[SA1BRecord] = []
    rank = 0
    while len(out) < limit and any(rank < len(ix) for ix in per_folder):
        for ix in per_folder:
            if rank < len(ix) and len(out) < limit:
                out.append(ix.record(rank))
        rank += 1
    if not out:
        raise ValueError(f"no held-out images in {', '.join(folders)} (every {holdout_every}th record of each folder)")
    return out


def image_candidates(
    model: Sam,
    image: np.ndarray,
    gt: np.ndarray,
    *,
    points_per_side: int,
    offsets: list[float],
    box_nms_thresh: float,
    match_iou: float,
    points_per_batch: int = 64,
) -> Candidates:
    """Run the generator unfiltered once per offset on ``image`` (HxWx3 uint8) and measure
    every candidate against ``gt`` (GxHxW bool)."""
    iou_pred: np.ndarray | None = None
    first: list[dict] = []
    stability: dict[float, np.ndarray] = {}
    for offset in offsets:
        gen = SamAutomaticMaskGenerator(
            model,
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
            stability_score_offset=offset,
            box_nms_thresh=1.0,  # IoU > 1 never happens: NMS keeps everything
            output_mode="uncompressed_rle",
        )
        records = gen.generate(image)
        ious = np.array([r["predicted_iou"] for r in records], dtype=np.float32)
        if iou_pred is None:
            iou_pred, first = ious, records
        elif len(records) != len(first) or not np.array_equal(ious, iou_pred):
            # the candidates do not depend on the offset; a mismatch means they were reordered
            raise RuntimeError("the generator's unfiltered candidates differ between stability offsets")
        stability[offset] = np.array([r["stability_score"] for r in records], dtype=np.float32)
    assert iou_pred is not None
    boxes = torch.tensor([box_xywh_to_xyxy(r["bbox"]) for r in first], dtype=torch.float32).reshape(-1, 4)
    suppresses = (box_iou(boxes, boxes) > box_nms_thresh).numpy()
    match = np.zeros((len(first), len(gt)), dtype=bool)
    if len(gt):
        gt_t = torch.from_numpy(gt)
        for s in range(0, len(first), MASK_CHUNK):
            chunk = np.stack([rle_to_mask(r["segmentation"]) for r in first[s : s + MASK_CHUNK]])
            match[s : s + MASK_CHUNK] = (mask_iou(chunk, gt_t) >= match_iou).numpy()
    return Candidates(iou_pred, stability, suppresses, match, len(gt))


def greedy_nms(order: np.ndarray, suppresses: np.ndarray) -> np.ndarray:
    """Kept flags, position by position of ``order`` (best first): the generator's greedy
    NMS (a mask is dropped when its box IoU with a kept one exceeds the threshold)."""
    kept = np.zeros(len(order), dtype=bool)
    gone = np.zeros(suppresses.shape[0], dtype=bool)
    for pos, i in enumerate(order):
        if gone[i]:
            continue
        kept[pos] = True
        gone |= suppresses[i]
    return kept


def sweep(cands: Candidates, offset: float, stab_thresh: float, iou_grid: list[float]) -> np.ndarray:
    """(kept, true positives, GT recalled) of one image for every IoU threshold of
    ``iou_grid`` at (offset, stab_thresh): T x 3 int64."""
    iou = cands.iou_pred
    idx = np.arange(len(iou))
    if stab_thresh > 0.0:
        idx = idx[cands.stability[offset] >= np.float32(stab_thresh)]
    order = idx[np.argsort(-iou[idx], kind="stable")]  # torch's stable descending sort
    kept = greedy_nms(order, cands.suppresses)
    sorted_iou = iou[order]
    match = cands.match[order] & kept[:, None]
    kept_cum = np.concatenate([[0], np.cumsum(kept)])
    tp_cum = np.concatenate([[0], np.cumsum(match.any(axis=1))])
    # position of the first kept mask matching each GT (len(order) when none does)
    if len(order):
        first_hit = np.where(match.any(axis=0), match.argmax(axis=0), len(order))
    else:
        first_hit = np.zeros(match.shape[1], dtype=np.int64)  # never < n = 0
    out = np.zeros((len(iou_grid), 3), dtype=np.int64)
    for k, t in enumerate(iou_grid):
        # the kept masks at threshold t are a prefix of the IoU order: those with iou > t
        n = len(order) if t <= 0.0 else int(np.count_nonzero(sorted_iou > np.float32(t)))
        out[k] = (kept_cum[n], tp_cum[n], int(np.count_nonzero(first_hit < n)))
    return out


def score_grid(
    all_cands: list[Candidates], offsets: list[float], stab_grid: list[float], iou_grid: list[float]
) -> dict[tuple[float, float, float], Score]:
    """Pooled :class:`Score` of every (offset, stability threshold, IoU threshold)."""
    n_gt = sum(c.n_gt for c in all_cands)
    scores = {}
    for offset in offsets:
        for s in stab_grid:
            total = sum(sweep(c, offset, s, iou_grid) for c in all_cands)
            for k, t in enumerate(iou_grid):
                kept, tp, rec = (int(v) for v in total[k])
                scores[(offset, s, t)] = Score(kept, tp, rec, n_gt, len(all_cands))
    return scores


def choose(scores: dict[tuple[float, float, float], Score]) -> tuple[float, float, float]:
    """The setting of highest F1. Ties (the same counts) go to fewer masks, then to the looser
    thresholds -- a filter that changes nothing on the calibration images is left off rather
    than set to the edge of where it starts to bite -- then to the larger offset (official: 1)."""
    return max(scores, key=lambda k: (round(scores[k].f1, 12), -scores[k].kept, -k[1], -k[2], k[0]))


def table(scores: dict[tuple[float, float, float], Score], top: int, official: Score | None) -> str:
    head = f"{'offset':>6} {'stab>=':>6} {'iou>':>5} {'masks/img':>9} {'precision':>9} {'recall':>6} {'F1':>6}"
    # one row per distinct outcome (settings with the same counts keep the same masks),
    # named by the setting choose() would take among them
    best: dict[tuple[int, int, int], tuple[float, float, float]] = {}
    for key in scores:
        sc = scores[key]
        outcome = (sc.kept, sc.true_pos, sc.recalled)
        if outcome not in best or choose({key: sc, best[outcome]: sc}) == key:
            best[outcome] = key
    rows = sorted(((k, scores[k]) for k in best.values()), key=lambda kv: -kv[1].f1)[:top]
    lines = [head]
    for (o, s, t), sc in rows:
        lines.append(
            f"{o:6.2f} {s:6.2f} {t:5.2f} {sc.per_image:9.1f} {sc.precision:9.3f} {sc.recall:6.3f} {sc.f1:6.3f}"
        )
    if official is not None:
        o, s, t = OFFICIAL["stability_score_offset"], OFFICIAL["stability_score_thresh"], OFFICIAL["pred_iou_thresh"]
        lines.append(
            f"{o:6.2f} {s:6.2f} {t:5.2f} {official.per_image:9.1f} {official.precision:9.3f} "
            f"{official.recall:6.3f} {official.f1:6.3f}  (official)"
        )
    return "\n".join(lines)


def plot(scores: dict[tuple[float, float, float], Score], offsets: list[float], chosen: tuple, path: Path) -> None:
    """F1 and masks per image against the IoU threshold, per offset at its best stability threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for o in offsets:
        best_s = max((k for k in scores if k[0] == o), key=lambda k: scores[k].f1)[1]
        keys = sorted((k for k in scores if k[0] == o and k[1] == best_s), key=lambda k: k[2])
        ts = [k[2] for k in keys]
        ax1.plot(ts, [scores[k].f1 for k in keys], label=f"offset {o:g}, stability >= {best_s:g}")
        ax2.plot(ts, [scores[k].per_image for k in keys], label=f"offset {o:g}, stability >= {best_s:g}")
    ax1.axvline(chosen[2], color="k", ls=":", lw=1)
    ax1.set(xlabel="pred_iou_thresh", ylabel="F1 (mask IoU >= match)", title=f"chosen: {chosen}")
    ax2.set(xlabel="pred_iou_thresh", ylabel="masks kept per image", yscale="log")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values or not all(np.isfinite(values)) or min(values) < 0:
        raise ValueError(f"{flag} must be non-negative finite numbers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="converted TRAIN folders (segany data convert shared-train ...)")
    ap.add_argument("--holdout-every", type=int, default=25, help="the training config's data.holdout_every (25)")
    ap.add_argument("--limit", type=int, default=30, help="held-out images used, round-robin over folders (30)")
    ap.add_argument("--points-per-side", type=int, default=16, help="grid of the unfiltered runs (16)")
    ap.add_argument("--offsets", default="0.25,0.5,1.0", help="candidate stability_score_offset values")
    ap.add_argument("--box-nms-thresh", type=float, default=0.7, help="box NMS of the simulated settings (0.7)")
    ap.add_argument("--match-iou", type=float, default=0.5, help="mask IoU that counts as a match (0.5)")
    ap.add_argument("--checkpoint", default=None, help="model to calibrate (default: the embedded default model)")
    ap.add_argument("--out", default=None, help="JSON to write (default without --checkpoint: the preset file)")
    ap.add_argument("--plot", default="runs/calibrate_auto.png", help="PNG of F1 vs threshold ('' for none)")
    ap.add_argument(
        "--cache",
        default=None,
        help="pickle of the measured candidates: reused when images, model and settings match, so "
        "changing only the table or the grids costs nothing (default: none)",
    )
    ap.add_argument("--top", type=int, default=10, help="rows of the table")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nice", type=int, default=15, help="added niceness (0: none)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        offsets = parse_floats(args.offsets, "--offsets")
        if 0.0 in offsets:
            raise ValueError("--offsets must be > 0")
        if args.limit < 1 or args.points_per_side < 1 or args.top < 1 or args.threads < 1:
            raise ValueError("--limit, --points-per-side, --top and --threads must be >= 1")
        if not 0 < args.match_iou <= 1 or not 0 <= args.box_nms_thresh <= 1:
            raise ValueError("--match-iou must be in (0, 1] and --box-nms-thresh in [0, 1]")
        if args.checkpoint is None:
            weights = default_weights_path()
            if weights is None:
                raise ValueError("no trained default weights are shipped: nothing to calibrate (give --checkpoint)")
            out = Path(args.out) if args.out else DEFAULT_MODEL_THRESHOLDS_FILE
        else:
            weights = Path(args.checkpoint)
            if not weights.is_file():
                raise ValueError(f"--checkpoint {weights} is not a file")
            if not args.out:
                raise ValueError("--out is required with --checkpoint (the preset file is the default model's)")
            out = Path(args.out)
        records = heldout_records(args.folders, args.holdout_every, args.limit)
    except (ValueError, SA1BError) as exc:
        print(f"calibrate_auto: error: {exc}", file=sys.stderr)
        return 2
    if args.nice:
        os.nice(args.nice)
    torch.set_num_threads(args.threads)
    model = load_default_model(warn=False) if args.checkpoint is None else build_model("auto", args.checkpoint).eval()

    all_cands: list[Candidates] = []
    cache_key = {
        "images": [str(r.json_path) for r in records],
        "points_per_side": args.points_per_side,
        "offsets": offsets,
        "box_nms_thresh": args.box_nms_thresh,
        "match_iou": args.match_iou,
        "weights_file_sha256": file_sha256(weights),
    }
    from_cache = False
    if args.cache and Path(args.cache).is_file():
        with open(args.cache, "rb") as f:
            cached = pickle.load(f)
        if cached.get("key") == cache_key:
            all_cands = cached["candidates"]
            from_cache = True
            print(f"candidates of {len(all_cands)} images read from {args.cache}")
    for rec in tqdm([] if from_cache else records, desc="calibrate", unit="img", disable=args.no_progress):
        image = load_image(rec.image_path)
        gt = np.stack([rec.decode(i) for i in range(len(rec.annotations))]) if rec.annotations else None
        if gt is None:
            gt = np.zeros((0, image.shape[0], image.shape[1]), dtype=bool)
        all_cands.append(
            image_candidates(
                model,
                image,
                gt,
                points_per_side=args.points_per_side,
                offsets=offsets,
                box_nms_thresh=args.box_nms_thresh,
                match_iou=args.match_iou,
            )
        )
    if args.cache and not from_cache:
        with atomic_path(args.cache) as tmp, open(tmp, "wb") as f:
            pickle.dump({"key": cache_key, "candidates": all_cands}, f)
    scores = score_grid(all_cands, offsets, STABILITY_GRID, IOU_GRID)
    official = None
    if OFFICIAL["stability_score_offset"] in offsets:
        official = score_grid(
            all_cands,
            [OFFICIAL["stability_score_offset"]],
            [OFFICIAL["stability_score_thresh"]],
            [OFFICIAL["pred_iou_thresh"]],
        )[(1.0, 0.95, 0.88)]
    chosen = choose(scores)
    best = scores[chosen]
    n_cand = sum(len(c.iou_pred) for c in all_cands)
    print(
        f"{len(records)} held-out images, {best.n_gt} ground-truth masks, {n_cand} candidates "
        f"({args.points_per_side}x{args.points_per_side} grid); criterion F1 at mask IoU >= {args.match_iou:g}"
    )
    print(table(scores, args.top, official))
    offset, stab, iou_t = chosen
    print(
        f"chosen: pred_iou_thresh {iou_t:g}, stability_score_offset {offset:g}, stability_score_thresh {stab:g} "
        f"(F1 {best.f1:.3f}, precision {best.precision:.3f}, recall {best.recall:.3f}, {best.per_image:.1f} masks/img)"
    )

    def summary(sc: Score) -> dict:
        return {
            "f1": round(sc.f1, 4),
            "precision": round(sc.precision, 4),
            "recall": round(sc.recall, 4),
            "masks_per_image": round(sc.per_image, 2),
        }

    result = {
        "pred_iou_thresh": iou_t,
        "stability_score_offset": offset,
        "stability_score_thresh": stab,
        "calibration": {
            "criterion": f"F1 of kept masks matching a ground-truth mask at IoU >= {args.match_iou:g} (precision) "
            f"and ground-truth masks matched (recall), pooled, after box NMS {args.box_nms_thresh:g}",
            "chosen": summary(best),
            "official": None if official is None else summary(official),
            "images": len(records),
            "ground_truth_masks": best.n_gt,
            "folders": [str(f) for f in args.folders],
            "holdout_every": args.holdout_every,
            "points_per_side": args.points_per_side,
            "offsets": offsets,
            "weights_file": weights.name,
            "weights_file_sha256": cache_key["weights_file_sha256"],
            "command": "scripts/calibrate_auto.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result, indent=2)
    print(f"wrote {out}")
    if args.plot:
        plot(scores, offsets, chosen, Path(args.plot))
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
