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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..masks import masks_to_coco_rle
from ..modeling import Sam
from ..predictor import SamPredictor
from . import report
from .datasets import EvalImage

PAPER_AP = 46.5  # SAM ViT-H with ViTDet-H boxes, COCO mask AP (paper table 5), for reference in reports only


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
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    files = {im.meta.get("annotation_file") for im in images}
    if len(files) != 1 or None in files:
        raise ValueError(f"data set {name} is not a single COCO-format set: instance AP needs COCO annotations")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(files.pop()))
    dets = load_detections(detections, score_threshold) if detections else None
    predictor = SamPredictor(model)
    out_dir = Path(out_dir)
    t0 = time.time()
    results: list[dict[str, Any]] = []
    n_boxes = 0
    for k, im in enumerate(tqdm(images, desc="eval instances", unit="img", disable=not show_progress)):
        img_id = int(im.meta["coco_id"])
        if dets is None:
            anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=img_id)) if not a.get("iscrowd", 0)]
            prompts = [{"bbox": a["bbox"], "category_id": a["category_id"], "score": None} for a in anns]
        else:
            prompts = [{"bbox": d["bbox"], "category_id": d["category_id"], "score": d.get("score", 1.0)} for d in dets.get(img_id, [])]
        if not prompts:
            continue
        pixels = im.image()
        size = (int(pixels.shape[0]), int(pixels.shape[1]))
        xywh = np.array([p["bbox"] for p in prompts], dtype=np.float64)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        predictor.set_image(pixels)
        masks, iou = segment_boxes(predictor, xyxy, size)
        predictor.reset_image()
        n_boxes += len(prompts)
        for p, rle, s in zip(prompts, masks_to_coco_rle(masks), iou):
            results.append(
                {
                    "image_id": img_id,
                    "category_id": int(p["category_id"]),
                    "segmentation": rle,
                    # ground-truth boxes have no detector score: rank by the model's IoU estimate
                    "score": float(s) if p["score"] is None else float(p["score"]),
                }
            )
        if k == 0:
            vis = pixels.copy()
            rng = np.random.default_rng(0)
            for m in masks:
                vis = report.overlay(vis, m, tuple(int(c) for c in rng.integers(0, 255, 3)), alpha=0.45)
            report.save_image(out_dir / f"instances_{im.image_id}.png", vis)
    ids = [int(im.meta["coco_id"]) for im in images]
    ap = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AP_S": 0.0, "AP_M": 0.0, "AP_L": 0.0}
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "segm")
            ev.params.imgIds = ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        s = [max(float(v), 0.0) for v in ev.stats]
        ap = {"AP": s[0], "AP50": s[1], "AP75": s[2], "AP_S": s[3], "AP_M": s[4], "AP_L": s[5]}
    seconds = time.time() - t0
    out = {
        "experiment": "instances",
        "model": model_info,
        "settings": {"dataset": name, "images": len(images), "boxes": "ground truth" if dets is None else str(detections),
                     "score_threshold": score_threshold, "refinement_passes": 1},
        "AP": ap,
        "prompted_boxes": n_boxes,
        "seconds": seconds,
    }
    md = report.header_markdown("Zero-shot instance segmentation (paper 7.4 / D.4)", model_info, command, seconds)
    md += (f"{len(images)} images of `{name}`, {n_boxes} boxes from "
           f"{'the ground truth' if dets is None else f'`{detections}`'}, one refinement pass.\n\n")
    md += report.markdown_table(["mask AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"],
                                [[100 * ap[k] for k in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")]], digits=1)
    md += f"\nAP in %, computed by pycocotools (segm). The paper reports SAM ViT-H with ViTDet-H boxes: COCO AP {PAPER_AP}.\n\n"
    if images and (out_dir / f"instances_{images[0].image_id}.png").exists():
        md += f"![instances](instances_{images[0].image_id}.png)\n"
    report.write_json(out_dir / "report.json", out)
    report.write_text(out_dir / "report.md", md)
    return out
