"""Refit a model's IoU head on whole-image decodes of the train splits (everything else frozen).

Why and how: :mod:`segany.train.iou_head`. Two steps, so the slow one can run in shards
(one process per free core) and be resumed:

    # 1. samples (forward passes only): the held-out images, then train images in shards
    python scripts/refit_iou_head.py collect W.safetensors --split val --out runs/iou/val.pt
    python scripts/refit_iou_head.py collect W.safetensors --split train --images 500 --shard 0/2 --out runs/iou/train0.pt
    python scripts/refit_iou_head.py collect W.safetensors --split train --images 500 --shard 1/2 --out runs/iou/train1.pt
    # 2. fit on the train samples, report the held-out ones before/after, write the model
    python scripts/refit_iou_head.py fit W.safetensors --train runs/iou/train*.pt --val runs/iou/val.pt --out W_refit.safetensors

The data folders and held-out split are the training config's (``--config``), so the
held-out images are the ones ``segany train`` validates on and are never fitted on.
Samples record the weights they came from; ``fit`` refuses samples of other weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segany.atomic_files import atomic_path
from segany.modeling.build import build_model
from segany.modeling.checkpoint import read_checkpoint, save_checkpoint
from segany.modeling.fingerprint import sampled_weights_digest
from segany.train.iou_head import SAMPLE_MASKS, IoUSamples, collect_samples, fit_head, head_report
from segany.train.loop import TrainConfig
from segany.train.validation import whole_images

DEFAULT_CONFIG = "src/segany/configs/segany_cnn_cpu.yaml"


def _dataset(config_path: str, img_size: int, split: str):
    config = TrainConfig.load(config_path)
    return whole_images(config.data.root_list(), img_size, config.data.holdout_every, split, SAMPLE_MASKS)


def collect(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    sam = build_model("auto", args.weights).eval()
    ds = _dataset(args.config, sam.img_size, args.split)
    order = [int(i) for i in np.random.default_rng(args.seed).permutation(len(ds))]
    if args.images is not None:
        order = order[: args.images]
    k, n = (int(x) for x in args.shard.split("/"))
    if not 0 <= k < n:
        raise SystemExit(f"--shard {args.shard}: want K/N with 0 <= K < N")
    order = order[k::n]
    with tqdm(total=len(order), desc=f"IoU samples ({args.split} {args.shard})", unit="img") as bar:
        samples = collect_samples(sam, ds, order, seed=args.seed, progress=bar.update)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save({**samples.state(), "weights_digest": sampled_weights_digest(sam)}, tmp)
    print(f"{len(samples)} samples from {len(order)} images -> {out}")
    return 0


def _load_samples(paths: list[str], digest: str) -> IoUSamples:
    parts = []
    for p in paths:
        state = torch.load(p, weights_only=True)
        if state.pop("weights_digest") != digest:
            raise SystemExit(f"{p} was collected with other weights than the ones being refitted")
        parts.append(IoUSamples(**state))
    return IoUSamples.cat(parts)


def fit(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    sam = build_model("auto", args.weights).eval()
    digest = sampled_weights_digest(sam)
    train, val = _load_samples(args.train, digest), _load_samples([args.val], digest)
    head = sam.mask_decoder.iou_prediction_head
    before = {"train": head_report(head, train), "val": head_report(head, val)}
    fitted = fit_head(head, train, epochs=args.epochs, lr=args.lr, seed=args.seed)
    after = {"train": head_report(fitted, train), "val": head_report(fitted, val)}
    report = {"train_samples": len(train), "val_samples": len(val), "epochs": args.epochs, "lr": args.lr,
              "before": before, "after": after}
    print(json.dumps(report, indent=1))
    sam.mask_decoder.iou_prediction_head.load_state_dict(fitted.state_dict())
    _, meta = read_checkpoint(args.weights)
    meta = {k: v for k, v in meta.items() if k not in ("segany_config", "format")}
    meta["iou_head_refit"] = json.dumps(report)
    dtype = torch.float16 if args.dtype == "float16" else None
    save_checkpoint(sam, args.out, extra_meta=meta, dtype=dtype)
    print(f"-> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="decode train-split images, keep (IoU-token feature, actual IoUs)")
    c.add_argument("weights")
    c.add_argument("--split", choices=("train", "val"), default="train")
    c.add_argument("--images", type=int, default=None, help="at most this many images (a seeded random subset)")
    c.add_argument("--shard", default="0/1", help="K/N: every N-th of the chosen images, from the K-th")
    c.add_argument("--out", required=True)
    c.set_defaults(func=collect)
    f = sub.add_parser("fit", help="fit the IoU head to collected samples and write the model")
    f.add_argument("weights")
    f.add_argument("--train", nargs="+", required=True)
    f.add_argument("--val", required=True)
    f.add_argument("--epochs", type=int, default=40)
    f.add_argument("--lr", type=float, default=1e-4)
    f.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    f.add_argument("--out", required=True)
    f.set_defaults(func=fit)
    for p in (c, f):
        p.add_argument("--config", default=DEFAULT_CONFIG, help="training config: data folders and held-out split")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
