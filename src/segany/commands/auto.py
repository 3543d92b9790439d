"""``segany auto``: segment everything in files, folders and globs (resumable).

    segany auto photos/ more/*.jpg --out masks/ --preset data-engine --overlay

One SA-1B JSON per image by default (``--format coco`` or ``png`` for the others); images
already finished in ``--out`` are skipped, unreadable ones are listed at the end and make
the exit status 1.
"""

from __future__ import annotations

import argparse
import sys

from ..automatic.outputs import FORMATS
from ..automatic.presets import PRESETS, preset
from .common import add_model_args, load_model_from_args

# (flag, type, help); defaults come from the preset, then the generator's own defaults.
KNOBS: list[tuple[str, type, str]] = [
    ("points_per_side", int, "grid points per image side (default 32)"),
    ("points_per_batch", int, "points decoded at once (default 64)"),
    ("pred_iou_thresh", float, "keep masks with predicted IoU above this (default 0.88)"),
    ("stability_score_thresh", float, "keep masks with stability score at least this (default 0.95)"),
    ("stability_score_offset", float, "logit offset of the stability score (default 1.0)"),
    ("box_nms_thresh", float, "box IoU for NMS within a crop (default 0.7)"),
    ("crop_n_layers", int, "zoomed-in crop layers; layer k has 2^k x 2^k crops (default 0)"),
    ("crop_nms_thresh", float, "box IoU for NMS across crops (default 0.7)"),
    ("crop_overlap_ratio", float, "crop overlap as a fraction of the short side (default 512/1500)"),
    ("crop_n_points_downscale_factor", int, "grid side divided by this per crop layer (default 1)"),
    ("min_mask_region_area", int, "fill holes / drop islands smaller than this many px (default 0: off)"),
    ("max_mask_fraction", float, "drop masks covering more than this fraction of the image (default off)"),
    ("max_masks", int, "keep at most this many masks, by mean of IoU and stability (default all)"),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "auto",
        help="segment everything in images, folders or globs (SA-1B JSON per image)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or glob patterns")
    p.add_argument("--out", required=True, help="output folder (created; finished images in it are skipped)")
    p.add_argument("--format", choices=FORMATS, default="sa1b", help="sa1b JSON, coco JSON, or 16-bit label png")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="paper settings (docs/automatic.md)")
    p.add_argument("--overlay", action="store_true", help="also write <name>.overlay.png with every mask coloured")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, typ, text in KNOBS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None, help=text)
    add_model_args(p)
    p.set_defaults(func=run)


def generator_kwargs(args: argparse.Namespace) -> dict:
    """Preset settings overridden by every knob given on the command line."""
    overrides = {name: getattr(args, name) for name, _, _ in KNOBS if getattr(args, name) is not None}
    return preset(args.preset, **overrides)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..automatic.folder import segment_folder
    from ..automatic.generator import SamAutomaticMaskGenerator

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    kwargs = generator_kwargs(args)
    model = load_model_from_args(args)
    generator = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **kwargs)
    summary = segment_folder(
        generator, args.inputs, args.out, fmt=args.format, save_overlay=args.overlay, progress=not args.no_progress
    )
    for line in summary.lines():
        print(line, file=sys.stderr if line.startswith(("failed", "  ")) else sys.stdout)
    return 1 if summary.failed else 0
