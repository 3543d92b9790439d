"""Zero-shot object proposals (paper section 7.3, appendix D.3, table 4): mask AR@1000.

The automatic generator's ``proposals`` preset (64x64 grid, no crops, no predicted-IoU or
stability filtering, box NMS 0.9, at most 1000 masks ranked by the mean of predicted IoU and
stability) produces class-agnostic proposals; pycocotools' COCOeval (segm, categories
ignored) measures average recall at 1000 proposals over all, small, medium and large objects.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..automatic import SamAutomaticMaskGenerator, preset
from ..masks import coco_encode_rle
from ..modeling import Sam
from . import report, resume
from .datasets import EvalImage

MAX_DETS = (100, 300, 1000)
PAPER_AR1000 = 59.3  # SAM ViT-H mask AR@1000 on LVIS v1 (paper table 4), for reference in reports only


def coco_recall(gt: Any, results: list[dict[str, Any]], image_ids: Sequence[int], use_cats: bool) -> dict[str, float]:
    """pycocotools segm evaluation restricted to ``image_ids``; AR at 100/300/1000 and by size at 1000."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes adds fields to the dicts it is given: hand it copies
        dt = gt.loadRes([dict(r) for r in results]) if results else None
        if dt is None:
            return {"100": 0.0, "300": 0.0, "all": 0.0, "small": 0.0, "medium": 0.0, "large": 0.0}
        ev = COCOeval(gt, dt, "segm")
        ev.params.imgIds = list(image_ids)
        ev.params.maxDets = list(MAX_DETS)
        ev.params.useCats = int(use_cats)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = [max(float(v), 0.0) for v in ev.stats]  # -1 means "no ground truth in this range"
    return {"100": s[6], "300": s[7], "all": s[8], "small": s[9], "medium": s[10], "large": s[11]}


PROPOSAL_SELECTION = "top max_masks by mean(predicted IoU, stability), NaN last; empty masks dropped"


def run(
    model: Sam,
    name: str,
    images: Sequence[EvalImage],
    out_dir: Path,
    model_info: dict[str, Any],
    command: str,
    points_per_side: int | None = None,
    show_progress: bool = True,
    resume_run: bool = True,
    partial: bool = False,
) -> dict[str, Any]:
    """Generate proposals for every image and write the AR report.

    Finished images are kept in ``out_dir/.resume`` (see :mod:`segany.eval.resume`), so an
    interrupted full run continues where it stopped. ``partial``: AR over the images
    finished so far (pycocotools restricted to their ids), computing nothing.
    """
    from pycocotools.coco import COCO

    coco_ids = [im.meta.get("coco_id") for im in images]
    if any(i is None for i in coco_ids):
        raise ValueError(f"data set {name} is not a COCO-format set: proposals need COCO annotations")
    ann_file = _annotation_file(images)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
    overrides = {} if points_per_side is None else {"points_per_side": points_per_side}
    settings = preset("proposals", **overrides)
    generator = SamAutomaticMaskGenerator(model, output_mode="uncompressed_rle", **settings)
    out_dir = Path(out_dir)
    # "selection" names how proposals are chosen, so records of the earlier rule (empty masks with
    # a NaN rank first in the top-1000 cut, and kept as proposals) are recomputed, never mixed in.
    signature = {"model": resume.model_fingerprint(model), "preset": settings, "selection": PROPOSAL_SELECTION}
    store = resume.ResumeStore(out_dir, "proposals", signature, enabled=resume_run, partial=partial)
    t0 = time.time()
    results: list[dict[str, Any]] = []
    counts = []
    finished: list[int] = []
    for k, im in enumerate(tqdm(images, desc="eval proposals", unit="img", disable=not show_progress)):
        key = f"{name}/{im.image_id}"
        figure = out_dir / f"proposals_{im.image_id}.png"
        rec = store.get(key) if partial or k > 0 or figure.is_file() else None
        if store.skip(rec):
            continue
        if rec is None:
            ts = time.time()
            pixels = im.image()
            recs = generator.generate(pixels)
            props = []
            for r in recs:
                if r["area"] == 0:
                    continue  # an empty mask proposes nothing (and its stability score is NaN)
                seg = coco_encode_rle(r["segmentation"])
                props.append(
                    {
                        "image_id": int(im.meta["coco_id"]),
                        "category_id": 1,
                        "segmentation": {"size": seg["size"], "counts": seg["counts"]},
                        "score": (float(r["predicted_iou"]) + float(r["stability_score"])) / 2,
                    }
                )
            if k == 0:
                _proposal_figure(pixels, recs, figure)
            rec = {"seconds": time.time() - ts, "proposals": props}
            store.put(key, rec)
        counts.append(len(rec["proposals"]))
        results.extend(rec["proposals"])
        finished.append(int(im.meta["coco_id"]))
    store.check_partial("images")
    ar = coco_recall(gt, results, finished, use_cats=False)
    seconds = time.time() - t0
    out = {
        "experiment": "proposals",
        "model": model_info,
        "settings": {"dataset": name, "images": len(finished), **settings},
        "AR@1000": ar,
        "mean_proposals_per_image": float(np.mean(counts)) if counts else 0.0,
        "seconds": seconds,
        "compute_seconds": store.seconds,
        "images_resumed": store.loaded,
        "partial": store.partial_info(),
    }
    md = report.header_markdown("Zero-shot object proposals (paper 7.3 / D.3)", model_info, command, seconds)
    md += store.report_line()
    md += (f"{len(finished)} images of `{name}`, preset `proposals` ({settings['points_per_side']}x"
           f"{settings['points_per_side']} grid, NMS {settings['box_nms_thresh']}, no IoU/stability filter, "
           f"top {settings['max_masks']}); {out['mean_proposals_per_image']:.0f} proposals per image on average.\n\n")
    md += report.markdown_table(
        ["mask AR@100", "AR@300", "AR@1000", "AR@1000 small", "medium", "large"],
        [[100 * ar["100"], 100 * ar["300"], 100 * ar["all"], 100 * ar["small"], 100 * ar["medium"], 100 * ar["large"]]],
        digits=1,
    )
    md += (f"\nAR in %, computed by pycocotools (segm, class-agnostic). The paper reports SAM ViT-H AR@1000 "
           f"{PAPER_AR1000} on LVIS v1.\n\n")
    if images and (out_dir / f"proposals_{images[0].image_id}.png").is_file():
        md += f"![proposals](proposals_{images[0].image_id}.png)\n"
    report.write_json(out_dir / "report.json", out)
    report.write_text(out_dir / "report.md", md)
    return out


def _annotation_file(images: Sequence[EvalImage]) -> Path:
    files = {im.meta.get("annotation_file") for im in images}
    if len(files) != 1 or None in files:
        raise ValueError("images must come from one COCO annotation file")
    return Path(str(files.pop()))


def _proposal_figure(image: np.ndarray, records: list[dict[str, Any]], path: Path, top: int = 60) -> None:
    from ..masks import rle_to_mask

    rng = np.random.default_rng(0)
    out = image.astype(np.float32).copy()
    order = sorted(records, key=lambda r: -(r["predicted_iou"] + r["stability_score"]))[:top]
    for r in sorted(order, key=lambda r: -r["area"]):
        m = rle_to_mask(r["segmentation"])
        out[m] = 0.5 * out[m] + 0.5 * rng.integers(0, 255, 3)
    report.save_image(path, out.astype(np.uint8))
