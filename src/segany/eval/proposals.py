"""Zero-shot object proposals (paper section 7.3, appendix D.3, table 4): mask AR@1000.

The automatic generator's ``proposals`` preset (64x64 grid, no crops, no predicted-IoU or
stability filtering, box NMS 0.9, at most 1000 masks ranked by the mean of predicted IoU and
stability) produces class-agnostic proposals; pycocotools' COCOeval (segm, categories
ignored) measures average recall at 1000 proposals over all, small, medium and large objects.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..automatic import SamAutomaticMaskGenerator, preset
from ..masks import coco_encode_rle
from ..modeling import Sam
from ..modeling.fingerprint import sampled_weights_digest
from . import report, runner
from .datasets import EvalImage
from .paper import PROPOSALS_AR1000

MAX_DETS = (100, 300, 1000)


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


class ProposalsExperiment(runner.Experiment):
    """``segany eval proposals``: the generator's proposals per image, then class-agnostic mask AR."""

    name = "proposals"
    title = "Zero-shot object proposals (paper 7.3 / D.3)"

    def __init__(self, model: Sam, dataset: str, images: Sequence[EvalImage], points_per_side: int | None = None) -> None:
        from pycocotools.coco import COCO

        coco_ids = [im.meta.get("coco_id") for im in images]
        if any(i is None for i in coco_ids):
            raise ValueError(f"data set {dataset} is not a COCO-format set: proposals need COCO annotations")
        ann_file = _annotation_file(images)
        with contextlib.redirect_stdout(io.StringIO()):
            self.gt = COCO(str(ann_file))
        self.model = model
        self.dataset = dataset
        self.first_id = images[0].image_id if images else None
        overrides = {} if points_per_side is None else {"points_per_side": points_per_side}
        self.settings = preset("proposals", **overrides)
        self.generator = SamAutomaticMaskGenerator(model, output_mode="uncompressed_rle", **self.settings)

    def signature(self) -> dict[str, Any]:
        # "selection" names how proposals are chosen, so records of the earlier rule (empty masks with
        # a NaN rank first in the top-1000 cut, and kept as proposals) are recomputed, never mixed in.
        return {"model": sampled_weights_digest(self.model), "preset": self.settings,
                "selection": PROPOSAL_SELECTION}

    def key(self, dataset: str, index: int, item: EvalImage) -> str:
        return f"{dataset}/{item.image_id}"

    def _figure(self, item: EvalImage) -> Path:
        return self.ctx.out_dir / f"proposals_{item.image_id}.png"

    def fresh(self, dataset: str, index: int, item: EvalImage) -> bool:
        return index == 0 and not self._figure(item).is_file()  # the figure needs the masks

    def per_image(self, dataset: str, index: int, item: EvalImage) -> dict[str, Any]:
        pixels = item.image()
        recs = self.generator.generate(pixels)
        props = []
        for r in recs:
            if r["area"] == 0:
                continue  # an empty mask proposes nothing (and its stability score is NaN)
            seg = coco_encode_rle(r["segmentation"])
            props.append(
                {
                    "image_id": int(item.meta["coco_id"]),
                    "category_id": 1,
                    "segmentation": {"size": seg["size"], "counts": seg["counts"]},
                    "score": (float(r["predicted_iou"]) + float(r["stability_score"])) / 2,
                }
            )
        if index == 0:
            _proposal_figure(pixels, recs, self._figure(item))
        return {"proposals": props}

    def summarise(self, datasets: dict[str, Any]) -> runner.Summary:
        finished = datasets[self.dataset]
        results = [p for _, rec in finished for p in rec["proposals"]]
        counts = [len(rec["proposals"]) for _, rec in finished]
        ids = [int(item.meta["coco_id"]) for item, _ in finished]
        ar = coco_recall(self.gt, results, ids, use_cats=False)
        mean_props = float(np.mean(counts)) if counts else 0.0
        settings = self.settings
        md = (f"{len(ids)} images of `{self.dataset}`, preset `proposals` ({settings['points_per_side']}x"
              f"{settings['points_per_side']} grid, NMS {settings['box_nms_thresh']}, no IoU/stability filter, "
              f"top {settings['max_masks']}); {mean_props:.0f} proposals per image on average.\n\n")
        md += report.markdown_table(
            ["mask AR@100", "AR@300", "AR@1000", "AR@1000 small", "medium", "large"],
            [[100 * ar["100"], 100 * ar["300"], 100 * ar["all"], 100 * ar["small"], 100 * ar["medium"],
              100 * ar["large"]]],
            digits=1,
        )
        md += (f"\nAR in %, computed by pycocotools (segm, class-agnostic). The paper reports SAM ViT-H AR@1000 "
               f"{PROPOSALS_AR1000} on LVIS v1.\n\n")
        if self.first_id is not None and (self.ctx.out_dir / f"proposals_{self.first_id}.png").is_file():
            md += f"![proposals](proposals_{self.first_id}.png)\n"
        fields = {"settings": {"dataset": self.dataset, "images": len(ids), **settings}, "AR@1000": ar,
                  "mean_proposals_per_image": mean_props}
        return runner.Summary(fields, md)


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
    experiment = ProposalsExperiment(model, name, images, points_per_side)
    options = runner.RunOptions(out_dir, model_info, command, show_progress, resume_run, partial)
    return runner.run(experiment, {name: images}, options)


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
