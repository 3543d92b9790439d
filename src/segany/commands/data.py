"""``segany data convert|validate|stats|export``: build, check, describe and export SA-1B folders.

``convert`` formats: ``coco`` (instances JSON + image folder), ``bsds`` (BSDS500 root),
``instance-folders`` (dsb2018 layout), ``label-pngs`` (cvppp layout), and ``shared-train``
(the train splits of the project's shared data, split rules applied), ``yolo`` and ``png``
(folders in the layout ``export`` writes). ``stats`` is :mod:`segany.data.stats`, ``export``
:mod:`segany.data.formats`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="convert datasets to SA-1B format, validate, summarise, export")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    c = sub.add_parser("convert", help="convert a dataset into an SA-1B folder")
    c.add_argument("format", choices=["coco", "bsds", "instance-folders", "label-pngs", "shared-train", "yolo", "png"])
    c.add_argument("source", help="annotation JSON (coco) or dataset root (yolo/png: a `data export` folder layout)")
    c.add_argument("out", help="output SA-1B folder")
    c.add_argument("--images", help="coco/yolo/png: image folder (coco default: images/<subset> beside annotations/)")
    c.add_argument("--splits", default="train,val", help="bsds: comma-separated splits (default train,val)")
    c.set_defaults(func=run_convert)
    v = sub.add_parser("validate", help="check every record of an SA-1B folder")
    v.add_argument("folder")
    v.set_defaults(func=run_validate)
    s = sub.add_parser("stats", help="masks per image, sizes, concavity, centres of SA-1B/COCO sets (paper figs 5-6)")
    s.add_argument("inputs", nargs="+", metavar="DIR", help="SA-1B folders or COCO instances JSON files (by content)")
    s.add_argument("--out", help="report folder: report.json, report.md and PNG figures (default: print only)")
    s.add_argument("--names", help="comma-separated set names for the report (default: folder/file names)")
    s.set_defaults(func=run_stats)
    e = sub.add_parser("export", help="export an SA-1B folder as COCO (RLE or polygons), YOLO-seg or label PNGs")
    e.add_argument("folder", help="SA-1B folder")
    e.add_argument("--format", required=True, choices=["coco", "polygons", "yolo", "png"])
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--no-images", action="store_true", help="write the labels only (no copies of the images)")
    e.add_argument("--tolerance", type=float, default=0.0,
                   help="polygons/yolo: simplify outlines by this many pixels (default 0: exact)")
    e.set_defaults(func=run_export)
    from .data_blur import register_blur  # ``data blur``: the privacy pass, in its own module

    register_blur(sub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_convert(args: argparse.Namespace) -> int:
    from ..data import convert

    if args.format == "shared-train":
        counts = convert.convert_shared_train(args.source, args.out)
        print(" ".join(f"{k}={v}" for k, v in counts.items()), "images written under", args.out)
        return 0
    if args.format in ("yolo", "png"):
        from ..data import formats

        reader = formats.iter_yolo if args.format == "yolo" else formats.iter_label_png_folder
        items = reader(args.source, args.images)
    elif args.format == "coco":
        from ..data.formats import coco_image_dir

        items = convert.iter_coco(args.source, args.images or coco_image_dir(args.source))
    elif args.format == "bsds":
        items = convert.iter_bsds(args.source, [s for s in args.splits.split(",") if s])
    elif args.format == "instance-folders":
        items = convert.iter_instance_folders(args.source)
    else:
        items = convert.iter_label_pngs(args.source)
    n = convert.write_folder(items, args.out, desc=args.format)
    print(f"{n} images written to {args.out}")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.sa1b import list_records, validate_record

    problems = []
    paths = list_records(args.folder)
    for path in tqdm(paths, desc="validate", unit="img"):
        problems.extend(validate_record(path))
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{len(paths)} records, {len(problems)} problems")
    return 1 if problems else 0


def run_stats(args: argparse.Namespace) -> int:
    from ..data import stats

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    sets = stats.collect(args.inputs, names)  # everything is read before anything is written
    for line in stats.summary_lines(sets):
        print(line)
    if args.out:
        command = "segany data stats " + " ".join([*args.inputs, "--out", args.out])
        stats.write_report(sets, args.out, command)
        print(f"report written to {Path(args.out) / 'report.md'}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..data.formats import export_folder

    summary = export_folder(args.folder, args.out, args.format, copy_images=not args.no_images,
                            tolerance=args.tolerance)
    extra = {k: v for k, v in summary.items() if k not in ("format", "images", "masks")}
    print(f"{summary['images']} images, {summary['masks']} masks exported as {args.format} to {args.out}",
          *(f"{k}={v}" for k, v in extra.items()))
    return 0
