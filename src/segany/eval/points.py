"""Zero-shot point-to-mask evaluation (paper section 7.1, appendix D.1, figure 9).

For every ground-truth object the first click goes to its centre (or a random interior pixel)
and each further click to the deepest error (see :mod:`segany.eval.clicks`); the previous
click's low-res logits are fed back with all clicks so far. The first prediction uses the
three-mask (ambiguity-aware) output and keeps either the model's most confident mask ("top",
the paper's default) or the one closest to the ground truth ("oracle", the circles of figure
9a); later clicks use the single-mask output, as SAM's interactive training does.

Reported per data set and averaged over data sets: mIoU after 1, 2, 3, 5 and 9 clicks for
both tracks, and NoC@85 / NoC@90 (clicks needed to reach 85% / 90% IoU, at most 20) for the
model's own "top" track: the oracle track stops after 9 clicks, which saves a quarter of a
full run's decoder calls (most objects of a weak model never reach 90%).

All objects of an image are simulated together (one image embedding, one batched decoder
call per click), which is what makes the full runs affordable on a CPU.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..modeling.fingerprint import sampled_weights_digest
from ..predictor import SamPredictor
from ..zoom_in import ZoomIn, ZoomInConfig, ZoomTrack
from . import clicks, report, resume, runner
from .datasets import EvalImage, EvalObjects, objects_and_pixels

CLICK_COUNTS = (1, 2, 3, 5, 9)
NOC_THRESHOLDS = (0.85, 0.90)
TRACKS = ("top", "oracle")
NOC_TRACK = "top"  # NoC is the model's own (top-mask) protocol; the oracle track stops after 9 clicks


@dataclass
class ObjectTrace:
    """IoU after each click for one object, for both mask-selection tracks."""

    meta: dict[str, Any]
    ious: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TRACKS})

    def iou_at(self, track: str, n: int) -> float:
        """IoU after ``n`` clicks (the last one reached if the simulation stopped earlier: no error left)."""
        seq = self.ious[track]
        return seq[min(n, len(seq)) - 1]

    def noc(self, track: str, threshold: float, max_clicks: int) -> int:
        return clicks.number_of_clicks(np.array(self.ious[track]), threshold, max_clicks)


@dataclass
class _Track:
    points: list[tuple[int, int]]
    labels: list[int]
    logits: torch.Tensor  # 1x256x256 low-res logits of the kept mask
    mask: np.ndarray  # HxW bool
    done: bool = False
    zoom: ZoomTrack | None = None  # with zoom-in, from the first zoomed click on


def _predict(
    predictor: SamPredictor,
    coords: np.ndarray,
    labels: np.ndarray,
    mask_input: torch.Tensor | None,
    multimask: bool,
    size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    pts = torch.as_tensor(predictor.transform.apply_coords(coords, size), dtype=torch.float, device=predictor.device)
    lab = torch.as_tensor(labels, dtype=torch.int, device=predictor.device)
    masks, scores, low = predictor.predict_torch(pts, lab, mask_input=mask_input, multimask_output=multimask)
    return masks.cpu().numpy(), scores.cpu().numpy(), low.cpu()


def simulate_image(
    predictor: SamPredictor,
    image: np.ndarray | None,
    objects: EvalObjects,
    first: str = "center",
    max_clicks: int = 20,
    rng: np.random.Generator | None = None,
    chunk: int = 16,
    keep_masks: int = 0,
    feed_mask: bool = True,
    zoom_in: ZoomInConfig | None = None,
    pixels: np.ndarray | None = None,
) -> tuple[list[ObjectTrace], list[dict[str, Any]]]:
    """Simulate clicking on every object of one image.

    Args:
        image: HxWx3 uint8 RGB, embedded here and forgotten when done; or None for the image
            already set on ``predictor``, which the caller shares with its other prompts
            (``eval prompts``' boxes: the encoder pass is by far the most expensive step) and
            resets itself.
        objects: ground-truth masks, ignore map and metadata.
        first: ``"center"`` or ``"random"`` first click.
        max_clicks: clicks per object at most (NoC cap); up to 9 clicks every object is
            simulated (the mIoU curve), beyond that only "top"-track objects still under 90% IoU
            go on (NoC).
        rng: random generator for random first clicks.
        chunk: objects decoded together (bounds memory on crowded images).
        keep_masks: keep the "top" track's clicks and masks after 1 and 3 clicks for this many
            objects (for the report's example figures).
        feed_mask: feed each click the previous mask's low-res logits (the paper's protocol);
            False decodes every click from the clicks alone (what the official web demo does).
        zoom_in: answer later clicks on a crop around each object (:mod:`segany.zoom_in`);
            needs the pixels (``image``, or ``pixels`` for the image already set) and
            ``feed_mask``. Zoomed clicks are decoded one object at a time.
        pixels: with ``image=None``, the pixels of the image set on ``predictor`` (zoom-in
            crops them).
    Returns:
        (traces, examples).
    """
    if max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
    rng = rng if rng is not None else np.random.default_rng(0)
    zoom = None
    pixels = image if image is not None else pixels
    if zoom_in is not None:
        if pixels is None or not feed_mask:
            raise ValueError("zoom-in needs the image's pixels and the previous mask fed back")
        zoom = ZoomIn(predictor, zoom_in)
    if image is not None:
        predictor.set_image(image)
    size = predictor.original_size if image is None else (int(image.shape[0]), int(image.shape[1]))
    ignore = objects.ignore
    traces: list[ObjectTrace] = []
    examples: list[dict[str, Any]] = []
    for start in range(0, len(objects.masks), chunk):
        gts = objects.masks[start : start + chunk]
        metas = objects.meta[start : start + chunk]
        n = len(gts)
        firsts = [clicks.first_click(g, first, rng, ignore) for g in gts]
        coords = np.array(firsts, dtype=np.float64)[:, None, :]
        masks, scores, low = _predict(predictor, coords, np.ones((n, 1)), None, True, size)
        chunk_traces = [ObjectTrace(meta=m) for m in metas]
        tracks: dict[str, list[_Track]] = {t: [] for t in TRACKS}
        for i in range(n):
            gt_ious = [clicks.iou(masks[i, k], gts[i], ignore) for k in range(masks.shape[1])]
            pick = {"top": int(np.argmax(scores[i])), "oracle": int(np.argmax(gt_ious))}
            for t in TRACKS:
                k = pick[t]
                tr = _Track([firsts[i]], [1], low[i, k : k + 1], masks[i, k])
                if zoom is not None and zoom.applies(1):
                    _zoom_click(zoom, pixels, tr)
                tracks[t].append(tr)
                chunk_traces[i].ious[t].append(clicks.iou(tr.mask, gts[i], ignore) if tr.zoom else gt_ious[k])
        ex = [
            {"gt": gts[i], "clicks1": [(*firsts[i], 1)], "mask1": tracks["top"][i].mask, "meta": metas[i]}
            for i in range(min(n, max(0, keep_masks - len(examples))))
        ]
        for step in range(2, max_clicks + 1):
            for t in TRACKS:
                active = []
                for i, tr in enumerate(tracks[t]):
                    if tr.done:
                        continue
                    if step > max(CLICK_COUNTS) and (
                        t != NOC_TRACK or max(chunk_traces[i].ious[t]) >= max(NOC_THRESHOLDS)
                    ):  # past the mIoU curve only NoC needs clicks, and only on its track below 90%
                        tr.done = True
                        continue
                    nxt = clicks.next_click(tr.mask, gts[i], ignore)
                    if nxt is None:  # perfect already: the IoU stays where it is
                        tr.done = True
                        continue
                    tr.points.append((nxt[0], nxt[1]))
                    tr.labels.append(int(nxt[2]))
                    active.append(i)
                if not active:
                    continue
                if zoom is not None and zoom.applies(step):
                    for i in active:
                        _zoom_click(zoom, pixels, tracks[t][i])
                        chunk_traces[i].ious[t].append(clicks.iou(tracks[t][i].mask, gts[i], ignore))
                    continue
                coords = np.array([tracks[t][i].points for i in active], dtype=np.float64)
                labels = np.array([tracks[t][i].labels for i in active])
                mask_in = torch.stack([tracks[t][i].logits for i in active]).to(predictor.device)
                m, _, lo = _predict(predictor, coords, labels, mask_in if feed_mask else None, False, size)
                for j, i in enumerate(active):
                    tr = tracks[t][i]
                    tr.mask, tr.logits = m[j, 0], lo[j, 0:1]
                    chunk_traces[i].ious[t].append(clicks.iou(tr.mask, gts[i], ignore))
            if step == 3:
                for i, e in enumerate(ex):
                    tr = tracks["top"][i]
                    e["clicks3"] = [(x, y, lab) for (x, y), lab in zip(tr.points[:3], tr.labels[:3])]
                    e["mask3"] = tr.mask
            if all(tr.done for t in TRACKS for tr in tracks[t]):
                break
        traces.extend(chunk_traces)
        examples.extend(ex)
    if image is not None:
        predictor.reset_image()
    return traces, examples


def _zoom_click(zoom: ZoomIn, image: np.ndarray | None, tr: _Track) -> None:
    """Decode a track's clicks on its object's crop (its zoom state starts from the low-res logits)."""
    assert image is not None
    if tr.zoom is None:
        tr.zoom = zoom.track(tr.logits)
    tr.mask, _ = zoom.click(image, tr.zoom, np.array(tr.points, dtype=np.float64), np.array(tr.labels))


def summarize(traces: Sequence[ObjectTrace], max_clicks: int) -> dict[str, Any]:
    """mIoU at each click count for both tracks, mean NoC for the top track."""
    out: dict[str, Any] = {"objects": len(traces)}
    for t in TRACKS:
        out[t] = {"mIoU": {str(n): float(np.mean([tr.iou_at(t, n) for tr in traces])) for n in CLICK_COUNTS}}
        if t == NOC_TRACK:
            out[t].update({
                f"NoC@{int(thr * 100)}": float(np.mean([tr.noc(t, thr, max_clicks) for tr in traces]))
                for thr in NOC_THRESHOLDS
            })
    return out


def traces_from_record(rec: dict[str, Any]) -> list[ObjectTrace]:
    """The traces of one image's stored record (``{"seconds", "traces": [{"meta", "ious"}]}``)."""
    return [ObjectTrace(meta=t["meta"], ious=t["ious"]) for t in rec["traces"]]


class ClickExperiment(runner.Experiment):
    """Per image: every object clicked up to ``max_clicks`` times; shared by ``eval points`` and ``eval fairness``.

    The random first click of image i of a data set uses seed (seed, i), so a resumed or
    partial run draws the same clicks as an uninterrupted one. The first images of each data
    set, up to ``keep_examples`` objects, are always simulated again: the example figures need
    their masks (the simulation is deterministic, so the numbers agree).
    """

    def __init__(self, predictor: SamPredictor, first: str, max_clicks: int, seed: int, keep_examples: int,
                 feed_mask: bool = True, zoom_in: ZoomInConfig | None = None) -> None:
        self.predictor = predictor
        self.zoom_in = zoom_in
        self.first = first
        self.max_clicks = max_clicks
        self.seed = seed
        self.feed_mask = feed_mask
        self.keep_examples = keep_examples
        self.examples: dict[str, list[dict[str, Any]]] = {}  # data set -> example objects (with pixels)

    def signature(self) -> dict[str, Any]:
        return _signature(self.predictor, first=self.first, max_clicks=self.max_clicks, seed=self.seed,
                          **_non_default(self.feed_mask, self.zoom_in))

    def key(self, dataset: str, index: int, item: EvalImage) -> str:
        return record_key(index, item)

    def fresh(self, dataset: str, index: int, item: EvalImage) -> bool:
        return len(self.examples.get(dataset, [])) < self.keep_examples

    def per_image(self, dataset: str, index: int, item: EvalImage) -> dict[str, Any]:
        examples = self.examples.setdefault(dataset, [])
        objs, pixels = objects_and_pixels(item)
        traces: list[ObjectTrace] = []
        if pixels is not None:
            rng = np.random.default_rng([self.seed, index])
            traces, ex = simulate_image(self.predictor, pixels, objs, self.first, self.max_clicks, rng,
                                        keep_masks=self.keep_examples - len(examples), feed_mask=self.feed_mask,
                                        zoom_in=self.zoom_in)
            examples.extend({**e, "image": pixels} for e in ex)
        return {"traces": [{"meta": t.meta, "ious": t.ious} for t in traces]}


class PointsExperiment(ClickExperiment):
    """``segany eval points``: mIoU after 1-9 clicks and NoC per data set, their mean, the figures."""

    name = "points"
    title = "Zero-shot point-to-mask evaluation (paper 7.1 / D.1)"

    def __init__(self, predictor: SamPredictor, first: str = "center", max_clicks: int = 20, seed: int = 0,
                 feed_mask: bool = True, zoom_in: ZoomInConfig | None = None) -> None:
        if max_clicks < max(CLICK_COUNTS):
            raise ValueError(
                f"--max-clicks must be >= {max(CLICK_COUNTS)} (mIoU is reported up to 9 clicks), got {max_clicks}"
            )
        super().__init__(predictor, first, max_clicks, seed, keep_examples=2, feed_mask=feed_mask, zoom_in=zoom_in)

    def summarise_dataset(self, dataset: str, finished: list[tuple[Any, dict[str, Any]]]) -> Any:
        traces = [t for _, rec in finished for t in traces_from_record(rec)]
        if self.ctx.partial and not traces:
            return None  # nothing of this data set finished yet
        if not traces:
            raise ValueError(f"data set {dataset} has no objects to evaluate")
        for k, ex in enumerate(self.examples.pop(dataset, [])):
            _example_png(ex, self.ctx.out_dir / f"example_{dataset}_{k}.png")
        return {"images": len(finished), **summarize(traces, self.max_clicks)}, traces

    def summarise(self, datasets: dict[str, Any]) -> runner.Summary:
        per_dataset = {name: s for name, (s, _) in datasets.items()}
        mean: dict[str, Any] = {
            t: {"mIoU": {str(n): float(np.mean([r[t]["mIoU"][str(n)] for r in per_dataset.values()]))
                         for n in CLICK_COUNTS}}
            for t in TRACKS
        }
        mean[NOC_TRACK].update({
            f"NoC@{int(thr * 100)}": float(np.mean([r[NOC_TRACK][f"NoC@{int(thr * 100)}"] for r in per_dataset.values()]))
            for thr in NOC_THRESHOLDS
        })
        out_dir = self.ctx.out_dir
        _plot_curves(per_dataset, out_dir / "miou_vs_points.png", f"point-to-mask, {self.first} first click")
        md = (f"First click: **{self.first}**; later clicks at the deepest error; NoC capped at {self.max_clicks} "
              "clicks.")
        if self.zoom_in is not None:
            z = self.zoom_in
            least = f"{z.min_crop} px" + (f" and {z.min_crop_fraction:g} of the image's longer side"
                                          if z.min_crop_fraction else "")
            md += (f" **Zoom-in** from click {z.skip_clicks + 1}: crops {z.expansion}x the object's box, at least "
                   f"{least}, re-encoded when the box IoU drops below {z.recompute_iou}.")
        md += "\n\n"
        header = (["data set", "images", "objects"] + [f"mIoU@{n}" for n in CLICK_COUNTS]
                  + ["oracle@1", "oracle@3", "NoC@85", "NoC@90"])
        rows = []
        for name, r in {**per_dataset, "mean": {"images": "", "objects": "", **mean}}.items():
            rows.append(
                [name, r["images"], r["objects"]]
                + [100 * r["top"]["mIoU"][str(n)] for n in CLICK_COUNTS]
                + [100 * r["oracle"]["mIoU"]["1"], 100 * r["oracle"]["mIoU"]["3"], r["top"]["NoC@85"],
                   r["top"]["NoC@90"]]
            )
        md += report.markdown_table(header, rows, digits=1)
        md += ("\nmIoU in %, \"top\" = the model's most confident of 3 masks at the first click; \"oracle\" = the "
               "best of 3.\n\n")
        md += "![mIoU vs points](miou_vs_points.png)\n\n"
        for name in per_dataset:
            for k in range(2):
                if (out_dir / f"example_{name}_{k}.png").exists():
                    md += f"![{name} example {k}](example_{name}_{k}.png)\n"
        md += ("\nExamples: prediction after 1 click (left) and 3 clicks (right); yellow = ground truth, green/red = "
               "fg/bg clicks.\n")
        settings = {"first_click": self.first, "max_clicks": self.max_clicks, "seed": self.seed,
                    "click_counts": list(CLICK_COUNTS),
                    "zoom_in": None if self.zoom_in is None else asdict(self.zoom_in)}
        per_object = {
            name: [{"meta": tr.meta, "iou_top": tr.ious["top"], "iou_oracle": tr.ious["oracle"]} for tr in traces]
            for name, (_, traces) in datasets.items()
        }
        return runner.Summary({"settings": settings, "datasets": per_dataset, "mean": mean}, md,
                              {"per_object": per_object})


def _signature(predictor: SamPredictor, **settings: Any) -> dict[str, Any]:
    """What determines a click simulation's results: the weights, the reported click counts and NoC thresholds, the settings."""
    return {"model": sampled_weights_digest(predictor.model), "clicks": CLICK_COUNTS, "noc": NOC_THRESHOLDS, **settings}


def _non_default(feed_mask: bool, zoom_in: ZoomInConfig | None) -> dict[str, Any]:
    """The signature fields of settings away from their defaults, and only those: records of
    earlier runs, made before the settings existed (mask fed back, no zoom), stay valid."""
    out: dict[str, Any] = {} if feed_mask else {"feed_mask": False}
    if zoom_in is not None:
        out["zoom_in"] = asdict(zoom_in)
    return out


def record_key(idx: int, im: EvalImage) -> str:
    """The store key of image ``im``, the ``idx``-th of its data set's (possibly subsampled) list."""
    return f"{im.dataset}/{idx}/{im.image_id}"


def open_for_reuse(out_dir: Path, predictor: SamPredictor, min_clicks: int,
                   zoom_in: ZoomInConfig | None = None) -> resume.ResumeStore:
    """The records of an earlier ``eval points`` run in ``out_dir``, read-only, for another experiment.

    ``eval prompts`` reports the model's mIoU after 1 and 5 clicks under exactly this
    simulation; a full ``eval points`` run has already simulated every object (up to 20
    clicks), so reading its traces spares hours of identical decoder work. Only a run that
    simulated the same thing qualifies: the same weights, centre first clicks (random first
    clicks depend on the seed and the image's position in the list), the same mask feedback
    and zoom-in (``zoom_in``), and at least ``min_clicks`` clicks per object. Raises
    ValueError, naming the mismatch, otherwise.
    """
    sig_path = Path(out_dir) / ".resume" / "points" / resume.SIGNATURE_FILE
    try:
        sig = json.loads(sig_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"no `segany eval points` records in {out_dir} ({sig_path}: {e})") from e
    # every field of the signature must match, except the click cap (checked below) and the
    # seed (centre first clicks draw no random numbers)
    want = report._jsonable(_signature(predictor, first="center", **_non_default(True, zoom_in)))
    bad = [f"{k}={sig.get(k)!r} (need {v!r})" for k, v in want.items() if sig.get(k) != v]
    # settings recorded only when not the default (feed_mask off, zoom-in on) must be absent
    bad += [f"{k}={sig[k]!r} (need none)" for k in sorted(set(sig) - set(want) - {"max_clicks", "seed"})]
    if not isinstance(sig.get("max_clicks"), int) or sig["max_clicks"] < min_clicks:
        bad.append(f"max_clicks={sig.get('max_clicks')!r} (need >= {min_clicks})")
    if bad:
        raise ValueError(
            f"the `segany eval points` records in {out_dir} were not made by this simulation: {', '.join(bad)}"
        )
    return resume.ResumeStore(out_dir, "points", sig, partial=True)


def stored_traces(store: resume.ResumeStore, idx: int, im: EvalImage, n_objects: int) -> list[ObjectTrace] | None:
    """The traces of image ``im`` from a store of :func:`open_for_reuse`, or None if it holds none.

    Raises ValueError when the record's object count differs from ``n_objects`` (the data set
    changed since that run).
    """
    rec = store.get(record_key(idx, im))
    if rec is None:
        return None
    if len(rec["traces"]) != n_objects:
        raise ValueError(
            f"{im.dataset}/{im.image_id}: the stored `eval points` record has {len(rec['traces'])} objects, "
            f"the data set now has {n_objects}; rerun without reusing those records"
        )
    return [ObjectTrace(meta=t["meta"], ious=t["ious"]) for t in rec["traces"]]


# --------------------------------------------------------------------------- report
def _plot_curves(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = list(CLICK_COUNTS)
    for i, (name, res) in enumerate(results.items()):
        color = f"C{i}"
        ax.plot(xs, [100 * res["top"]["mIoU"][str(n)] for n in xs], "-o", color=color, label=f"{name} (top)")
        ax.plot(xs, [100 * res["oracle"]["mIoU"][str(n)] for n in xs], "--x", color=color, alpha=0.7, label=f"{name} (oracle)")
    ax.set_xlabel("number of points")
    ax.set_ylabel("mIoU (%)")
    ax.set_xticks(xs)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    report.save_figure(fig, path)


def _example_png(ex: dict[str, Any], path: Path) -> None:
    import cv2

    img = ex["image"]
    panels = []
    for key_m, key_c in (("mask1", "clicks1"), ("mask3", "clicks3")):
        if key_m not in ex:
            continue
        p = report.overlay(img, ex[key_m])
        gt_contours, _ = cv2.findContours(ex["gt"].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(p, gt_contours, -1, (255, 215, 0), 1)
        r = max(3, int(round(max(img.shape[:2]) / 120)))
        for x, y, lab in ex[key_c]:
            cv2.circle(p, (int(x), int(y)), r, (0, 200, 0) if lab else (220, 0, 0), -1)
            cv2.circle(p, (int(x), int(y)), r, (255, 255, 255), 1)
        panels.append(p)
    report.save_image(path, np.concatenate(panels, axis=1))


def run(
    predictor: SamPredictor,
    datasets: dict[str, Sequence[EvalImage]],
    out_dir: Path,
    model_info: dict[str, Any],
    command: str,
    first: str = "center",
    max_clicks: int = 20,
    seed: int = 0,
    show_progress: bool = True,
    resume_run: bool = True,
    partial: bool = False,
    feed_mask: bool = True,
    zoom_in: ZoomInConfig | None = None,
) -> dict[str, Any]:
    """Evaluate every data set and write ``report.json``, ``report.md``, ``miou_vs_points.png`` and examples.

    Finished images are kept in ``out_dir/.resume``: a rerun after an interruption (same
    model, settings and data) continues where it stopped, unless ``resume_run`` is False.
    ``partial``: report only the images finished so far, computing nothing; data sets with
    none finished are left out. ``feed_mask``, ``zoom_in``: see :func:`simulate_image`.
    """
    experiment = PointsExperiment(predictor, first, max_clicks, seed, feed_mask, zoom_in)
    options = runner.RunOptions(out_dir, model_info, command, show_progress, resume_run, partial)
    return runner.run(experiment, datasets, options)
