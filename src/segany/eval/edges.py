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
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..automatic.filters import nms
from ..automatic.grid import build_point_grid
from ..automatic.presets import preset
from ..image_io import load_image
from ..masks import batched_mask_to_box
from ..modeling import Sam
from ..modeling.fingerprint import sampled_weights_digest
from ..predictor import SamPredictor
from . import baselines, bsds, report, runner
from .edge_nms import edge_nms
from .paper import EDGES_TABLE3

METHODS = ("segany", "canny", "sobel")
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


@dataclass(frozen=True)
class BsdsImage:
    """One BSDS500 image: its id, the image file and the ``.mat`` file of its human boundaries."""

    image_id: str
    path: Path
    gt_path: Path


def bsds_split(root: Path, split: str) -> list[BsdsImage]:
    """The images of a BSDS500 split, sorted by id."""
    img_dir, gt_dir = root / "images" / split, root / "groundTruth" / split
    if not img_dir.is_dir() or not gt_dir.is_dir():
        raise FileNotFoundError(f"BSDS500 split {split!r} not found under {root} (need images/{split} and groundTruth/{split})")
    items = [BsdsImage(p.stem, p, gt_dir / f"{p.stem}.mat") for p in sorted(img_dir.glob("*.jpg"))]
    missing = [it.image_id for it in items if not it.gt_path.is_file()]
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


@dataclass
class _Scoring:
    """A method's benchmark counts of one image, being matched in a worker process (``--workers``)."""

    future: Future
    map_seconds: float
    masks_kept: int | None

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> dict[str, Any]:
        return _record(self.map_seconds, self.masks_kept, self.future.result())


def _record(map_seconds: float, masks_kept: int | None, scored: tuple[bsds.ImageCounts, float]) -> dict[str, Any]:
    """A method's stored result for one image: its counts and the seconds of the map and its scoring."""
    return {"seconds": map_seconds + scored[1], "masks_kept": masks_kept, "counts": _counts_to_json(scored[0])}


class EdgesExperiment(runner.Experiment):
    """``segany eval edges``: per image and method an edge map scored by the BSDS benchmark; ODS/OIS/AP/R50.

    One store per method (``OUT/.resume/edges-<method>``): the baselines' records do not depend
    on the model, so a ``--no-model`` run and a model-only run can fill one folder side by side
    (one core each), and a last run with every method only writes the combined report.
    """

    name = "edges"
    title = "Zero-shot edge detection on BSDS500 (paper 7.2 / D.2)"

    def __init__(
        self, model: Sam | None, split: str = "test", nthresh: int = 99, baselines_: Sequence[str] = ("canny", "sobel"),
        seed: int = 0, points_per_side: int | None = None,
    ) -> None:
        self.methods = ([] if model is None else ["segany"]) + list(baselines_)
        if not self.methods:
            raise ValueError("nothing to evaluate: no model and no baselines")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown edge method(s) {unknown}: choose from {', '.join(METHODS)}")
        self.model = model
        self.predictor = SamPredictor(model) if model is not None else None
        self.split = split
        self.nthresh = nthresh
        self.seed = seed
        self.overrides = {} if points_per_side is None else {"points_per_side": points_per_side}
        self.pool: ProcessPoolExecutor | None = None  # set by run() for --workers > 1
        self.common = {"split": split, "nthresh": nthresh, "max_dist": bsds.DEFAULT_MAX_DIST}

    def _signature(self, method: str) -> dict[str, Any]:
        if method == "segany":
            return {**self.common, "model": sampled_weights_digest(self.model), "preset": preset("edges", **self.overrides)}
        return {**self.common, "method": method}

    def parts(self) -> dict[str, dict[str, Any]]:
        return {f"edges-{m}": self._signature(m) for m in self.methods}

    def start(self, ctx: runner.RunContext) -> None:
        super().start(ctx)
        # The example figures show every method of this run: a run with other methods (e.g. a
        # `--no-model` run filling the same folder) draws its own, and this one redraws them.
        self.shown = ctx.store("edges-examples-" + "+".join(self.methods), self._signature("segany")
                               if "segany" in self.methods else {**self.common, "methods": self.methods})

    def key(self, dataset: str, index: int, item: BsdsImage) -> str:
        return item.image_id

    def _want_example(self, index: int, item: BsdsImage) -> bool:
        path = self.ctx.out_dir / f"example_{item.image_id}.png"
        return index < 3 and (not path.is_file() or self.shown.get(item.image_id) is None)

    def revisit(self, dataset: str, index: int, item: BsdsImage) -> bool:
        return self._want_example(index, item)

    def compute(
        self, dataset: str, index: int, item: BsdsImage, todo: Sequence[str], stored: dict[str, dict[str, Any]]
    ) -> dict[str, dict[str, Any] | runner.Deferred]:
        todo_methods = [m for m in self.methods if f"edges-{m}" in todo]
        want_example = self._want_example(index, item)
        image = load_image(item.path)
        gts = bsds.load_ground_truth(item.gt_path)
        maps: dict[str, np.ndarray] = {}
        out: dict[str, dict[str, Any] | runner.Deferred] = {}
        for m in self.methods if want_example else todo_methods:
            ts = time.time()
            n_kept = None
            if m == "segany":
                assert self.predictor is not None
                maps[m], n_kept = segany_edges(self.predictor, image, **self.overrides)
            elif m == "canny":
                maps[m] = baselines.canny_edges(image)
            else:
                maps[m] = baselines.sobel_edges(image)
            map_seconds = time.time() - ts
            if m not in todo_methods:
                continue
            if self.pool is not None:
                out[f"edges-{m}"] = _Scoring(self.pool.submit(_score, (maps[m], gts, self.nthresh)), map_seconds, n_kept)
            else:
                out[f"edges-{m}"] = _record(map_seconds, n_kept, _score((maps[m], gts, self.nthresh)))
        if want_example:
            _example(image, maps, gts, self.ctx.out_dir / f"example_{item.image_id}.png")
            self.shown.put(item.image_id, {"methods": self.methods})
        return out

    def finish_dataset(self, dataset: str, finished: runner.Finished) -> Any:
        return finished

    def nothing_finished(self) -> None:
        raise ValueError(f"--partial: no image finished by every method ({', '.join(self.methods)}) in "
                         f"{self.ctx.out_dir / '.resume'} for this model and these settings")

    def summarise(self, datasets: dict[str, Any]) -> runner.Summary:
        finished: runner.Finished = datasets[self.split]
        items = [item for item, _ in finished]
        recs = {m: [r[f"edges-{m}"] for _, r in finished] for m in self.methods}
        counts = {m: [_counts_from_json(r["counts"]) for r in recs[m]] for m in self.methods}
        method_seconds = {m: float(sum(r["seconds"] for r in recs[m])) for m in self.methods}
        masks_kept = [r["masks_kept"] for r in recs["segany"]] if "segany" in self.methods else []
        results = {m: bsds.summarize(counts[m]) for m in self.methods}
        out_dir = self.ctx.out_dir
        _plot_pr(results, out_dir / "pr_curve.png")
        for m, r in results.items():
            for fname, text in bsds.format_official(r).items():
                report.write_text(out_dir / m / fname, text)
        md = (f"{len(items)} images of the `{self.split}` split, {self.nthresh} thresholds, tolerance "
              f"{bsds.DEFAULT_MAX_DIST} x diagonal, all annotators.\n\n")
        rows = [[m, r.ods, r.ois, r.ap, r.r50, method_seconds[m] / max(len(items), 1)] for m, r in results.items()]
        rows += [[k, v["ODS"], v["OIS"], v["AP"], v["R50"], None] for k, v in EDGES_TABLE3.items()]
        md += report.markdown_table(["method", "ODS", "OIS", "AP", "R50", "s/img (map + scoring)"], rows)
        md += "\nRows marked (paper) are the SAM paper's table 3, for reference (ViT-H, full test split).\n\n"
        md += "![precision/recall](pr_curve.png)\n\n"
        for item in items[:3]:
            if (out_dir / f"example_{item.image_id}.png").is_file():
                md += f"![{item.image_id}](example_{item.image_id}.png)\n"
        md += "\nExamples: image, " + ", ".join(self.methods) + ", human boundaries (darker = more annotators).\n"
        settings = {"split": self.split, "images": len(items), "nthresh": self.nthresh,
                    "max_dist": bsds.DEFAULT_MAX_DIST, "seed": self.seed,
                    "preset": preset("edges", **self.overrides) if self.model is not None else None}
        fields = {"settings": settings, "methods": {m: r.as_dict() for m, r in results.items()},
                  "method_seconds": method_seconds}
        details = {"mean_masks_after_nms": float(np.mean(masks_kept)) if masks_kept else None,
                   "paper_table3": EDGES_TABLE3}
        return runner.Summary(fields, md, details)


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
    experiment = EdgesExperiment(model, split, nthresh, baselines_, seed, points_per_side)
    options = runner.RunOptions(out_dir, model_info, command, show_progress, resume_run, partial)
    if workers <= 1:
        return runner.run(experiment, {split: items}, options)
    with ProcessPoolExecutor(workers) as pool:  # the benchmark's matching, while the next image's maps are made
        experiment.pool = pool
        return runner.run(experiment, {split: items}, options)
