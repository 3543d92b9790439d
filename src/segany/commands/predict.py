"""``segany predict IMAGE --point X,Y[,LABEL] --box X0,Y0,X1,Y1 --out mask.png``.

Segments one image from prompts: writes the best mask (or all three with ``--all``) as
PNG, an overlay PNG showing image, mask(s) and prompts, and prints the scores as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .common import add_model_args, load_model_from_args


def _parse_point(text: str) -> tuple[float, float, int]:
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"--point must be X,Y or X,Y,LABEL, got {text!r}")
    try:
        x, y = float(parts[0]), float(parts[1])
        label = int(parts[2]) if len(parts) == 3 else 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"--point must be numbers X,Y[,LABEL], got {text!r}") from None
    return x, y, label


def _parse_box(text: str) -> tuple[float, float, float, float]:
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box must be numbers X0,Y0,X1,Y1, got {text!r}") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"--box must be X0,Y0,X1,Y1, got {text!r}")
    return values  # type: ignore[return-value]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment an image from point/box prompts", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="image file (any format Pillow reads)")
    p.add_argument("--point", action="append", type=_parse_point, default=[], metavar="X,Y[,LABEL]",
                   help="prompt point in pixels; LABEL 1 = foreground (default), 0 = background; repeatable")
    p.add_argument("--box", type=_parse_box, default=None, metavar="X0,Y0,X1,Y1", help="prompt box in pixels")
    p.add_argument("--out", default="mask.png", help="output mask PNG (default: mask.png)")
    p.add_argument("--overlay", default=None, help="overlay PNG path (default: <out>_overlay.png)")
    p.add_argument("--all", action="store_true", help="write all three multimask outputs (<out>_0.png ...)")
    p.add_argument("--single", action="store_true", help="ask for one mask instead of three (several prompts)")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..image_io import load_image
    from ..predictor import SamPredictor
    from ..visualize import save_overlay

    if not args.point and args.box is None:
        raise ValueError("give at least one --point X,Y[,LABEL] or a --box X0,Y0,X1,Y1")
    image = load_image(args.image)
    model = load_model_from_args(args)
    predictor = SamPredictor(model)
    t0 = time.perf_counter()
    predictor.set_image(image)
    t1 = time.perf_counter()
    coords = labels = None
    if args.point:
        coords = np.array([[x, y] for x, y, _ in args.point], dtype=float)
        labels = np.array([lab for _, _, lab in args.point])
    box = np.array(args.box, dtype=float) if args.box is not None else None
    masks, scores, _ = predictor.predict(
        point_coords=coords, point_labels=labels, box=box, multimask_output=not args.single
    )
    t2 = time.perf_counter()
    order = np.argsort(-scores)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if args.all:
        for rank, i in enumerate(order):
            path = out.with_name(f"{out.stem}_{rank}{out.suffix or '.png'}")
            _write_mask(masks[i], path)
            written.append(str(path))
    else:
        _write_mask(masks[order[0]], out)
        written.append(str(out))
    overlay = Path(args.overlay) if args.overlay else out.with_name(f"{out.stem}_overlay.png")
    shown = masks[order] if args.all else masks[order[:1]]
    save_overlay(image, shown, overlay, points=coords, labels=labels, box=box)
    result = {
        "image": str(args.image),
        "size": [int(image.shape[1]), int(image.shape[0])],
        "scores": [float(scores[i]) for i in order],
        "areas": [int(masks[i].sum()) for i in order],
        "masks": written,
        "overlay": str(overlay),
        "model_trained": bool(getattr(model, "is_trained", True)),
        "seconds": {"embedding": round(t1 - t0, 3), "decoder": round(t2 - t1, 4)},
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


def _write_mask(mask: np.ndarray, path: Path) -> None:
    """0/255 PNG, written to a temp file then renamed."""
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
    os.replace(tmp, path)
