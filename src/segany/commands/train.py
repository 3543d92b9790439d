"""``segany train CONFIG.yaml [--resume]``: train or fine-tune a model (appendix A recipe).

Under ``torchrun --nproc-per-node N -m segany.cli train CONFIG.yaml`` it trains with DDP.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune SAM with the paper's recipe",
        description="Train a model from a YAML config (see segany/configs/*.yaml and docs/training.md). "
        "Writes OUT_DIR/checkpoint.pt (resumable), OUT_DIR/model.safetensors and OUT_DIR/metrics.jsonl.",
    )
    p.add_argument("config", help="YAML training config")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint.pt")
    p.add_argument("--out-dir", default=None, help="override train.out_dir")
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML syntax), e.g. --set train.bf16=true; repeatable")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start a fresh run from these weights (overrides model.checkpoint)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.loop import train

    overrides = {}
    if args.out_dir is not None:
        overrides["out_dir"] = args.out_dir
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.max_minutes is not None:
        overrides["max_minutes"] = args.max_minutes
    from ..train.loop import TrainConfig

    config = TrainConfig.load(args.config, overrides=args.set)
    metrics = train(config, resume=args.resume, init_from=args.init_from, **overrides)
    if metrics:
        print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return 0
