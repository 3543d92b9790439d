"""Single-prompt and few-click mask quality, model next to classical baselines (``segany eval prompts``).

For every ground-truth object of each data set, on the same objects and with the same IoU
code (ignore regions such as GrabCut's 128 band and COCO crowds excluded):

- **model, box**: the GT mask's tight XYXY box, single-mask output (``multimask_output=False``,
  as the paper's box-prompt experiments);
- **model, 1 point / 5 clicks**: exactly :func:`segany.eval.points.simulate_image` with a centre
  first click (the "top" track: the most confident of 3 masks at click 1, single-mask output
  with the previous low-res logits afterwards), so these numbers equal ``segany eval points``'
  mIoU@1 / mIoU@5 on the same images;
- **GrabCut, box**: :func:`segany.eval.classical.grabcut_box` on the same box;
- **GrabCut, 1 point / 5 clicks**: :func:`segany.eval.classical.grabcut_clicks` under the same
  click protocol (the same centre click, then clicks at the deepest error of GrabCut's *own*
  previous mask, :mod:`segany.eval.clicks`), each step seeded with its previous mask;
- **box fill**: the box itself, the floor for box prompts.

The means per data set and over data sets are mIoU (the mean of per-object IoUs; an object
whose prediction became perfect keeps its IoU for the remaining clicks, as in ``eval points``).
All objects of an image share one image embedding: the image is set on the predictor once, and
the click simulation (:func:`segany.eval.points.simulate_image`) and the batched box prompts
both decode from it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..masks import batched_mask_to_box
from ..modeling.fingerprint import sampled_weights_digest
from ..predictor import SamPredictor
from ..zoom_in import ZoomIn, ZoomInConfig
from . import classical, clicks, points, report, resume, runner
from .datasets import EvalImage, EvalObjects, objects_and_pixels

N_CLICKS = 5  # the report's "few clicks"; per-object traces keep every click up to here
BASELINES = ("grabcut", "box_fill")
COLUMNS = (  # (key, table header); the report's column order
    ("model_box", "model box"),
    ("grabcut_box", "GrabCut box"),
    ("box_fill", "box fill"),
    ("model_1pt", "model 1 pt"),
    ("grabcut_1pt", "GrabCut 1 pt"),
    (f"model_{N_CLICKS}clicks", f"model {N_CLICKS} clicks"),
    (f"grabcut_{N_CLICKS}clicks", f"GrabCut {N_CLICKS} clicks"),
)
_COLUMN_SOURCE = {"grabcut_box": "grabcut", "grabcut_1pt": "grabcut", f"grabcut_{N_CLICKS}clicks": "grabcut", "box_fill": "box_fill"}


@dataclass
class ObjectResult:
    """IoUs of every method on one object (None: baseline not run)."""

    meta: dict[str, Any]
    box: list[int]
    model_box: float
    model_clicks: list[float]  # "top" track, IoU after clicks 1..n (shorter if perfect earlier)
    model_oracle_1pt: float
    grabcut_box: float | None = None
    box_fill: float | None = None
    grabcut_clicks: list[float] | None = None

    def columns(self) -> dict[str, float | None]:
        """This object's value for each report column."""
        gc = self.grabcut_clicks
        return {
            "model_box": self.model_box,
            "grabcut_box": self.grabcut_box,
            "box_fill": self.box_fill,
            "model_1pt": _at(self.model_clicks, 1),
            "grabcut_1pt": None if gc is None else _at(gc, 1),
            f"model_{N_CLICKS}clicks": _at(self.model_clicks, N_CLICKS),
            f"grabcut_{N_CLICKS}clicks": None if gc is None else _at(gc, N_CLICKS),
        }


def _at(trace: Sequence[float], n: int) -> float:
    """IoU after ``n`` clicks; the last one reached when the simulation stopped early (no error left)."""
    return float(trace[min(n, len(trace)) - 1])


def tight_box(mask: np.ndarray) -> np.ndarray:
    """XYXY tight box of a non-empty mask, last row/column inclusive (SAM's convention for boxes from masks).

    :func:`segany.masks.batched_mask_to_box`, except that an empty mask is an error here: a
    ground-truth object with no pixels has no box prompt (the official [0, 0, 0, 0] would be
    scored as if it were one).
    """
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        raise ValueError("cannot take the box of an empty mask")
    return batched_mask_to_box(m).numpy()


def model_box_ious(
    predictor: SamPredictor,
    boxes: np.ndarray,
    gts: Sequence[np.ndarray],
    ignore: np.ndarray | None,
    keep: int | None = None,
    chunk: int = 32,
) -> tuple[list[float], np.ndarray | None]:
    """IoU of the model's single-mask answer to each XYXY box (image already set), and the mask of object ``keep``.

    Masks are scored chunk by chunk and dropped, so crowded images (hundreds of nuclei) never
    hold all full-size masks at once.
    """
    size = (int(predictor.orig_h), int(predictor.orig_w))
    ious: list[float] = []
    kept = None
    for s in range(0, len(boxes), chunk):
        b = torch.as_tensor(predictor.transform.apply_boxes(boxes[s : s + chunk], size), dtype=torch.float, device=predictor.device)
        with torch.no_grad():
            masks, _, _ = predictor.predict_torch(None, None, boxes=b, multimask_output=False)
        m = masks[:, 0].cpu().numpy()
        for j in range(m.shape[0]):
            ious.append(clicks.iou(m[j], gts[s + j], ignore))
            if keep == s + j:
                kept = m[j]
    return ious, kept


def zoomed_box_ious(
    zoom: ZoomIn,
    image: np.ndarray,
    boxes: np.ndarray,
    gts: Sequence[np.ndarray],
    ignore: np.ndarray | None,
    keep: int | None = None,
) -> tuple[list[float], np.ndarray | None]:
    """:func:`model_box_ious` with each box answered on its own crop (one encoder pass a box)."""
    ious: list[float] = []
    kept = None
    for j, b in enumerate(boxes):
        m, _, _ = zoom.box(image, b)
        ious.append(clicks.iou(m, gts[j], ignore))
        if keep == j:
            kept = m
    return ious, kept


def grabcut_click_trace(
    image: np.ndarray,
    gt: np.ndarray,
    ignore: np.ndarray | None,
    n_clicks: int = N_CLICKS,
    iters: int = classical.ITERATIONS,
    context: float | None = classical.CLICK_CONTEXT,
    seed: int = 0,
) -> list[float]:
    """IoU after each of up to ``n_clicks`` clicks of click-driven GrabCut under the model's click protocol.

    The first click is the model's (the GT centre); every later one goes to the deepest error
    of GrabCut's own previous mask, so the baseline is corrected for its own mistakes, as a
    user would. The trace ends early when the mask has no error left (its IoU then stands).
    """
    x, y = clicks.center_click(gt, ignore)
    pts: list[tuple[int, int]] = [(x, y)]
    labs = [1]
    mask = classical.grabcut_clicks(image, pts, labs, None, iters=iters, context=context, seed=seed)
    ious = [clicks.iou(mask, gt, ignore)]
    for _ in range(1, n_clicks):
        nxt = clicks.next_click(mask, gt, ignore)
        if nxt is None:
            break
        pts.append((nxt[0], nxt[1]))
        labs.append(int(nxt[2]))
        mask = classical.grabcut_clicks(image, pts, labs, mask, iters=iters, context=context, seed=seed)
        ious.append(clicks.iou(mask, gt, ignore))
    return ious


def evaluate_image(
    predictor: SamPredictor,
    image: np.ndarray,
    objects: EvalObjects,
    baselines: Sequence[str] = BASELINES,
    grabcut_iters: int = classical.ITERATIONS,
    grabcut_box_context: float | None = classical.BOX_CONTEXT,
    grabcut_click_context: float | None = classical.CLICK_CONTEXT,
    seed: int = 0,
    keep_example: bool = False,
    timing: dict[str, float] | None = None,
    traces: Sequence[points.ObjectTrace] | None = None,
    zoom_box: ZoomInConfig | None = None,
    zoom_clicks: ZoomInConfig | None = None,
) -> tuple[list[ObjectResult], dict[str, Any] | None]:
    """Every method on every object of one image.

    Args:
        traces: this image's click traces from an ``eval points`` run of the same model
            (:func:`segany.eval.points.open_for_reuse`); the click simulation is then skipped.
        zoom_box: answer each box on a crop around it (:meth:`segany.zoom_in.ZoomIn.box`).
        zoom_clicks: zoom-in for the click simulation (:func:`segany.eval.points.simulate_image`).
    Returns:
        (results, example): example (when ``keep_example``) holds the largest object's GT,
        box and the model's and GrabCut's box masks, for the report's figure.
    """
    timing = timing if timing is not None else {}
    gts, ignore = objects.masks, objects.ignore
    boxes = np.stack([tight_box(g) for g in gts])
    ex_idx = int(np.argmax([int(g.sum()) for g in gts])) if keep_example else None

    t = time.perf_counter()
    predictor.set_image(image)  # once: the clicks and the boxes decode from the same embedding
    try:
        if traces is None:  # the click simulation first, so it runs exactly as in `eval points`
            traces, _ = points.simulate_image(predictor, None, objects, "center", max_clicks=N_CLICKS,
                                              zoom_in=zoom_clicks, pixels=image)
        if zoom_box is None:
            box_ious, ex_model = model_box_ious(predictor, boxes, gts, ignore, keep=ex_idx)
        else:
            box_ious, ex_model = zoomed_box_ious(ZoomIn(predictor, zoom_box), image, boxes, gts, ignore, ex_idx)
    finally:
        predictor.reset_image()
    timing["model"] = timing.get("model", 0.0) + time.perf_counter() - t

    results = [
        ObjectResult(
            meta=tr.meta,
            box=[int(v) for v in boxes[i]],
            model_box=box_ious[i],
            model_clicks=list(tr.ious["top"][:N_CLICKS]),
            model_oracle_1pt=tr.ious["oracle"][0],
        )
        for i, tr in enumerate(traces)
    ]
    ex_grabcut = None
    for i, r in enumerate(results):
        if "box_fill" in baselines:
            r.box_fill = clicks.iou(classical.box_fill(image, boxes[i]), gts[i], ignore)
        if "grabcut" in baselines:
            t = time.perf_counter()
            m = classical.grabcut_box(image, boxes[i], grabcut_iters, grabcut_box_context, seed)
            r.grabcut_box = clicks.iou(m, gts[i], ignore)
            if i == ex_idx:
                ex_grabcut = m
            t2 = time.perf_counter()
            r.grabcut_clicks = grabcut_click_trace(
                image, gts[i], ignore, N_CLICKS, grabcut_iters, grabcut_click_context, seed
            )
            timing["grabcut_box"] = timing.get("grabcut_box", 0.0) + t2 - t
            timing["grabcut_clicks"] = timing.get("grabcut_clicks", 0.0) + time.perf_counter() - t2
    example = None
    if ex_idx is not None:
        r = results[ex_idx]
        example = {
            "image": image, "gt": gts[ex_idx], "ignore": ignore, "box": boxes[ex_idx], "meta": r.meta,
            "model": ex_model, "model_iou": r.model_box, "grabcut": ex_grabcut, "grabcut_iou": r.grabcut_box,
        }
    return results, example


def summarize(results: Sequence[ObjectResult]) -> dict[str, Any]:
    """mIoU per column (None for baselines not run), the click curves 1..N_CLICKS and the oracle@1."""
    cols = [r.columns() for r in results]
    miou: dict[str, float | None] = {}
    for key, _ in COLUMNS:
        vals = [c[key] for c in cols]
        miou[key] = None if any(v is None for v in vals) else float(np.mean(vals))
    curves: dict[str, dict[str, float]] = {
        "model": {str(n): float(np.mean([_at(r.model_clicks, n) for r in results])) for n in range(1, N_CLICKS + 1)}
    }
    if all(r.grabcut_clicks is not None for r in results):
        curves["grabcut"] = {
            str(n): float(np.mean([_at(cast(list[float], r.grabcut_clicks), n) for r in results]))
            for n in range(1, N_CLICKS + 1)
        }
    return {
        "objects": len(results),
        "mIoU": miou,
        "mIoU_vs_clicks": curves,
        "model_oracle_1pt": float(np.mean([r.model_oracle_1pt for r in results])),
    }


# --------------------------------------------------------------------------- report
def _where(context: float | None, region: str) -> str:
    """Where GrabCut ran, in words, for the report."""
    if context is None:
        return "on the whole image"
    return f"on {region} grown by {context:g} x its longer side (>= {classical.MIN_MARGIN} px)"


def _active_columns(baselines: Sequence[str]) -> list[tuple[str, str]]:
    return [(k, h) for k, h in COLUMNS if k not in _COLUMN_SOURCE or _COLUMN_SOURCE[k] in baselines]


def _plot_bars(rows: dict[str, dict[str, Any]], columns: Sequence[tuple[str, str]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names) + 2), 4))
    width = 0.8 / len(columns)
    x = np.arange(len(names))
    for j, (key, head) in enumerate(columns):
        vals = [100 * (rows[n]["mIoU"][key] or 0.0) for n in names]
        # colour = method, hatch = prompt, so each model bar sits next to its baseline twin
        color = "C0" if key.startswith("model") else ("C1" if key.startswith("grabcut") else "0.6")
        hatch = "" if key.endswith("box") or key == "box_fill" else (".." if key.endswith("1pt") else "//")
        ax.bar(x - 0.4 + width * (j + 0.5), vals, width, label=head, color=color, hatch=hatch, edgecolor="white")
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    report.save_figure(fig, path)


def _label(panel: np.ndarray, text: str) -> None:
    import cv2

    for color, thick in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(panel, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, thick, cv2.LINE_AA)


def _example_png(ex: dict[str, Any], path: Path) -> None:
    """Image with the box, GT, the model's and GrabCut's box results, cropped around the object."""
    import cv2

    img, gt = ex["image"], ex["gt"]
    h, w = img.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in ex["box"])
    m = max(32, max(x1 - x0, y1 - y0))
    cx0, cy0, cx1, cy1 = max(0, x0 - m), max(0, y0 - m), min(w, x1 + m + 1), min(h, y1 + m + 1)
    scale = max(1, int(np.ceil(256 / max(cx1 - cx0, cy1 - cy0))))

    def crop(a: np.ndarray) -> np.ndarray:
        a = a[cy0:cy1, cx0:cx1]
        return np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)

    def with_box(p: np.ndarray) -> np.ndarray:
        cv2.rectangle(p, ((x0 - cx0) * scale, (y0 - cy0) * scale), ((x1 - cx0 + 1) * scale - 1, (y1 - cy0 + 1) * scale - 1), (0, 200, 0), 1)
        return p

    base = crop(img).copy()
    panels = [with_box(base.copy())]
    _label(panels[0], "image + box")
    g = report.overlay(base, crop(gt), color=(255, 215, 0))
    if ex["ignore"] is not None:
        g[crop(ex["ignore"])] = (g[crop(ex["ignore"])] * 0.5 + 64).astype(np.uint8)
    _label(g, "ground truth")
    panels.append(g)
    for key, name in (("model", "model"), ("grabcut", "GrabCut")):
        if ex[key] is None:
            continue
        p = with_box(report.overlay(base, crop(ex[key])))
        _label(p, f"{name} box: IoU {ex[f'{key}_iou']:.2f}")
        panels.append(p)
    report.save_image(path, np.concatenate(panels, axis=1))


@dataclass(frozen=True)
class Baselines:
    """Which classical baselines run on every object, and how (``--baselines``, ``--grabcut-*``, ``--seed``)."""

    methods: tuple[str, ...] = BASELINES
    iters: int = classical.ITERATIONS
    box_context: float | None = classical.BOX_CONTEXT
    click_context: float | None = classical.CLICK_CONTEXT
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(BASELINES))
        if unknown:
            raise ValueError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)}")
        if self.iters < 1:
            raise ValueError(f"--grabcut-iters must be >= 1, got {self.iters}")
        for opt, ctx in (("box", self.box_context), ("click", self.click_context)):
            if ctx is not None and not 0 <= ctx < float("inf"):
                raise ValueError(f"--grabcut-{opt}-context must be a number >= 0 or 'whole', got {ctx}")


class PromptsExperiment(runner.Experiment):
    """``segany eval prompts``: every method on every object, per image; mIoU per column and data set."""

    name = "prompts"
    title = "Single-prompt and few-click mIoU: model vs classical baselines"

    def __init__(self, predictor: SamPredictor, baselines: Baselines, clicks_from: Path | None = None,
                 zoom_box: ZoomInConfig | None = None, zoom_clicks: ZoomInConfig | None = None) -> None:
        self.predictor = predictor
        self.zoom_box = zoom_box
        self.zoom_clicks = zoom_clicks
        self.baselines = baselines
        self.clicks_from = clicks_from
        self.click_store: resume.ResumeStore | None = None
        self.examples: dict[str, dict[str, Any] | None] = {}  # data set -> its example (the first image with objects)
        self.timing: dict[str, float] = {}  # seconds per method, over every image (stored or computed)
        self.reused = 0  # images whose click columns were read from `eval points` records

    def start(self, ctx: runner.RunContext) -> None:
        super().start(ctx)
        if self.clicks_from is not None and not ctx.partial:
            self.click_store = points.open_for_reuse(self.clicks_from, self.predictor, N_CLICKS, self.zoom_clicks)

    def signature(self) -> dict[str, Any]:
        b = self.baselines
        return {"model": sampled_weights_digest(self.predictor.model), "baselines": sorted(b.methods),
                "grabcut_iters": b.iters, "grabcut_box_context": b.box_context,
                "grabcut_click_context": b.click_context, "seed": b.seed, "clicks": N_CLICKS,
                # (zoom settings only when on: records of earlier runs stay valid)
                **{k: asdict(z) for k, z in (("zoom_box", self.zoom_box), ("zoom_clicks", self.zoom_clicks))
                   if z is not None}}

    def key(self, dataset: str, index: int, item: EvalImage) -> str:
        return f"{item.dataset}/{item.image_id}"

    def fresh(self, dataset: str, index: int, item: EvalImage) -> bool:
        return self.examples.get(dataset) is None  # simulated until the example exists

    def per_image(self, dataset: str, index: int, item: EvalImage) -> dict[str, Any]:
        objs, pixels = objects_and_pixels(item)
        timing: dict[str, float] = {}
        results: list[ObjectResult] = []
        traces = None
        if pixels is not None:
            if self.click_store is not None:
                traces = points.stored_traces(self.click_store, index, item, len(objs.masks))
            b = self.baselines
            results, ex = evaluate_image(
                self.predictor, pixels, objs, b.methods, b.iters, b.box_context, b.click_context, b.seed,
                self.examples.get(dataset) is None, timing, traces, self.zoom_box, self.zoom_clicks,
            )
            if self.examples.get(dataset) is None:
                self.examples[dataset] = ex
        return {"timing": timing, "clicks_reused": traces is not None, "objects": [vars(r) for r in results]}

    def summarise_dataset(self, dataset: str, finished: list[tuple[Any, dict[str, Any]]]) -> Any:
        for _, rec in finished:
            self.reused += bool(rec.get("clicks_reused"))
            for k, v in rec["timing"].items():
                self.timing[k] = self.timing.get(k, 0.0) + v
        results = [ObjectResult(**o) for _, rec in finished for o in rec["objects"]]
        if self.ctx.partial and not results:
            return None  # nothing of this data set finished yet
        if not results:
            raise ValueError(f"data set {dataset} has no objects to evaluate")
        example = self.examples.pop(dataset, None)
        if example is not None:
            _example_png(example, self.ctx.out_dir / f"example_{dataset}.png")
        per_object = [
            {"meta": r.meta, "box_xyxy": r.box, "model_box": r.model_box, "model_clicks": r.model_clicks,
             "model_oracle_1pt": r.model_oracle_1pt, "grabcut_box": r.grabcut_box, "box_fill": r.box_fill,
             "grabcut_clicks": r.grabcut_clicks}
            for r in results
        ]
        return {"images": len(finished), **summarize(results)}, per_object

    def summarise(self, datasets: dict[str, Any]) -> runner.Summary:
        per_dataset = {name: s for name, (s, _) in datasets.items()}
        columns = _active_columns(self.baselines.methods)
        mean: dict[str, Any] = {
            "mIoU": {
                k: (None if any(r["mIoU"][k] is None for r in per_dataset.values())
                    else float(np.mean([r["mIoU"][k] for r in per_dataset.values()])))
                for k, _ in COLUMNS
            }
        }
        rows = {**per_dataset, "mean": mean}
        out_dir = self.ctx.out_dir
        _plot_bars(rows, columns, out_dir / "miou_by_prompt.png", "single prompt and few clicks: model vs classical")
        fields = {
            "settings": self._settings(),
            "columns": {k: h for k, h in columns},
            "datasets": per_dataset,
            "mean": mean,
            "timing_seconds": self.timing,
            "clicks_from": {"dir": None if self.clicks_from is None else str(self.clicks_from), "images": self.reused},
        }
        per_object = {name: objs for name, (_, objs) in datasets.items()}
        return runner.Summary(fields, self._markdown(rows, list(per_dataset)), {"per_object": per_object})

    def _settings(self) -> dict[str, Any]:
        b = self.baselines
        return {
            "clicks": N_CLICKS,
            "first_click": "center",
            "box": "tight XYXY box of the ground-truth mask (last row/column inclusive)",
            "model_box_multimask": False,
            "model_clicks": "segany.eval.points.simulate_image, 'top' track",
            "baselines": list(b.methods),
            "grabcut_iters": b.iters,
            "grabcut_box_context": "whole image" if b.box_context is None else b.box_context,
            "grabcut_click_context": "whole image" if b.click_context is None else b.click_context,
            "grabcut_min_margin_px": classical.MIN_MARGIN,
            "grabcut_click_radius_px": classical.CLICK_RADIUS,
            "grabcut_first_window": classical.FIRST_WINDOW,
            "seed": b.seed,
            "zoom_box": None if self.zoom_box is None else asdict(self.zoom_box),
            "zoom_clicks": None if self.zoom_clicks is None else asdict(self.zoom_clicks),
        }

    def _markdown(self, rows: dict[str, dict[str, Any]], names: list[str]) -> str:
        b = self.baselines
        md = ""
        if self.reused:
            where = "" if self.clicks_from is None else f", `{self.clicks_from}`"
            md += (
                f"The model's click columns of {self.reused} images were read from `segany eval points` records "
                f"(the same simulation and weights{where}), not simulated again.\n\n"
            )
        md += (
            f"Same objects, same IoU code for every column. Box = the ground-truth mask's tight box; 1 pt = "
            f"the mask centre; {N_CLICKS} clicks = centre, then each click at the deepest error of the "
            f"method's own previous mask. GrabCut: OpenCV, {b.iters} iterations; box: "
            f"{_where(b.box_context, 'the box')}; clicks: {classical.CLICK_RADIUS}-px seed disks, "
            f"first-click prior a square of {classical.FIRST_WINDOW:g} x the shorter image side, "
            f"{_where(b.click_context, 'the clicked region')}.\n\n"
        )
        if self.zoom_box is not None:
            z = self.zoom_box
            md += (f"**Model box on crops** (`--zoom-box`): each box answered on a crop {z.expansion}x its size, at "
                   f"least {z.min_crop_fraction:g} of the image's longer side (segany.zoom_in).\n\n")
        if self.zoom_clicks is not None:
            z = self.zoom_clicks
            md += (f"**Model clicks with zoom-in** (`--zoom-in`) from click {z.skip_clicks + 1}: crops "
                   f"{z.expansion}x the object's box (segany.zoom_in).\n\n")
        header = ["data set", "images", "objects"] + [h for _, h in COLUMNS]
        table = []
        for name, r in rows.items():
            table.append(
                [name, r.get("images", ""), r.get("objects", "")]
                + [None if r["mIoU"][k] is None else 100 * r["mIoU"][k] for k, _ in COLUMNS]
            )
        md += report.markdown_table(header, table, digits=1)
        md += (
            "\nmIoU in %; mean = unweighted mean over data sets; '-' = baseline not run. Model 1 pt = the most "
            f"confident of 3 masks; model 1 pt / {N_CLICKS} clicks equal `segany eval points`' mIoU@1 / "
            f"mIoU@{N_CLICKS} (first click centre). Ignored: GrabCut's unknown band, COCO crowd regions.\n\n"
        )
        md += "![mIoU by prompt](miou_by_prompt.png)\n\n"
        for name in names:
            if (self.ctx.out_dir / f"example_{name}.png").exists():
                md += f"![{name} example](example_{name}.png)\n"
        md += "\nExamples: the largest object of the first image, box prompt; yellow = ground truth (grey = ignored).\n"
        return md


def run(
    predictor: SamPredictor,
    datasets: dict[str, Sequence[EvalImage]],
    out_dir: Path,
    model_info: dict[str, Any],
    command: str,
    baselines: Sequence[str] = BASELINES,
    grabcut_iters: int = classical.ITERATIONS,
    grabcut_box_context: float | None = classical.BOX_CONTEXT,
    grabcut_click_context: float | None = classical.CLICK_CONTEXT,
    seed: int = 0,
    show_progress: bool = True,
    resume_run: bool = True,
    partial: bool = False,
    clicks_from: Path | None = None,
    zoom_box: ZoomInConfig | None = None,
    zoom_clicks: ZoomInConfig | None = None,
) -> dict[str, Any]:
    """Evaluate every data set; write ``report.json``, ``report.md``, ``miou_by_prompt.png`` and ``example_<set>.png``.

    Finished images are kept in ``out_dir/.resume`` (see :mod:`segany.eval.resume`), so an
    interrupted full run continues where it stopped. ``partial``: report only the images
    finished so far, computing nothing. ``clicks_from``: the folder of an ``eval points`` run
    of the same model with centre first clicks; the model's click columns of every image it
    finished are read from its records (the same simulation, so the same numbers) and only
    the box prompts and the baselines are computed. ``zoom_box`` / ``zoom_clicks``: answer
    boxes / later clicks on crops (:mod:`segany.zoom_in`).
    """
    settings = Baselines(tuple(baselines), grabcut_iters, grabcut_box_context, grabcut_click_context, seed)
    experiment = PromptsExperiment(predictor, settings, clicks_from, zoom_box, zoom_clicks)
    options = runner.RunOptions(out_dir, model_info, command, show_progress, resume_run, partial)
    return runner.run(experiment, datasets, options)
