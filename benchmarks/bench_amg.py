"""Automatic mask generation: segany vs the official package, same weights, same photo.

Each side runs in its own subprocess (so peak RSS is its own), builds the same ViT-B with
the same random weights (no pretrained weights can be downloaded here), runs ``generate``
once and reports wall time and peak RSS; the parent prints both, the ratios, and checks the
outputs agree (every mask matched at IoU >= 0.99 with predicted_iou/stability within 1e-4).

Random weights give random predicted IoUs, so the thresholds are lowered to keep a
realistic share of the masks (the counts at each stage are printed).

    python benchmarks/bench_amg.py                 # quick: 8x8 grid, 600x900 photo
    python benchmarks/bench_amg.py --mode full     # official defaults: 32x32 grid, 1200x1800
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT.parent / "shared" / "data" / "coco_tiny" / "train2017" / "000000008193.jpg"
VIT_B = dict(depth=12, embed_dim=768, heads=12, global_attn=(2, 5, 8, 11))


def _child(args: argparse.Namespace) -> None:
    """Run one side and write its timing, memory and masks to ``args.result``."""
    import resource

    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    with Image.open(args.image) as im:
        image = np.asarray(im.convert("RGB").resize((args.width, args.height), Image.BILINEAR)).copy()
    state = load_file(args.weights)
    kwargs = dict(
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        crop_n_layers=args.crop_n_layers,
        output_mode="uncompressed_rle",
    )
    if args.child == "reference":
        sys.path.insert(0, str(ROOT / "tests"))
        from reference import reference_sam

        model, pkg = reference_sam(
            depth=VIT_B["depth"], global_attn=VIT_B["global_attn"], embed_dim=VIT_B["embed_dim"], heads=VIT_B["heads"]
        )
        model.load_state_dict(state)
        generator = pkg.SamAutomaticMaskGenerator(model.eval(), **kwargs)
    else:
        from segany import SamAutomaticMaskGenerator, build_model

        model = build_model("vit_b")
        model.load_state_dict(state)
        generator = SamAutomaticMaskGenerator(model.eval(), **kwargs)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    with torch.no_grad():
        records = generator.generate(image)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(args.result, "wb") as f:
        pickle.dump({"seconds": seconds, "peak_mb": peak, "before_mb": rss_before, "records": records}, f)


def _run_side(side: str, args: argparse.Namespace, weights: Path, tmp: Path) -> dict:
    result = tmp / f"{side}.pkl"
    cmd = [
        sys.executable, __file__, "--child", side, "--result", str(result), "--weights", str(weights),
        "--image", str(args.image), "--width", str(args.width), "--height", str(args.height),
        "--points-per-side", str(args.points_per_side), "--pred-iou-thresh", str(args.pred_iou_thresh),
        "--stability-score-thresh", str(args.stability_score_thresh), "--crop-n-layers", str(args.crop_n_layers),
        "--threads", str(args.threads),
    ]  # fmt: skip
    env = {"PYTHONPATH": str(ROOT / "tests" / "stubs") if side == "reference" else "", "PYTHONWARNINGS": "ignore"}
    import os

    subprocess.run(cmd, check=True, env={**os.environ, **env})
    with open(result, "rb") as f:
        return pickle.load(f)


def _compare(ref: list[dict], ours: list[dict]) -> str:
    import numpy as np
    import torch

    from segany.masks import mask_iou, rle_to_mask

    if not ref or not ours:
        return f"reference {len(ref)} masks, segany {len(ours)} masks"
    rm = torch.from_numpy(np.stack([rle_to_mask(r["segmentation"]) for r in ref]))
    om = torch.from_numpy(np.stack([rle_to_mask(r["segmentation"]) for r in ours]))
    iou = mask_iou(rm, om).numpy()

    def ok(a: dict, b: dict, m: float) -> bool:
        return (
            m >= 0.99
            and abs(a["predicted_iou"] - b["predicted_iou"]) <= 1e-4
            and abs(a["stability_score"] - b["stability_score"]) <= 1e-4
        )

    miss_r = sum(not any(ok(a, b, iou[i, j]) for j, b in enumerate(ours)) for i, a in enumerate(ref))
    miss_o = sum(not any(ok(a, b, iou[i, j]) for i, a in enumerate(ref)) for j, b in enumerate(ours))
    return f"reference {len(ref)} masks, segany {len(ours)}; unmatched: {miss_r} reference, {miss_o} segany"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["quick", "full"], default="quick")
    p.add_argument("--image", type=Path, default=PHOTO, help="photo (resized to --width x --height)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--points-per-side", type=int, default=None)
    p.add_argument("--pred-iou-thresh", type=float, default=0.5)
    p.add_argument("--stability-score-thresh", type=float, default=0.5)
    p.add_argument("--crop-n-layers", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=["reference", "segany"], default=None, help="run one side only")
    p.add_argument("--child", choices=["reference", "segany"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--weights", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    full = args.mode == "full"
    args.width = args.width or (1800 if full else 900)
    args.height = args.height or (1200 if full else 600)
    args.points_per_side = args.points_per_side or (32 if full else 8)
    if args.child:
        _child(args)
        return

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "tests" / "stubs"))
    from safetensors.torch import save_file

    from reference import random_state_dict, reference_sam

    ref_model, _ = reference_sam(
        depth=VIT_B["depth"], global_attn=VIT_B["global_attn"], embed_dim=VIT_B["embed_dim"], heads=VIT_B["heads"]
    )
    state = {k: v.contiguous() for k, v in random_state_dict(ref_model, seed=0).items()}
    del ref_model
    print(
        f"vit_b (random weights), {args.points_per_side}x{args.points_per_side} grid, crop_n_layers={args.crop_n_layers}, "
        f"{args.width}x{args.height} photo {args.image.name}, pred_iou_thresh={args.pred_iou_thresh}, "
        f"stability_score_thresh={args.stability_score_thresh}, {args.threads} threads",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        weights = tmp / "weights.safetensors"
        save_file(state, str(weights))
        results = {}
        for side in ("segany", "reference"):
            if args.only and side != args.only:
                continue
            results[side] = _run_side(side, args, weights, tmp)
            r = results[side]
            print(
                f"{side:9s}: {r['seconds']:8.1f} s  peak RSS {r['peak_mb']:7.0f} MB "
                f"(after loading the model {r['before_mb']:.0f} MB)  {len(r['records'])} masks",
                flush=True,
            )
    if len(results) == 2:
        s, r = results["segany"], results["reference"]
        print(f"speed-up: {r['seconds'] / s['seconds']:.1f}x   peak memory: {s['peak_mb'] / r['peak_mb']:.2f} of the reference")
        print("outputs:", _compare(r["records"], s["records"]))
        summary = {
            "mode": args.mode,
            "segany_s": round(s["seconds"], 2),
            "reference_s": round(r["seconds"], 2),
            "speedup": round(r["seconds"] / s["seconds"], 2),
            "segany_peak_mb": round(s["peak_mb"]),
            "reference_peak_mb": round(r["peak_mb"]),
        }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
