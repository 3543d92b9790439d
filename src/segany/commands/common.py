"""Options and helpers shared by sub-commands (model selection, device/dtype, output paths)."""

from __future__ import annotations

import argparse
import sys

import torch

from ..modeling import Sam

DTYPES = ("float32", "float16", "bfloat16")


def add_model_args(parser: argparse.ArgumentParser, with_dtype: bool = True, with_compile: bool = True) -> None:
    """--model-type/--checkpoint/--device/--dtype/--compile, as every model-using command takes them.

    ``with_dtype=False`` is for a command that already has a ``--dtype`` of its own meaning
    (``export safetensors``: the storage type); :func:`load_model_from_args` applies it too.
    ``with_compile=False`` for commands that never run the model (the exports).
    """
    parser.add_argument(
        "--model-type",
        default=None,
        help="vit_h, vit_l, vit_b, segany_cnn, segany_tiny, or 'auto' (read from the checkpoint). "
        "Default: the embedded segany model when no --checkpoint is given, else auto.",
    )
    parser.add_argument("--checkpoint", default=None, help="official sam_vit_*.pth, segany .safetensors, or HF weights")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)",
    )
    if with_dtype:
        parser.add_argument(
            "--dtype",
            choices=DTYPES,
            default="float32",
            help="parameter type the model runs in (default float32; bfloat16/float16 halve the memory, "
            "and are meant for GPUs)",
        )
    if with_compile:
        parser.add_argument(
            "--compile",
            action="store_true",
            help="torch.compile the image encoder (meant for GPUs: the first image pays tens of seconds of "
            "compilation; results differ from eager mode by float rounding)",
        )


def parse_device(text: str) -> torch.device:
    """Check a ``--device`` string before anything is loaded onto it.

    Why: ``torch.device("gpu")`` raises a RuntimeError with a multi-line message, and
    ``model.to("cuda")`` on a machine without CUDA an ``AssertionError`` traceback; the user
    should instead read which device they asked for and what this machine has.
    """
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {text!r} is not a device (expected cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {text}: MPS is not available on this machine (use --device cpu)")
    elif device.type != "cpu":
        raise ValueError(f"--device {text!r}: only cpu, cuda[:N] and mps are supported")
    return device


def parse_dtype(text: str | None) -> torch.dtype:
    """``--dtype`` name -> torch dtype (float32 when the command has no such option)."""
    if text is None:
        return torch.float32
    if text not in DTYPES:
        raise ValueError(f"--dtype {text!r} is not one of {', '.join(DTYPES)}")
    return getattr(torch, text)


def load_model_from_args(args: argparse.Namespace) -> Sam:
    """Build the model the user asked for (the embedded default when nothing is given), on
    ``--device`` in ``--dtype``.

    Device and dtype are checked first, so a typo costs nothing; ``args.device`` is left as
    the normalised device string for callers that read it afterwards.
    """
    from ..default_model import load_default_model
    from ..modeling.registry import build_model

    device = parse_device(str(args.device))
    dtype = parse_dtype(getattr(args, "dtype", None))
    args.device = str(device)
    if args.checkpoint is None and args.model_type in (None, "default_segany"):
        model = load_default_model("cpu", warn=False)
        if not getattr(model, "is_trained", False):
            print(
                "note: using a RANDOMLY INITIALISED segany_cnn model (no trained default weights "
                "are shipped yet); masks are meaningless. Pass --checkpoint for real results.",
                file=sys.stderr,
            )
    else:
        model = build_model(args.model_type or "auto", args.checkpoint)
    model = model.to(device=device, dtype=dtype).eval()
    if getattr(args, "compile", False):
        from ..modeling.compile import compile_image_encoder

        compile_image_encoder(model)
    return model
