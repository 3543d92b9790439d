"""``segany predict IMAGE --point X,Y[,LABEL] --box X0,Y0,X1,Y1 --out mask.png``.

Segments one image from prompts: writes the best mask (or all three with ``--all``) as
PNG, an overlay PNG showing image, mask(s) and prompts, and prints the scores as JSON.

Outputs are checked before the model runs (an output naming the input image or another
output, an existing directory or an unwritable folder is refused), and the mask(s) and the
overlay are written together: all of them get their final names, or none does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from .common import add_model_args, load_model_from_args

# Most --point options accepted. Why a cap: the decoder's cost grows with the number of prompt
# tokens (100,000 points ran past 150 s); a click session never needs more than a few dozen.
MAX_POINTS = 1024


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
                   help="prompt point in pixels; LABEL 1 = foreground (default), 0 = background; repeatable "
                   f"(at most {MAX_POINTS})")
    p.add_argument("--box", type=_parse_box, default=None, metavar="X0,Y0,X1,Y1", help="prompt box in pixels")
    p.add_argument("--out", default="mask.png", help="output mask PNG (default: mask.png)")
    p.add_argument("--overlay", default=None, help="overlay PNG path (default: <out>_overlay.png)")
    p.add_argument("--all", action="store_true", help="write all three multimask outputs (<out>_0.png ...)")
    p.add_argument("--single", action="store_true", help="ask for one mask instead of three (several prompts)")
    p.add_argument("--zoom-in", action="store_true",
                   help="with --box alone: answer on a crop around the box, re-encoded at full input resolution "
                   "(helps small objects; one more encoder pass; see docs/evaluation.md)")
    add_model_args(p)
    p.set_defaults(func=run)


def output_paths(args: argparse.Namespace) -> tuple[list[Path], Path]:
    """The mask paths (ranked) and the overlay path this run will write."""
    out = Path(args.out)
    n_masks = 1 if args.single or getattr(args, "zoom_in", False) else 3
    if args.all:
        masks = [out.with_name(f"{out.stem}_{rank}{out.suffix or '.png'}") for rank in range(n_masks)]
    else:
        masks = [out]
    overlay = Path(args.overlay) if args.overlay else out.with_name(f"{out.stem}_overlay.png")
    return masks, overlay


def _check_prompts(args: argparse.Namespace) -> None:
    """Refuse prompts that cannot make sense before the image is read or the model built."""
    if not args.point and args.box is None:
        raise ValueError("give at least one --point X,Y[,LABEL] or a --box X0,Y0,X1,Y1")
    if len(args.point) > MAX_POINTS:
        raise ValueError(f"{len(args.point)} --point options; at most {MAX_POINTS} are accepted")
    for x, y, label in args.point:
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"--point {x:g},{y:g} is not a finite coordinate")
        if label not in (-1, 0, 1):
            raise ValueError(f"--point label must be 1 (foreground), 0 (background) or -1 (ignored), got {label}")
    if args.box is not None and not all(math.isfinite(v) for v in args.box):
        raise ValueError(f"--box {','.join(f'{v:g}' for v in args.box)} has a non-finite coordinate")
    if getattr(args, "zoom_in", False) and (args.box is None or args.point):
        raise ValueError("--zoom-in works with a --box alone (no --point): clicks zoom over several clicks, "
                         "see segany.zoom_in.ZoomIn.click")


def _check_prompts_fit(args: argparse.Namespace, width: int, height: int) -> None:
    """Refuse prompts outside the image, before the model is loaded.

    Why the command line is stricter than the Python API: ``SamPredictor`` encodes such
    prompts as given (as the official predictor does, with a warning), but on the command line
    a click outside the picture is a typo or coordinates of another image, and the mask it
    gives is meaningless."""
    for x, y, _ in args.point:
        if not (0 <= x <= width and 0 <= y <= height):
            raise ValueError(f"--point {x:g},{y:g} is outside the {width}x{height} image")
    if args.box is not None:
        x0, y0, x1, y1 = args.box
        if x1 < x0 or y1 < y0:
            raise ValueError(f"--box {x0:g},{y0:g},{x1:g},{y1:g} has x1 < x0 or y1 < y0 (expected X0,Y0,X1,Y1)")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise ValueError(f"--box {x0:g},{y0:g},{x1:g},{y1:g} extends outside the {width}x{height} image")


def run(args: argparse.Namespace) -> int:
    from ..atomic_files import write_all_or_nothing
    from ..automatic.outputs import check_outputs
    from ..image_io import load_image
    from ..predictor import SamPredictor
    from ..visualize import render_overlay

    _check_prompts(args)
    mask_paths, overlay = output_paths(args)
    outputs = [("--out" if not args.all else f"--out (mask {i})", m) for i, m in enumerate(mask_paths)]
    check_outputs([*outputs, ("--overlay", overlay)], inputs=[Path(args.image)])
    image = load_image(args.image)
    _check_prompts_fit(args, width=int(image.shape[1]), height=int(image.shape[0]))
    model = load_model_from_args(args)
    predictor = SamPredictor(model)
    t0 = time.perf_counter()
    if not args.zoom_in:  # zoom-in encodes its crop instead of the whole image
        predictor.set_image(image)
    t1 = time.perf_counter()
    coords = labels = None
    if args.point:
        coords = np.array([[x, y] for x, y, _ in args.point], dtype=float)
        labels = np.array([lab for _, _, lab in args.point])
    box = np.array(args.box, dtype=float) if args.box is not None else None
    if args.zoom_in:
        from ..zoom_in import BOX_ZOOM, ZoomIn

        assert box is not None
        zoomed, zoom_score, track = ZoomIn(predictor, BOX_ZOOM).box(image, box)
        masks, scores = zoomed[None], np.array([zoom_score])
        crop = [int(v) for v in track.box or ()]
    else:
        masks, scores, _ = predictor.predict(
            point_coords=coords, point_labels=labels, box=box, multimask_output=not args.single
        )
    t2 = time.perf_counter()
    scores = np.asarray(scores, dtype=np.float64)
    # Non-finite scores (a broken checkpoint, an overflow in half precision) must not decide
    # the order silently: they sort last, and are reported as null below.
    order = np.argsort(-np.where(np.isfinite(scores), scores, -np.inf), kind="stable")
    ranked = list(order) if args.all else list(order[:1])
    shown = masks[ranked]
    canvas = render_overlay(image, shown, points=coords, labels=labels, box=box)
    files = [(path, _mask_writer(masks[i])) for path, i in zip(mask_paths, ranked)]
    files.append((overlay, lambda tmp: canvas.save(tmp, format="PNG")))
    try:
        write_all_or_nothing(files)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise ValueError(f"cannot write{where}: {exc.strerror or exc}; nothing was written") from None
    score_list = [float(scores[i]) for i in order]
    bad = [i for i, v in enumerate(score_list) if not math.isfinite(v)]
    if bad:
        print(
            f"warning: {len(bad)} of {len(score_list)} scores are not finite numbers (reported as null); "
            "the checkpoint or the --dtype may be broken",
            file=sys.stderr,
        )
    result = {
        "image": str(args.image),
        "size": [int(image.shape[1]), int(image.shape[0])],
        "scores": [v if math.isfinite(v) else None for v in score_list],
        "areas": [int(masks[i].sum()) for i in order],
        "masks": [str(p) for p in mask_paths],
        "overlay": str(overlay),
        "model_trained": bool(getattr(model, "is_trained", True)),
        "seconds": {"embedding": round(t1 - t0, 3), "decoder": round(t2 - t1, 4)},
    }
    if args.zoom_in:  # the crop's encoder pass is inside "decoder"
        result["zoom_crop_xyxy"] = crop
    print(json.dumps(result, indent=2, allow_nan=False))
    return 0


def _mask_writer(mask: np.ndarray) -> Callable[[Path], None]:
    """A writer of one 0/255 PNG mask, for :func:`write_all_or_nothing`."""

    def write(tmp: Path) -> None:
        Image.fromarray(np.asarray(mask).astype(np.uint8) * 255).save(tmp, format="PNG")

    return write
