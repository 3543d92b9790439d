"""Options and helpers shared by sub-commands (model selection, output paths)."""

from __future__ import annotations

import argparse
import sys

import torch

from ..modeling import Sam


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--model-type/--checkpoint/--device, as every model-using command takes them."""
    parser.add_argument(
        "--model-type",
        default=None,
        help="vit_h, vit_l, vit_b, segany_tiny, or 'auto' (read from the checkpoint). "
        "Default: the embedded segany model when no --checkpoint is given, else auto.",
    )
    parser.add_argument("--checkpoint", default=None, help="official sam_vit_*.pth, segany .safetensors, or HF weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def load_model_from_args(args: argparse.Namespace) -> Sam:
    """Build the model the user asked for; the embedded default when nothing is given."""
    from ..default_model import load_default_model
    from ..modeling.registry import build_model

    if args.checkpoint is None and args.model_type in (None, "default_segany"):
        model = load_default_model(args.device, warn=False)
        if not getattr(model, "is_trained", False):
            print(
                "note: using a RANDOMLY INITIALISED segany_tiny model (no trained default weights "
                "are shipped yet); masks are meaningless. Pass --checkpoint for real results.",
                file=sys.stderr,
            )
        return model
    model = build_model(args.model_type or "auto", args.checkpoint)
    return model.to(args.device).eval()
