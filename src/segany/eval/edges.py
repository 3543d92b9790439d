"""Zero-shot edge detection on BSDS500 (paper section 7.2, appendix D.2, table 3).

segany's edge map of an image, as the paper describes it:

1. prompt the model with a 16x16 grid of foreground points (3 masks each, 768 masks), with no
   predicted-IoU or stability filtering (the automatic generator's ``edges`` preset);
2. remove redundant masks with box NMS (0.7, ranked by predicted IoU);
3. Sobel-filter each remaining mask's *unthresholded* probability map (sigmoid of the logits
   at image resolution) and zero the response away from the mask's outer boundary;
4. take the pixel-wise maximum, normalise linearly to [0, 1] and thin with edge NMS.

The logits are kept, which the generator's records do not carry, so the decoding loop is
here, using the generator's preset, point grid and NMS. Canny and Sobel baselines are scored
by the same Python BSDS benchmark (:mod:`segany.eval.bsds`) on the same images.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..automatic.filters import nms
from ..automatic.grid import build_point_grid
from ..automatic.presets import preset
from ..masks import batched_mask_to_box
from ..modeling import Sam
from ..predictor import SamPredictor
from . import baselines, bsds, report, resume
from .edge_nms import edge_nms

PAPER_TABLE3 = {  # SAM paper, table 3 (BSDS500 test): for reference in reports only
    "SAM ViT-H (paper)": {"ODS": 0.768, "OIS": 0.786, "AP": 0.794, "R50": 0.928},
    "Canny (paper)": {"ODS": 0.600, "OIS": 0.640, "AP": 0.580, "R50": None},
    "Sobel (paper)": {"ODS": 0.539, "OIS": None, "AP": None, "R50": None},
}
BOUNDARY_BAND = 3  # px: width of the outer-boundary band in which a mask's Sobel response is kept


def mask_edge_response(prob: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sobel magnitude of one HxW probability map, zeroed away from the outer boundary of ``mask``."""
    gx = cv2.Sobel(prob, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(prob, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.sqrt(gx * gx + gy * gy)
    band = np.zeros(mask.shape, dtype=np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(band, contours, -1, 1, BOUNDARY_BAND)
    mag[band == 0] = 0.0
    return mag


def combine_edge_responses(responses: np.ndarray | Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixel-wise max, linear normalisation to [0, 1] and edge NMS (the paper's post-processing)."""
    edge = np.zeros(shape, dtype=np.float32)
    for r in responses:
        np.maximum(edge, r, out=edge)
    lo, hi = float(edge.min()), float(edge.max())
    if hi <= lo:
        return np.zeros(shape, dtype=np.float64)
    edge = (edge - lo) / (hi - lo)
    return edge_nms(edge)


@torch.no_grad()
def segany_edges(
    predictor: SamPredictor, image: np.ndarray, points_per_batch: int = 64, **preset_overrides: Any
) -> tuple[np.ndarray, int]:
    """Edge map in [0, 1] of an HxWx3 uint8 image, and the number of masks kept after NMS."""
    settings = preset("edges", **preset_overrides)
    model: Sam = predictor.model
    h, w = image.shape[:2]
    predictor.set_image(image)
    grid = build_point_grid(int(settings["points_per_side"])) * np.array([[w, h]])
    lows, ious, boxes = [], [], []
    for s in range(0, len(grid), points_per_batch):
        pts = grid[s : s + points_per_batch]
        coords = torch.as_tensor(predictor.transform.apply_coords(pts, (h, w)), dtype=torch.float)[:, None, :]
        labels = torch.ones(len(pts), 1, dtype=torch.int)
        logits, iou, low = predictor.predict_torch(coords, labels, multimask_output=True, return_logits=True)
        boxes.append(batched_mask_to_box(logits.flatten(0, 1) > model.mask_threshold))
        ious.append(iou.flatten())
        lows.append(low.flatten(0, 1).to(torch.float16))
        del logits
    low_all, iou_all, box_all = torch.cat(lows), torch.cat(ious), torch.cat(boxes)
    keep = nms(box_all.float(), iou_all, float(settings["box_nms_thresh"]))
    responses = np.zeros((h, w), dtype=np.float32)
    for s in range(0, len(keep), points_per_batch):
        idx = keep[s : s + points_per_batch]
        logits = model.postprocess_masks(low_all[idx, None].float(), predictor.input_size, (h, w))[:, 0]
        probs = torch.sigmoid(logits).numpy()
        masks = (logits > model.mask_threshold).numpy()
        for p, m in zip(probs, masks):
            if m.any():
                np.maximum(responses, mask_edge_response(p, m), out=responses)
    predictor.reset_image()
    return combine_edge_responses([responses], (h, w)), int(len(keep))


# --------------------------------------------------------------------------- benchmark run
def _counts_to_json(c: bsds.ImageCounts) -> dict[str, list[Any]]:
    return {"thresholds": c.thresholds.tolist(), "cnt_r": c.cnt_r.tolist(), "sum_r": c.sum_r.tolist(),
            "cnt_p": c.cnt_p.tolist(), "sum_p": c.sum_p.tolist()}


def _counts_from_json(d: dict[str, list[Any]]) -> bsds.ImageCounts:
    return bsds.ImageCounts(np.asarray(d["thresholds"], dtype=np.float64),
                            *(np.asarray(d[k], dtype=np.int64) for k in ("cnt_r", "sum_r", "cnt_p", "sum_p")))


def _score(args: tuple[np.ndarray, list[np.ndarray], int]) -> tuple[bsds.ImageCounts, float]:
    """Benchmark counts of one edge map and the seconds they took (measured where they ran)."""
    pb, gts, nthresh = args
    ts = time.time()
    c = bsds.evaluate_edge_map(pb, gts, nthresh=nthresh)
    return c, time.time() - ts


def bsds_split(root: Path, split: str) -> list[tuple[str, Path, Path]]:
    """(id, image path, ground-truth path) of a BSDS500 split."""
    img_dir, gt_dir = root / "images" / split, root / "groundTruth" / split
    if not img_dir.is_dir() or not gt_dir.is_dir():
        raise FileNotFoundError(f"BSDS500 split {split!r} not found under {root} (need images/{split} and groundTruth/{split})")
    items = [(p.stem, p, gt_dir / f"{p.stem}.mat") for p in sorted(img_dir.glob("*.jpg"))]
    missing = [i for i, _, g in items if not g.is_file()]
    if missing:
        raise FileNotFoundError(f"no ground truth for {missing[:3]} in {gt_dir}")
    return items


def _plot_pr(results: dict[str, bsds.BoundaryResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for f in np.linspace(0.1, 0.9, 9):  # iso-F curves
        r = np.linspace(f / (2 - f) + 1e-6, 1, 100)
        ax.plot(r, f * r / (2 * r - f), color="0.85", lw=0.7)
    for name, res in results.items():
        ax.plot(res.recall, res.precision, lw=2, label=f"{name} [ODS {res.ods:.3f}]")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("BSDS500 boundary precision/recall")
    ax.legend(loc="lower left", fontsize=8)
    report.save_figure(fig, path)


def _example(image: np.ndarray, maps: dict[str, np.ndarray], gts: list[np.ndarray], path: Path) -> None:
    gt_sum = np.mean([g.astype(np.float32) for g in gts], axis=0)
    panels = [image] + [np.repeat((255 * (1 - np.clip(m, 0, 1))).astype(np.uint8)[..., None], 3, 2) for m in maps.values()]
    panels.append(np.repeat((255 * (1 - gt_sum / max(gt_sum.max(), 1e-6))).astype(np.uint8)[..., None], 3, 2))
    report.save_image(path, np.concatenate(panels, axis=1))


def run(
    model: Sam | None,
    out_dir: Path,
    model_info: dict[str, Any] | None,
    command: str,
    split: str = "test",
    nthresh: int = 99,
    baselines_: Sequence[str] = ("canny", "sobel"),
    limit: int | None = None,
    seed: int = 0,
    data_root: str | Path | None = None,
    workers: int = 1,
    show_progress: bool = True,
    points_per_side: int | None = None,
    resume_run: bool = True,
    partial: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Edge maps for a BSDS500 split from segany (unless ``model`` is None) and the baselines, scored alike.

    ``partial``: report only the images every method has finished (in ``out_dir/.resume``),
    computing nothing, e.g. while the full run goes on in another process.
    """
    from .datasets import default_data_root

    if "baselines" in kwargs:
        baselines_ = kwargs.pop("baselines")
    if kwargs:
        raise TypeError(f"unexpected arguments {sorted(kwargs)}")
    root = (Path(data_root) if data_root else default_data_root()) / "bsds500"
    items = bsds_split(root, split)
    if limit is not None:
        order = np.random.default_rng(seed).permutation(len(items))[:limit]
        items = [items[i] for i in sorted(order)]
    methods = ([] if model is None else ["segany"]) + list(baselines_)
    if not methods:
        raise ValueError("nothing to evaluate: no model and no baselines")
    unknown = [m for m in methods if m not in ("segany", "canny", "sobel")]
    if unknown:
        raise ValueError(f"unknown edge method(s) {unknown}: choose from segany, canny, sobel")
    predictor = SamPredictor(model) if model is not None else None
    out_dir = Path(out_dir)
    overrides = {} if points_per_side is None else {"points_per_side": points_per_side}
    # One store per method: the baselines' records do not depend on the model, so a
    # `--no-model` run and a model-only run can fill one folder side by side (one core each)
    # and a last run with every method only writes the combined report.
    common = {"split": split, "nthresh": nthresh, "max_dist": bsds.DEFAULT_MAX_DIST}
    stores = {
        m: resume.ResumeStore(
            out_dir, f"edges-{m}",
            {**common, "model": resume.model_fingerprint(model), "preset": preset("edges", **overrides)}
            if m == "segany" else {**common, "method": m},
            enabled=resume_run, partial=partial,
        )
        for m in methods
    }
    # The example figures show every method of this run: a run with other methods (e.g. a
    # `--no-model` run filling the same folder) draws its own, and this one redraws them.
    shown = resume.ResumeStore(out_dir, "edges-examples-" + "+".join(methods), stores[methods[0]].signature
                               if "segany" in methods else {**common, "methods": methods}, enabled=resume_run,
                               partial=partial)
    t0 = time.time()
    records: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in methods}  # method -> image id -> record
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    pending: list[tuple[str, str, float, int | None, Any]] = []
    skipped = 0

    def finish(m: str, iid: str, map_seconds: float, n_kept: int | None, scored: tuple[bsds.ImageCounts, float]) -> None:
        rec = {"seconds": map_seconds + scored[1], "masks_kept": n_kept, "counts": _counts_to_json(scored[0])}
        stores[m].put(iid, rec)
        records[m][iid] = rec

    try:
        for k, (iid, ipath, gpath) in enumerate(tqdm(items, desc="eval edges", unit="img", disable=not show_progress)):
            for m in methods:
                rec = stores[m].get(iid)
                if rec is not None:
                    records[m][iid] = rec
            todo = [m for m in methods if iid not in records[m]]
            if partial:
                skipped += bool(todo)
                continue
            example_path = out_dir / f"example_{iid}.png"
            want_example = k < 3 and (not example_path.is_file() or shown.get(iid) is None)
            if not todo and not want_example:
                continue
            from ..image_io import load_image

            image = load_image(ipath)
            gts = bsds.load_ground_truth(gpath)
            maps: dict[str, np.ndarray] = {}
            for m in methods if want_example else todo:
                ts = time.time()
                n_kept = None
                if m == "segany":
                    assert predictor is not None
                    maps[m], n_kept = segany_edges(predictor, image, **overrides)
                elif m == "canny":
                    maps[m] = baselines.canny_edges(image)
                else:
                    maps[m] = baselines.sobel_edges(image)
                map_seconds = time.time() - ts
                if m not in todo:
                    continue
                if pool is not None:
                    pending.append((m, iid, map_seconds, n_kept, pool.submit(_score, (maps[m], gts, nthresh))))
                else:
                    finish(m, iid, map_seconds, n_kept, _score((maps[m], gts, nthresh)))
            if want_example:
                _example(image, maps, gts, example_path)
                shown.put(iid, {"methods": methods})
            still = []
            for job in pending:  # store finished scores as they come, so a kill loses little
                if job[4].done():
                    finish(job[0], job[1], job[2], job[3], job[4].result())
                else:
                    still.append(job)
            pending = still
        for m, iid, secs, n_kept, fut in pending:
            finish(m, iid, secs, n_kept, fut.result())
    finally:
        if pool is not None:
            pool.shutdown()
    if partial:
        items = [it for it in items if all(it[0] in records[m] for m in methods)]
        if not items:
            raise ValueError(f"--partial: no image finished by every method ({', '.join(methods)}) in "
                             f"{out_dir / '.resume'} for this model and these settings")
    counts = {m: [_counts_from_json(records[m][iid]["counts"]) for iid, _, _ in items] for m in methods}
    method_seconds = {m: float(sum(records[m][iid]["seconds"] for iid, _, _ in items)) for m in methods}
    masks_kept = [records["segany"][iid]["masks_kept"] for iid, _, _ in items] if "segany" in methods else []
    results = {m: bsds.summarize(counts[m]) for m in methods}
    seconds = time.time() - t0
    out = {
        "experiment": "edges",
        "model": model_info,
        "settings": {"split": split, "images": len(items), "nthresh": nthresh, "max_dist": bsds.DEFAULT_MAX_DIST,
                     "seed": seed,
                     "preset": (preset("edges", **({} if points_per_side is None else {"points_per_side": points_per_side}))
                                if model is not None else None)},
        "methods": {m: r.as_dict() for m, r in results.items()},
        "method_seconds": method_seconds,
        "compute_seconds": float(sum(method_seconds.values())),
        "images_resumed": max(st.loaded for st in stores.values()),
        "partial": report.partial_field(len(items), skipped) if partial else None,
        "mean_masks_after_nms": float(np.mean(masks_kept)) if masks_kept else None,
        "paper_table3": PAPER_TABLE3,
        "seconds": seconds,
    }
    _plot_pr(results, out_dir / "pr_curve.png")
    for m, r in results.items():
        for fname, text in bsds.format_official(r).items():
            report.write_text(out_dir / m / fname, text)
    title = "Zero-shot edge detection on BSDS500 (paper 7.2 / D.2)"
    if model_info is not None:
        md = report.header_markdown(title, model_info, command, seconds)
    else:
        md = f"# {title}\n\n- command: `{command}`\n- wall time: {seconds:.0f} s\n\n"
    md += (report.resume_line(out["compute_seconds"], len(items), skipped) if partial
           else report.resume_line(out["compute_seconds"], out["images_resumed"]))
    md += (f"{len(items)} images of the `{split}` split, {nthresh} thresholds, tolerance "
           f"{bsds.DEFAULT_MAX_DIST} x diagonal, all annotators.\n\n")
    rows = [[m, r.ods, r.ois, r.ap, r.r50, method_seconds[m] / max(len(items), 1)] for m, r in results.items()]
    rows += [[k, v["ODS"], v["OIS"], v["AP"], v["R50"], None] for k, v in PAPER_TABLE3.items()]
    md += report.markdown_table(["method", "ODS", "OIS", "AP", "R50", "s/img (map + scoring)"], rows)
    md += "\nRows marked (paper) are the SAM paper's table 3, for reference (ViT-H, full test split).\n\n"
    md += "![precision/recall](pr_curve.png)\n\n"
    for iid, _, _ in items[:3]:
        if (out_dir / f"example_{iid}.png").is_file():
            md += f"![{iid}](example_{iid}.png)\n"
    md += "\nExamples: image, " + ", ".join(methods) + ", human boundaries (darker = more annotators).\n"
    report.write_json(out_dir / "report.json", out)
    report.write_text(out_dir / "report.md", md)
    return out
