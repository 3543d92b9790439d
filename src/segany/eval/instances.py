"""Zero-shot instance segmentation (paper section 7.4, appendix D.4, table 5): box-prompted mask AP.

Boxes come from the ground truth (an upper bound that isolates the segmentation module) or
from any detector, given as a COCO results JSON (``[{"image_id", "category_id", "bbox": XYWH,
"score"}]``). Each box is segmented with the three-mask output; the most confident mask's
logits are fed back together with the box for one refinement pass (single-mask output), as
the paper describes. pycocotools' COCOeval (segm) gives AP, AP_S, AP_M, AP_L.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..masks import masks_to_coco_rle
from ..modeling import Sam
from ..predictor import SamPredictor
from . import report, runner
from .datasets import EvalImage
from .paper import INSTANCES_AP


def load_detections(path: str | Path, score_threshold: float = 0.0) -> dict[int, list[dict[str, Any]]]:
    """A COCO results JSON grouped by image id (detections below ``score_threshold`` dropped)."""
    try:
        with open(path) as f:
            dets = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read detections {path}: {exc}") from exc
    if not isinstance(dets, list):
        raise ValueError(f"{path}: a COCO results file is a JSON list of detections")
    out: dict[int, list[dict[str, Any]]] = {}
    for i, d in enumerate(dets):
        if not all(k in d for k in ("image_id", "category_id", "bbox")):
            raise ValueError(f"{path}: detection {i} needs image_id, category_id and bbox")
        if float(d.get("score", 1.0)) < score_threshold:
            continue
        out.setdefault(int(d["image_id"]), []).append(d)
    return out


@torch.no_grad()
def segment_boxes(predictor: SamPredictor, boxes_xyxy: np.ndarray, size: tuple[int, int], chunk: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Masks (NxHxW bool) and predicted IoUs (N) for boxes, with one refinement pass.

    The image must already be set on ``predictor``.
    """
    masks_out, scores_out = [], []
    for s in range(0, len(boxes_xyxy), chunk):
        b = torch.as_tensor(predictor.transform.apply_boxes(boxes_xyxy[s : s + chunk], size), dtype=torch.float)
        _, iou, low = predictor.predict_torch(None, None, boxes=b, multimask_output=True)
        best = iou.argmax(dim=1)
        logits = low[torch.arange(len(b)), best][:, None]
        masks, iou2, _ = predictor.predict_torch(None, None, boxes=b, mask_input=logits, multimask_output=False)
        masks_out.append(masks[:, 0].cpu().numpy())
        scores_out.append(iou2[:, 0].cpu().numpy())
    if not masks_out:
        return np.zeros((0, *size), dtype=bool), np.zeros(0)
    return np.concatenate(masks_out), np.concatenate(scores_out)


class InstancesExperiment(runner.Experiment):
    """``segany eval instances``: every box of every image segmented, then COCO mask AP.

    Not resumable: the whole run takes minutes, and its per-image results (full-image RLEs of
    every box) would make large records for little gain.
    """

    name = "instances"
    title = "Zero-shot instance segmentation (paper 7.4 / D.4)"
    resumable = False

    def __init__(
        self, model: Sam, dataset: str, images: Sequence[EvalImage], detections: str | Path | None = None,
        score_threshold: float = 0.0,
    ) -> None:
        from pycocotools.coco import COCO

        files = {im.meta.get("annotation_file") for im in images}
        if len(files) != 1 or None in files:
            raise ValueError(f"data set {dataset} is not a single COCO-format set: instance AP needs COCO annotations")
        with contextlib.redirect_stdout(io.StringIO()):
            self.gt = COCO(str(files.pop()))
        self.dets = load_detections(detections, score_threshold) if detections else None
        self.detections = detections
        self.score_threshold = score_threshold
        self.predictor = SamPredictor(model)
        self.dataset = dataset
        self.images = images

    def key(self, dataset: str, index: int, item: EvalImage) -> str:
        return f"{dataset}/{item.image_id}"

    def _prompts(self, img_id: int) -> list[dict[str, Any]]:
        """The image's boxes: the ground truth's (crowds left out) or the detector's."""
        if self.dets is None:
            anns = [a for a in self.gt.loadAnns(self.gt.getAnnIds(imgIds=img_id)) if not a.get("iscrowd", 0)]
            return [{"bbox": a["bbox"], "category_id": a["category_id"], "score": None} for a in anns]
        return [{"bbox": d["bbox"], "category_id": d["category_id"], "score": d.get("score", 1.0)}
                for d in self.dets.get(img_id, [])]

    def per_image(self, dataset: str, index: int, item: EvalImage) -> dict[str, Any]:
        img_id = int(item.meta["coco_id"])
        prompts = self._prompts(img_id)
        if not prompts:
            return {"results": [], "boxes": 0}
        pixels = item.image()
        size = (int(pixels.shape[0]), int(pixels.shape[1]))
        xywh = np.array([p["bbox"] for p in prompts], dtype=np.float64)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        self.predictor.set_image(pixels)
        masks, iou = segment_boxes(self.predictor, xyxy, size)
        self.predictor.reset_image()
        results = [
            {
                "image_id": img_id,
                "category_id": int(p["category_id"]),
                "segmentation": rle,
                # ground-truth boxes have no detector score: rank by the model's IoU estimate
                "score": float(s) if p["score"] is None else float(p["score"]),
            }
            for p, rle, s in zip(prompts, masks_to_coco_rle(masks), iou)
        ]
        if index == 0:
            vis = pixels.copy()
            rng = np.random.default_rng(0)
            for m in masks:
                vis = report.overlay(vis, m, tuple(int(c) for c in rng.integers(0, 255, 3)), alpha=0.45)
            report.save_image(self.ctx.out_dir / f"instances_{item.image_id}.png", vis)
        return {"results": results, "boxes": len(prompts)}

    def summarise(self, datasets: dict[str, Any]) -> runner.Summary:
        from pycocotools.cocoeval import COCOeval

        finished = datasets[self.dataset]
        results = [r for _, rec in finished for r in rec["results"]]
        n_boxes = sum(rec["boxes"] for _, rec in finished)
        ids = [int(im.meta["coco_id"]) for im in self.images]
        ap = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AP_S": 0.0, "AP_M": 0.0, "AP_L": 0.0}
        if results:
            with contextlib.redirect_stdout(io.StringIO()):
                ev = COCOeval(self.gt, self.gt.loadRes([dict(r) for r in results]), "segm")
                ev.params.imgIds = ids
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            s = [max(float(v), 0.0) for v in ev.stats]
            ap = {"AP": s[0], "AP50": s[1], "AP75": s[2], "AP_S": s[3], "AP_M": s[4], "AP_L": s[5]}
        gt_boxes = self.dets is None
        md = (f"{len(self.images)} images of `{self.dataset}`, {n_boxes} boxes from "
              f"{'the ground truth' if gt_boxes else f'`{self.detections}`'}, one refinement pass.\n\n")
        md += report.markdown_table(["mask AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"],
                                    [[100 * ap[k] for k in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")]], digits=1)
        md += (f"\nAP in %, computed by pycocotools (segm). The paper reports SAM ViT-H with ViTDet-H boxes: COCO AP "
               f"{INSTANCES_AP}.\n\n")
        if self.images and (self.ctx.out_dir / f"instances_{self.images[0].image_id}.png").exists():
            md += f"![instances](instances_{self.images[0].image_id}.png)\n"
        settings = {"dataset": self.dataset, "images": len(self.images),
                    "boxes": "ground truth" if gt_boxes else str(self.detections),
                    "score_threshold": self.score_threshold, "refinement_passes": 1}
        return runner.Summary({"settings": settings, "AP": ap, "prompted_boxes": n_boxes}, md)


def run(
    model: Sam,
    name: str,
    images: Sequence[EvalImage],
    out_dir: Path,
    model_info: dict[str, Any],
    command: str,
    detections: str | Path | None = None,
    score_threshold: float = 0.0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Segment every box of every image and write the AP report."""
    experiment = InstancesExperiment(model, name, images, detections, score_threshold)
    options = runner.RunOptions(out_dir, model_info, command, show_progress, resume=False)
    return runner.run(experiment, {name: images}, options)
