"""Automatic mask generation: segany vs the official package, same weights, same photos.

Each side runs in its own subprocess (so peak RSS is its own), runs ``generate`` once per
photo and setting and reports wall and CPU time, peak RSS and how many masks each stage kept; the
parent prints both, the ratios, and checks the outputs agree (every mask matched at
IoU >= 0.99 with predicted_iou/stability within 1e-4, both ways).

Two models:

- ``--model default``: the shipped trained default model (``segany.default_model``). The
  official ``Sam`` is given segany's image-encoder module and official prompt encoder /
  mask decoder modules built with the default model's dimensions and loaded with the same
  weights (its pre/post-processing reads ``image_encoder.img_size`` and the pixel mean/std,
  checked equal to segany's). Official thresholds (pred_iou 0.88, stability 0.95, box NMS
  0.7) and the paper's settings (32x32 grid; crops off and ``crop_n_layers=1``) on native
  coco_tiny val2017 photos, read in place.
- ``--model random-vit-b`` (the default): ViT-B with the same random weights on both sides
  (no pretrained weights can be downloaded here), a photo resized to --width x --height.
  Random predicted IoUs, so the thresholds are lowered to keep a realistic share of masks.

Stage counts of the official generator come from counting wrappers installed around its
module functions in the child process (the package itself is not modified); segany's from
``SamAutomaticMaskGenerator.stage_counts``.

    python benchmarks/bench_amg.py                        # random ViT-B, 8x8 grid, 600x900
    python benchmarks/bench_amg.py --mode full            # random ViT-B, 32x32, 1200x1800
    python benchmarks/bench_amg.py --model default        # 3 photos x {crops off, crop_n_layers=1}
    nice -n 15 python benchmarks/bench_amg.py --model default --photos 1 --crops off --threads 1
    python benchmarks/bench_amg.py --model default --photos 1 --crops off --threads 1 --profile
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "coco_tiny"
PHOTO = DATA / "train2017" / "000000008193.jpg"
VAL_PHOTOS = DATA / "val2017"
VIT_B = dict(depth=12, embed_dim=768, heads=12, global_attn=(2, 5, 8, 11))
STAGES = ("candidates", "iou", "stability", "edge", "box_nms", "crop_nms", "final")


# ---------------------------------------------------------------------- child: one side


def _reference_twin_of_default(model: Any) -> Any:
    """The official ``Sam`` around segany's image encoder, with official prompt encoder and
    mask decoder of the default model's dimensions loaded with the same weights."""
    sys.path.insert(0, str(ROOT / "tests"))
    from reference import import_reference

    import_reference()
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    pe, dec = model.prompt_encoder, model.mask_decoder
    tr = dec.transformer
    ref_pe = PromptEncoder(
        embed_dim=pe.embed_dim,
        image_embedding_size=tuple(pe.image_embedding_size),
        input_image_size=tuple(pe.input_image_size),
        mask_in_chans=pe.mask_downscaling[3].out_channels,
    )
    ref_dec = MaskDecoder(
        num_multimask_outputs=dec.num_multimask_outputs,
        transformer=TwoWayTransformer(
            depth=tr.depth, embedding_dim=tr.embedding_dim, mlp_dim=tr.mlp_dim, num_heads=tr.num_heads
        ),
        transformer_dim=dec.transformer_dim,
        iou_head_depth=len(dec.iou_prediction_head.layers),
        iou_head_hidden_dim=dec.iou_prediction_head.layers[0].out_features,
    )
    ref_pe.load_state_dict(
        {k[len("prompt_encoder.") :]: v for k, v in model.state_dict().items() if k.startswith("prompt_encoder.")}
    )
    ref_dec.load_state_dict(
        {k[len("mask_decoder.") :]: v for k, v in model.state_dict().items() if k.startswith("mask_decoder.")}
    )
    ref = Sam(
        image_encoder=model.image_encoder,
        prompt_encoder=ref_pe,
        mask_decoder=ref_dec,
        pixel_mean=model.pixel_mean.flatten().tolist(),
        pixel_std=model.pixel_std.flatten().tolist(),
    ).eval()
    assert ref.image_encoder.img_size == model.img_size == pe.input_image_size[0]
    assert ref.pixel_mean.equal(model.pixel_mean) and ref.pixel_std.equal(model.pixel_std)
    assert ref.mask_threshold == model.mask_threshold
    return ref


def _count_reference_stages(generator: Any, counts: dict[str, int]) -> None:
    """Install counting wrappers around the functions the official generator calls, in its
    module's namespace (this process only): each wrapper counts the masks it sees."""
    import segment_anything.automatic_mask_generator as amg

    phase = {"batch": False, "crop": False, "generate": False}

    def wrap_method(name: str, flag: str) -> None:
        original = getattr(generator, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            phase[flag] = True
            try:
                return original(*args, **kwargs)
            finally:
                phase[flag] = False

        setattr(generator, name, wrapped)

    wrap_method("_process_batch", "batch")
    wrap_method("_process_crop", "crop")
    wrap_method("_generate_masks", "generate")  # crops, then NMS across crops
    predict_torch = generator.predictor.predict_torch

    def counted_predict(*args: Any, **kwargs: Any) -> Any:
        out = predict_torch(*args, **kwargs)
        counts["candidates"] += out[1].numel()
        return out

    generator.predictor.predict_torch = counted_predict
    stability, to_box, near_edge, nms = (
        amg.calculate_stability_score, amg.batched_mask_to_box, amg.is_box_near_crop_edge, amg.batched_nms
    )  # fmt: skip

    def counted_stability(masks: Any, *args: Any) -> Any:
        counts["iou"] += len(masks)  # called on the masks kept by the IoU filter
        return stability(masks, *args)

    def counted_to_box(masks: Any) -> Any:
        if phase["batch"]:
            counts["stability"] += len(masks)  # called on the masks kept by the stability filter
        return to_box(masks)

    def counted_near_edge(*args: Any, **kwargs: Any) -> Any:
        near = near_edge(*args, **kwargs)
        counts["edge"] += int((~near).sum())
        return near

    def counted_nms(*args: Any, **kwargs: Any) -> Any:
        keep = nms(*args, **kwargs)
        if phase["crop"]:
            counts["box_nms"] += len(keep)
        elif phase["generate"]:  # NMS across crops (the small-region cleanup's comes later)
            counts["crop_nms"] = len(keep)
        return keep

    amg.calculate_stability_score = counted_stability
    amg.batched_mask_to_box = counted_to_box
    amg.is_box_near_crop_edge = counted_near_edge
    amg.batched_nms = counted_nms
    counts["crop_nms"] = -1  # stays -1 with one crop (no NMS across crops)


def _load_image(args: argparse.Namespace) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(args.image) as im:
        im = im.convert("RGB")
        if args.model == "random-vit-b":
            im = im.resize((args.width, args.height), Image.BILINEAR)
        return np.asarray(im).copy()


def _child(args: argparse.Namespace) -> None:
    """Run one side and write its timing, memory, stage counts and masks to ``args.result``."""
    import resource

    import torch

    torch.set_num_threads(args.threads)
    image = _load_image(args)
    kwargs = dict(
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        stability_score_offset=args.stability_score_offset,
        box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers,
        output_mode="uncompressed_rle",
    )
    counts = dict.fromkeys(STAGES, 0)
    if args.model == "default":
        from segany.default_model import load_default_model

        model = load_default_model(warn=False)
        if not model.is_trained:
            raise SystemExit("bench_amg: no trained default weights are shipped (segany/weights/)")
    else:
        from safetensors.torch import load_file

        state = load_file(args.weights)
    if args.child == "reference":
        sys.path.insert(0, str(ROOT / "tests"))
        from reference import import_reference, reference_sam

        pkg = import_reference()
        if args.model == "default":
            ref_model = _reference_twin_of_default(model)
        else:
            ref_model, _ = reference_sam(
                depth=VIT_B["depth"],
                global_attn=VIT_B["global_attn"],
                embed_dim=VIT_B["embed_dim"],
                heads=VIT_B["heads"],
            )
            ref_model.load_state_dict(state)
        generator = pkg.SamAutomaticMaskGenerator(ref_model.eval(), **kwargs)
        _count_reference_stages(generator, counts)
    else:
        from segany import SamAutomaticMaskGenerator, build_model

        if args.model != "default":
            model = build_model("vit_b")
            model.load_state_dict(state)
        generator = SamAutomaticMaskGenerator(model.eval(), **kwargs)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.no_grad():
        records = generator.generate(image)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start  # all threads; far less sensitive to other jobs
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.child == "segany":
        counts = dict(generator.stage_counts)  # also "upsampled": after the low-res stability bound
    else:
        if counts["crop_nms"] < 0:  # one crop: no NMS across crops
            counts["crop_nms"] = counts["box_nms"]
        counts["final"] = len(records)
    with open(args.result, "wb") as f:
        pickle.dump(
            {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mb": peak, "before_mb": rss_before,
             "records": records, "counts": counts}, f
        )


# Functions whose cumulative time --profile reports: (file, function, label).
PROFILE_PARTS = (
    ("predictor.py", "set_image", "image encoder (set_image)"),
    ("decoder_cache.py", "build", "per-image decoder cache"),
    ("cached_decoder.py", "transformer_layers", "decoder transformer layers, every point"),
    ("cached_decoder.py", "final_tokens", "final attention (IoU token; survivors: all)"),
    ("mask_decoder.py", "predict_iou", "IoU head"),
    ("cached_decoder.py", "cached_masks", "mask upscaling + hypernetworks (IoU survivors)"),
    ("stability_bound.py", "may_pass_stability", "low-res stability bound"),
    ("sam.py", "postprocess_masks", "full-resolution upsampling"),
    ("filters.py", "stability_score", "stability score"),
    ("masks.py", "mask_to_rle", "RLE"),
    ("filters.py", "nms", "NMS"),
)


def _profile(args: argparse.Namespace, images: list[Path], layers: list[int]) -> None:
    """cProfile segany's ``generate`` in this process and print where the time goes."""
    import cProfile
    import pstats

    import torch

    from segany import SamAutomaticMaskGenerator, build_model

    torch.set_num_threads(args.threads)
    if args.model == "default":
        from segany.default_model import load_default_model

        model = load_default_model(warn=False)
    else:
        model = build_model("vit_b")  # random init: the time does not depend on the weights
    for image_path in images:
        args.image = image_path
        image = _load_image(args)
        for n_layers in layers:
            generator = SamAutomaticMaskGenerator(
                model,
                points_per_side=args.points_per_side,
                pred_iou_thresh=args.pred_iou_thresh,
                stability_score_thresh=args.stability_score_thresh,
                stability_score_offset=args.stability_score_offset,
                box_nms_thresh=args.box_nms_thresh,
                crop_n_layers=n_layers,
                output_mode="uncompressed_rle",
                batch_threads=1,  # cProfile sees the calling thread only
            )
            prof = cProfile.Profile()
            with torch.no_grad():
                prof.enable()
                generator.generate(image)
                prof.disable()
            stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
            cum = {(Path(k[0]).name, k[2]): (v[1], v[3]) for k, v in stats.items()}
            total = cum[("generator.py", "generate")][1]
            print(f"{image_path.name} crop_n_layers={n_layers}: {total:.2f} s under cProfile; {generator.stage_counts}")
            for file, func, label in PROFILE_PARTS:
                calls, seconds = cum.get((file, func), (0, 0.0))
                print(f"  {label:48s} {seconds:7.2f} s {100 * seconds / total:5.1f}%  ({calls} calls)")


# ---------------------------------------------------------------------- parent


def _run_side(
    side: str, args: argparse.Namespace, image: Path, crop_n_layers: int, weights: Path | None, tmp: Path
) -> dict:
    result = tmp / f"{side}.pkl"
    cmd = [
        sys.executable, __file__, "--child", side, "--result", str(result), "--model", args.model,
        "--image", str(image), "--width", str(args.width), "--height", str(args.height),
        "--points-per-side", str(args.points_per_side), "--pred-iou-thresh", str(args.pred_iou_thresh),
        "--stability-score-thresh", str(args.stability_score_thresh), "--box-nms-thresh", str(args.box_nms_thresh),
        "--stability-score-offset", str(args.stability_score_offset),
        "--crop-n-layers", str(crop_n_layers), "--threads", str(args.threads),
    ]  # fmt: skip
    if weights is not None:
        cmd += ["--weights", str(weights)]
    env = {"PYTHONPATH": str(ROOT / "tests" / "stubs") if side == "reference" else "", "PYTHONWARNINGS": "ignore"}
    subprocess.run(cmd, check=True, env={**os.environ, **env})
    with open(result, "rb") as f:
        return pickle.load(f)


def _compare(ref: list[dict], ours: list[dict]) -> tuple[str, bool]:
    """One line on how the two outputs agree, and whether every mask matched both ways."""
    import numpy as np
    import torch

    from segany.masks import mask_iou, rle_to_mask

    if not ref or not ours:
        same = len(ref) == len(ours)
        return f"reference {len(ref)} masks, segany {len(ours)} masks", same
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
    line = f"reference {len(ref)} masks, segany {len(ours)}; unmatched: {miss_r} reference, {miss_o} segany"
    return line, miss_r == 0 and miss_o == 0 and len(ref) == len(ours)


def _random_weights(tmp: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "tests" / "stubs"))
    from safetensors.torch import save_file

    from reference import random_state_dict, reference_sam

    ref_model, _ = reference_sam(
        depth=VIT_B["depth"], global_attn=VIT_B["global_attn"], embed_dim=VIT_B["embed_dim"], heads=VIT_B["heads"]
    )
    state = {k: v.contiguous() for k, v in random_state_dict(ref_model, seed=0).items()}
    weights = tmp / "weights.safetensors"
    save_file(state, str(weights))
    return weights


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["random-vit-b", "default"], default="random-vit-b")
    p.add_argument("--mode", choices=["quick", "full"], default="quick", help="random-vit-b: grid and photo size")
    p.add_argument("--image", type=Path, default=None, help="photo (random-vit-b: resized to --width x --height)")
    p.add_argument("--photos", type=int, default=3, help="default model: the first N coco_tiny val2017 photos")
    p.add_argument("--crops", choices=["off", "on", "both"], default=None, help="crop_n_layers 0, 1 or both")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--points-per-side", type=int, default=None)
    p.add_argument("--pred-iou-thresh", type=float, default=None)
    p.add_argument("--stability-score-thresh", type=float, default=None)
    p.add_argument("--box-nms-thresh", type=float, default=0.7)
    p.add_argument("--stability-score-offset", type=float, default=1.0,
                   help="logit offset of the stability score (official 1.0; the default model's calibrated "
                   "preset: 0.25 with --pred-iou-thresh 0.37 --stability-score-thresh 0.75)")
    p.add_argument("--crop-n-layers", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=["reference", "segany"], default=None, help="run one side only")
    p.add_argument("--profile", action="store_true", help="cProfile segany's side in this process instead")
    p.add_argument("--child", choices=["reference", "segany"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--weights", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    default = args.model == "default"
    full = args.mode == "full"
    args.width = args.width or (1800 if full else 900)
    args.height = args.height or (1200 if full else 600)
    args.points_per_side = args.points_per_side or (32 if full or default else 8)
    if args.pred_iou_thresh is None:
        args.pred_iou_thresh = 0.88 if default else 0.5
    if args.stability_score_thresh is None:
        args.stability_score_thresh = 0.95 if default else 0.5
    if args.crops is None:
        args.crops = "both" if default else "off"
    if args.photos < 1:
        p.error("--photos must be >= 1")
    return args


def main() -> None:
    args = _parse()
    if args.child:
        _child(args)
        return
    if args.image is not None:
        images = [args.image]
    elif args.model == "default":
        images = sorted(VAL_PHOTOS.glob("*.jpg"))[: args.photos]
        if not images:
            raise SystemExit(f"bench_amg: no photos in {VAL_PHOTOS}")
    else:
        images = [PHOTO]
    layers = {"off": [0], "on": [1], "both": [0, 1]}[args.crops]
    if args.profile:
        _profile(args, images, layers)
        return
    what = "trained default model" if args.model == "default" else "vit_b (random weights)"
    size = "native size" if args.model == "default" else f"resized to {args.width}x{args.height}"
    print(
        f"{what}, {args.points_per_side}x{args.points_per_side} grid, crop_n_layers {layers}, "
        f"{len(images)} photo(s) ({size}), pred_iou_thresh={args.pred_iou_thresh}, "
        f"stability_score_thresh={args.stability_score_thresh} (offset {args.stability_score_offset}), "
        f"box_nms_thresh={args.box_nms_thresh}, "
        f"{args.threads} thread(s)",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        weights = _random_weights(tmp) if args.model == "random-vit-b" else None
        for image in images:
            for n_layers in layers:
                results = {}
                for side in ("segany", "reference"):
                    if args.only and side != args.only:
                        continue
                    results[side] = r = _run_side(side, args, image, n_layers, weights, tmp)
                    stages = " ".join(f"{k}={v}" for k, v in r["counts"].items())
                    print(
                        f"{image.name} crop_n_layers={n_layers} {side:9s}: {r['seconds']:8.1f} s "
                        f"(CPU {r['cpu_seconds']:.1f} s)  "
                        f"peak RSS {r['peak_mb']:6.0f} MB (model loaded: {r['before_mb']:.0f} MB)  {stages}",
                        flush=True,
                    )
                row: dict[str, Any] = {"photo": image.name, "crop_n_layers": n_layers}
                for side, r in results.items():
                    row[f"{side}_s"] = round(r["seconds"], 2)
                    row[f"{side}_cpu_s"] = round(r["cpu_seconds"], 2)
                    row[f"{side}_peak_mb"] = round(r["peak_mb"])
                    row[f"{side}_counts"] = r["counts"]
                if len(results) == 2:
                    s, r = results["segany"], results["reference"]
                    line, same = _compare(r["records"], s["records"])
                    same_counts = all(s["counts"][k] == r["counts"][k] for k in STAGES)
                    row["speedup"] = round(r["seconds"] / s["seconds"], 2)
                    row["cpu_speedup"] = round(r["cpu_seconds"] / s["cpu_seconds"], 2)
                    row["all_masks_match"] = same
                    print(
                        f"  speed-up {r['seconds'] / s['seconds']:.1f}x (CPU time "
                        f"{r['cpu_seconds'] / s['cpu_seconds']:.1f}x), peak memory {s['peak_mb'] / r['peak_mb']:.2f} "
                        f"of the reference, stage counts {'equal' if same_counts else 'DIFFER'}; {line}",
                        flush=True,
                    )
                rows.append(row)
    print(json.dumps({"model": args.model, "points_per_side": args.points_per_side, "runs": rows}))


if __name__ == "__main__":
    main()
