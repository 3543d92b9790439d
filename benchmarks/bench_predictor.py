"""segany vs the official segment-anything SamPredictor, same weights, same image, one run.

Prints set_image seconds (full ViT-B) and predict milliseconds (one point multimask; one
box single-mask; 2 points with the previous mask fed back) as medians, and the ratios. Also
checks the outputs agree.

    python benchmarks/bench_predictor.py                 # real photo from ../shared/data
    python benchmarks/bench_predictor.py --size 1200x1800 --repeats 50
    python benchmarks/bench_predictor.py --device cuda --half --compile   # a GPU: + bf16 and compiled rows

On CUDA every timed call ends with ``torch.cuda.synchronize()`` (``set_image`` returns before
the encoder's kernels finish). ``--half`` adds segany with the model in bfloat16 (decoder in
float32, the predictor's default for half models) and ``--compile`` segany with
``torch.compile`` on the encoder (bf16 too when ``--half``); their rows compare with the
float32 reference and report how far their masks are from it (these change results: opt-in).

The official package is the reference oracle only; it is imported from the test tree with
the torchvision stand-in. Both use the same torch thread count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from reference import random_state_dict, reference_sam  # noqa: E402
from segany import SamPredictor, build_model  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def load_photo(size: str | None) -> tuple[np.ndarray, str]:
    files = sorted((DATA / "coco_tiny" / "train2017").glob("*.jpg"))
    if files:
        path = files[0]
        im = Image.open(path).convert("RGB")
        name = path.name
    else:
        yy, xx = np.mgrid[0:480, 0:640]
        im = Image.fromarray(np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8))
        name = "synthetic"
    if size:
        h, w = (int(v) for v in size.lower().split("x"))
        im = im.resize((w, h), Image.BILINEAR)
        name += f" resized to {h}x{w}"
    return np.asarray(im), name


def timed(fn, repeats: int, warmup: int = 2, clock=time.perf_counter) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = clock()
        fn()
        out.append(clock() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default=None, help="resize the photo to HxW, e.g. 1200x1800")
    ap.add_argument("--repeats", type=int, default=30, help="predict calls per case (median reported)")
    ap.add_argument("--set-image-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--half", action="store_true", help="also time segany with the model in bfloat16")
    ap.add_argument("--compile", action="store_true", help="also time segany with a compiled encoder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    image, name = load_photo(args.size)
    h, w = image.shape[:2]
    ref_model, ref_pkg = reference_sam(depth=12, global_attn=(2, 5, 8, 11))
    state = random_state_dict(ref_model, seed=0)
    ref_model.load_state_dict(state)
    ours_model = build_model("vit_b")
    ours_model.load_state_dict(state)
    ref = ref_pkg.SamPredictor(ref_model.to(device))
    ours = SamPredictor(ours_model.to(device))
    extra: dict[str, SamPredictor] = {}
    if args.half:
        half = build_model("vit_b")
        half.load_state_dict(state)
        extra["segany bf16"] = SamPredictor(half.to(device, torch.bfloat16))
    if args.compile:
        from segany.modeling.compile import compile_image_encoder

        comp = build_model("vit_b")
        comp.load_state_dict(state)
        comp = comp.to(device, torch.bfloat16) if args.half else comp.to(device)
        label = "segany compiled" + (" bf16" if args.half else "")
        extra[label] = SamPredictor(compile_image_encoder(comp))
        t0 = time.perf_counter()
        extra[label].set_image(image)
        sync()
        print(f"{label}: first set_image (compiles) {time.perf_counter() - t0:.1f} s")

    where = f"device: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else f"threads: {args.threads}"
    print(f"image: {name} ({h}x{w}); model: ViT-B (random weights, identical in both); {where}")
    rows = []
    # Interleave the two implementations so background load hits both alike. Wall-clock
    # medians are what the user sees; process CPU time (all threads) is also reported
    # because it is far less sensitive to other processes competing for the cores.
    walls: dict[str, list[float]] = {"ref": [], "ours": []}
    cpus: dict[str, list[float]] = {"ref": [], "ours": []}
    for _ in range(args.set_image_repeats):
        for key, pred in (("ref", ref), ("ours", ours)):
            w0, c0 = time.perf_counter(), time.process_time()
            pred.set_image(image)
            sync()
            walls[key].append(time.perf_counter() - w0)
            cpus[key].append(time.process_time() - c0)
    rows.append(("set_image (s)", walls, cpus, 1.0))
    emb_diff = float((ref.features - ours.features).abs().max())

    # a refinement click as the paper's interactive protocol makes it: the previous mask's
    # low-res logits fed back with a second point
    _, scores, previous = ref.predict(point_coords=np.array([[w * 0.5, h * 0.5]]), point_labels=np.array([1]))
    cases = {
        "predict 1 point, multimask (ms)": dict(point_coords=np.array([[w * 0.5, h * 0.5]]), point_labels=np.array([1])),
        "predict box, single mask (ms)": dict(box=np.array([w * 0.2, h * 0.2, w * 0.8, h * 0.9]), multimask_output=False),
        "predict 2 points + mask_input (ms)": dict(
            point_coords=np.array([[w * 0.5, h * 0.5], [w * 0.3, h * 0.3]]), point_labels=np.array([1, 0]),
            mask_input=previous[int(np.argmax(scores))][None], multimask_output=False,
        ),
    }
    max_diff = {}
    for label, kw in cases.items():
        walls = {"ref": [], "ours": []}
        cpus = {"ref": [], "ours": []}
        for _ in range(max(1, args.repeats // 10)):
            for key, pred in (("ref", ref), ("ours", ours)):
                walls[key] += timed(lambda pred=pred, kw=kw: pred.predict(**kw), 10)
                cpus[key] += timed(lambda pred=pred, kw=kw: pred.predict(**kw), 10, warmup=0, clock=time.process_time)
        rows.append((label, walls, cpus, 1000.0))
        r = ref.predict(**kw, return_logits=True)
        o = ours.predict(**kw, return_logits=True)
        max_diff[label] = max(float(np.abs(a - b).max()) for a, b in zip(r, o))

    extra_rows = []
    for label, pred in extra.items():
        pred.set_image(image)  # warm-up
        sync()
        t_set = timed(lambda pred=pred: (pred.set_image(image), sync()), args.set_image_repeats, warmup=1)
        kw = cases["predict 1 point, multimask (ms)"]
        t_pred = timed(lambda pred=pred, kw=kw: pred.predict(**kw), args.repeats)
        rm, _, _ = ref.predict(**kw)
        om, _, _ = pred.predict(**kw)
        inter = np.logical_and(rm, om).sum((1, 2))
        union = np.maximum(np.logical_or(rm, om).sum((1, 2)), 1)
        extra_rows.append((label, statistics.median(t_set), statistics.median(t_pred), float((inter / union).min())))

    print(f"{'':34s} {'reference':>10s} {'segany':>10s} {'speed-up':>9s} | {'CPU ref':>9s} {'CPU segany':>10s} {'CPU ratio':>9s}")
    for label, wl, cp, scale in rows:
        rw, ow = statistics.median(wl["ref"]), statistics.median(wl["ours"])
        rc, oc = statistics.median(cp["ref"]), statistics.median(cp["ours"])
        print(
            f"{label:34s} {rw * scale:10.3f} {ow * scale:10.3f} {rw / ow:8.2f}x | "
            f"{rc * scale:9.3f} {oc * scale:10.3f} {rc / oc:8.2f}x"
        )
    print(f"(medians over {args.set_image_repeats} set_image and {args.repeats} predict calls each; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    ref_set = statistics.median(rows[0][1]["ref"])
    ref_pred = statistics.median(rows[1][1]["ref"])
    for label, t_set, t_pred, iou in extra_rows:
        print(f"{label}: set_image {t_set:.4f} s ({ref_set / t_set:.2f}x the float32 reference), predict 1 point "
              f"{t_pred * 1000:.2f} ms ({ref_pred / t_pred:.2f}x); its 3 masks vs the reference's: min IoU {iou:.4f}")
    print(f"max |diff| image embedding: {emb_diff:.2e}")
    for label, d in max_diff.items():
        print(f"max |diff| {label.split(' (')[0]} (logits, scores, low-res): {d:.2e}")


if __name__ == "__main__":
    main()
