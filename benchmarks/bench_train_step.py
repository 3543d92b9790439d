"""Where a training step of segany_tiny spends its time on this machine (no reference: the
official package has no training code).

Prints, as medians of a few repeats: the image encoder forward+backward for one 512 px image,
the mask decoder forward+backward per mask (3 outputs, 64x64 embedding, 256x256 low-res), and
one full ``SamTrainStep`` on a synthetic image with the given episode settings, in fp32 and
(optionally) under bf16 autocast. docs/training.md uses these figures to size the CPU config.

    python benchmarks/bench_train_step.py --threads 1
    python benchmarks/bench_train_step.py --threads 1 --bf16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from segany.data.dataset import TrainSample
from segany.modeling.registry import build_model
from segany.train.loop import SamTrainStep
from segany.train.losses import LossConfig
from segany.train.prompts import PromptConfig


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--masks", type=int, default=4, help="masks per image in the full step")
    ap.add_argument("--point-iters", type=int, default=2, help="prompts.num_point_iters of the full step")
    ap.add_argument("--bf16", action="store_true", help="also time the full step under bf16 autocast")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sam = build_model("segany_tiny").train()
    side = sam.img_size
    x = torch.randn(1, 3, side, side)

    def encoder() -> None:
        sam.image_encoder(x).sum().backward()

    emb = torch.randn(1, 256, 64, 64, requires_grad=True)
    pe = sam.prompt_encoder.get_dense_pe()

    def decoder(m: int) -> None:
        sparse = torch.randn(m, 2, 256, requires_grad=True)
        dense = torch.randn(m, 256, 64, 64)
        low, iou = sam.mask_decoder(emb, pe, sparse, dense, multimask_output=True)
        (low.sum() + iou.sum()).backward()

    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(args.masks, side, side, dtype=torch.bool)
    for k in range(args.masks):
        y0, x0 = (int(v) for v in torch.randint(0, side // 2, (2,), generator=g))
        masks[k, y0 : y0 + side // 4, x0 : x0 + side // 3] = True
    sample = TrainSample(torch.rand(3, side, side) * 255, masks, (side, side), "synthetic")
    step = SamTrainStep(sam, PromptConfig(num_point_iters=args.point_iters), LossConfig())

    def full(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = step([sample], torch.Generator().manual_seed(1))
        out["loss"].backward()

    iters = 1 + args.point_iters + 2
    print(f"segany_tiny ({side} px), {args.threads} thread(s), medians of {args.repeats}")
    print(f"encoder forward+backward, 1 image      {median_seconds(encoder, args.repeats):8.2f} s")
    per_mask = median_seconds(lambda: decoder(4), args.repeats) / 4
    print(f"decoder forward+backward, per mask     {per_mask:8.3f} s")
    print(f"full step, {args.masks} masks x {iters} iterations, fp32 {median_seconds(lambda: full(False), args.repeats):8.2f} s")
    if args.bf16:
        print(f"same step under bf16 autocast          {median_seconds(lambda: full(True), 1):8.2f} s")


if __name__ == "__main__":
    main()
