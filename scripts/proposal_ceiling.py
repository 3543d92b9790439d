"""Why is proposal AR low? The best IoU any generated proposal reaches for each ground-truth object.

AR averages recall over IoU thresholds 0.5-0.95, so an object whose best proposal stays under
0.5 IoU counts as missed whatever the ranking does. This prints, for one coco_tiny image, each
object's area and its best proposal's IoU, box and prompt point, plus the spread of the
generator's predicted IoU and stability scores (the ranking key of the ``proposals`` preset):
the ceiling the model itself sets, separated from selection and NMS.

    .venv/bin/python scripts/proposal_ceiling.py --image-id 5001 --points-per-side 16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from segany.automatic.generator import SamAutomaticMaskGenerator
from segany.automatic.presets import preset
from segany.default_model import load_default_model
from segany.eval import datasets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-id", default="5001", help="coco_tiny val image id")
    ap.add_argument("--points-per-side", type=int, default=16, help="grid of the proposals preset (paper: 64)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, images = datasets.resolve("coco_tiny")
    found = [im for im in images if im.image_id == args.image_id]
    if not found:
        raise SystemExit(f"image {args.image_id} is not in coco_tiny val")
    img, objs = found[0].image(), found[0].objects()
    gen = SamAutomaticMaskGenerator(
        load_default_model(warn=False), **preset("proposals", points_per_side=args.points_per_side),
        output_mode="binary_mask",
    )
    t = time.perf_counter()
    recs = gen.generate(img)
    print(f"image {args.image_id} {img.shape[1]}x{img.shape[0]}: {len(recs)} proposals in {time.perf_counter() - t:.1f} s")
    for key in ("predicted_iou", "stability_score"):
        v = np.array([r[key] for r in recs])
        print(f"{key}: min {v.min():.3f}  median {np.median(v):.3f}  max {v.max():.3f}")
    props = np.stack([r["segmentation"] for r in recs]).reshape(len(recs), -1).astype(np.float32)
    print("object  area  best IoU  best proposal's bbox (XYWH) and point")
    best = []
    for k, gt in enumerate(objs.masks):
        g = gt.reshape(-1).astype(np.float32)
        inter = props @ g
        iou = inter / np.maximum(props.sum(1) + g.sum() - inter, 1)
        j = int(iou.argmax())
        best.append(float(iou[j]))
        print(f"{k:6d} {int(g.sum()):6d}  {iou[j]:.3f}    {recs[j]['bbox']} {recs[j]['point_coords'][0]}")
    b = np.array(best)
    print(f"objects with a proposal at IoU >= 0.5: {(b >= 0.5).sum()} of {b.size}; mean best IoU {b.mean():.3f}")


if __name__ == "__main__":
    main()
