"""``segany data convert|validate|stats``: build and check SA-1B-format folders.

``convert`` formats: ``coco`` (instances JSON + image folder), ``bsds`` (BSDS500 root),
``instance-folders`` (dsb2018 layout), ``label-pngs`` (cvppp layout), and ``shared-train``
(the train splits of the project's shared data, split rules applied).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="convert datasets to SA-1B format, validate, summarise")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    c = sub.add_parser("convert", help="convert a dataset into an SA-1B folder")
    c.add_argument("format", choices=["coco", "bsds", "instance-folders", "label-pngs", "shared-train"])
    c.add_argument("source", help="annotation JSON (coco) or dataset root")
    c.add_argument("out", help="output SA-1B folder")
    c.add_argument("--images", help="coco: image folder")
    c.add_argument("--splits", default="train,val", help="bsds: comma-separated splits (default train,val)")
    c.set_defaults(func=run_convert)
    v = sub.add_parser("validate", help="check every record of an SA-1B folder")
    v.add_argument("folder")
    v.set_defaults(func=run_validate)
    s = sub.add_parser("stats", help="images, masks per image and mask sizes of an SA-1B folder")
    s.add_argument("folder")
    s.set_defaults(func=run_stats)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_convert(args: argparse.Namespace) -> int:
    from ..data import convert

    if args.format == "shared-train":
        counts = convert.convert_shared_train(args.source, args.out)
        print(" ".join(f"{k}={v}" for k, v in counts.items()), "images written under", args.out)
        return 0
    if args.format == "coco":
        if not args.images:
            raise ValueError("coco conversion needs --images IMAGE_FOLDER")
        items = convert.iter_coco(args.source, args.images)
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
    import numpy as np

    from ..data.sa1b import list_records, read_record

    counts, rel = [], []
    for path in list_records(args.folder):
        rec = read_record(path)
        counts.append(len(rec.annotations))
        rel.extend(np.sqrt(a["area"] / (rec.width * rec.height)) for a in rec.annotations)
    c, r = np.array(counts), np.array(rel)
    print(f"{Path(args.folder)}: {len(c)} images, {int(c.sum())} masks, "
          f"masks/image median {np.median(c):.0f} (min {c.min()}, max {c.max()}), "
          f"relative mask size sqrt(area/image) median {np.median(r):.3f}, "
          f"share > 0.9 of the image {(r**2 > 0.9).mean():.3f}")
    return 0
