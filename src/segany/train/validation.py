"""A fixed validation set carved from the *train* splits, scored during training.

Why: the eval splits must never steer training, yet a run needs an honest signal that is
not its own training loss (which mixes augmentation, copy-paste and random crops). Every
``holdout_every``-th image of each training folder is set aside (``data/crops.py``), shown
as the model sees it at inference (whole image, longest side = the input size, no
augmentation), and scored with a fixed seed: the IoU of the mask the IoU head picks for
one point, for the noisy box, and after two corrective clicks.

Besides the pooled means, each metric is also reported per source folder
(``val_point/coco`` ...): the held-out pool is dominated by whichever source has the most
images (dsb nuclei), and a model can improve there while it gets worse on photos.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.crops import CropConfig, CropDataset
from ..modeling.sam import Sam
from .losses import downsample_targets, mask_iou
from .prompts import PromptConfig, simulate_episode


def whole_images(roots: list, img_size: int, holdout_every: int, split: str, max_masks: int = 4) -> CropDataset:
    """The training folders' images as the model sees them at inference (whole input square,
    longest side = ``img_size``, no augmentation); ``split`` "train" or "val" (the held-out
    images, :class:`~segany.data.sa1b.RecordIndex`)."""
    config = CropConfig(
        crop=img_size, scale=(1.0, 1.0), hflip=0.0, color_jitter=0.0, copy_paste=0.0,
        max_masks=max_masks, candidates=64, min_mask_px=64,
    )
    return CropDataset(roots, img_size, config, holdout_every=holdout_every, split=split)


def validation_set(roots: list, img_size: int, holdout_every: int, max_masks: int = 4) -> CropDataset:
    """The held-out images as whole input squares, without augmentation."""
    return whole_images(roots, img_size, holdout_every, "val", max_masks)


@torch.no_grad()
def validate(sam: Sam, dataset: CropDataset, seed: int = 0, limit: int | None = None) -> dict[str, float]:
    """Mean IoU (point, box, after 2 clicks) over the held-out masks; seeded, so comparable
    between checkpoints."""
    was_training = sam.training
    sam.eval()
    device = sam.device
    sums = {"val_point": 0.0, "val_box": 0.0, "val_3clicks": 0.0}
    count = 0
    per_source: dict[str, dict[str, float]] = {}
    n = len(dataset) if limit is None else min(limit, len(dataset))
    try:
        for k in range(n):
            sample = dataset.load(k, np.random.default_rng([seed, k]))
            if len(sample.masks) == 0:
                continue
            image = sample.normalised(sam.pixel_mean, sam.pixel_std, device)
            emb = sam.image_encoder(image[None])
            gt = sample.masks.to(device)
            index = torch.zeros(len(gt), dtype=torch.long, device=device)
            side = gt.shape[-1]
            sizes = torch.full((len(gt), 2), side, dtype=torch.long, device=device)
            valid = sample.valid.to(device)[None].expand(len(gt), -1, -1)
            source = per_source.setdefault(
                dataset.paths[k].parent.name, {"val_point": 0.0, "val_box": 0.0, "val_3clicks": 0.0, "n": 0.0}
            )
            for name, box_prob, iters in (("point", 0.0, 2), ("box", 1.0, 0)):
                gen = torch.Generator().manual_seed(seed * 1000 + k)
                cfg = PromptConfig(num_point_iters=iters, no_point_iters=0, box_prob=box_prob)
                outs = simulate_episode(sam, emb, index, gt, sizes, gen, cfg, valid=valid)
                target = downsample_targets(gt, outs[0].low_res.shape[-1])
                first = outs[0]
                best = first.iou_pred.argmax(dim=1)
                picked = first.low_res[torch.arange(len(best)), best].float()
                scores = {f"val_{name}": float(mask_iou(picked, target).sum())}
                if name == "point":
                    scores["val_3clicks"] = float(mask_iou(outs[-1].low_res[:, 0].float(), target).sum())
                for key, value in scores.items():
                    sums[key] += value
                    source[key] += value
            source["n"] += len(gt)
            count += len(gt)
    finally:
        sam.train(was_training)
    result = {k: v / max(count, 1) for k, v in sums.items()} | {"val_masks": float(count)}
    for name, source in sorted(per_source.items()):
        n = source.pop("n")
        result |= {f"{key}/{name}": value / max(n, 1.0) for key, value in source.items()}
        result[f"val_masks/{name}"] = n
    return result
