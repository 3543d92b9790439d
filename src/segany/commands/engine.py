"""``segany engine export | report | prefill``: the data engine's offline side."""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_model_args, load_model_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("engine", help="data engine: export the annotations, report statistics, pre-fill")
    sub = parser.add_subparsers(dest="engine_command", metavar="ACTION", required=True)

    exp = sub.add_parser("export", help="write an SA-1B-format dataset (OUT/sa1b) and OUT/coco.json from the store")
    exp.add_argument("--db", required=True, help="SQLite file or postgresql:// URL")
    exp.add_argument("--out", required=True, help="output folder")
    exp.add_argument("--sources", default=None, help="comma-separated: manual,prefilled,automatic (default: all)")
    exp.add_argument("--no-copy-images", action="store_true", help="reference the images in place instead of copying")
    exp.set_defaults(func=run_export)

    rep = sub.add_parser("report", help="masks per image and seconds per mask, per stage and model version")
    rep.add_argument("--db", required=True)
    rep.add_argument("--plot", default=None, help="also write a PNG chart here")
    rep.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rep.set_defaults(func=run_report)

    pre = sub.add_parser("prefill", help="semi-automatic stage: pre-fill confident masks on every image")
    pre.add_argument("--db", required=True)
    pre.add_argument("--annotator", default="prefill")
    add_model_args(pre)
    pre.set_defaults(func=run_prefill)


def _store(url: str):
    from pathlib import Path

    from ..engine.store import open_store

    if not url.startswith(("postgresql://", "postgres://")) and not Path(url).is_file():
        raise FileNotFoundError(f"no annotation database at {url}")
    return open_store(url)


def run_export(args: argparse.Namespace) -> int:
    from ..engine.export import export_dataset

    sources = tuple(s.strip() for s in args.sources.split(",")) if args.sources else None
    counts = export_dataset(_store(args.db), args.out, sources=sources, copy_images=not args.no_copy_images)
    print(f"wrote {counts['masks']} masks on {counts['images']} images: {args.out}/sa1b (SA-1B, for segany train) "
          f"and {args.out}/coco.json")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from ..engine.report import engine_statistics, format_table, plot_statistics

    store = _store(args.db)
    rows = engine_statistics(store)
    if args.json:
        print(json.dumps({"images_in_store": len(store.images()), "groups": rows}, indent=2))
    else:
        print(format_table(rows, len(store.images())))
    if args.plot:
        print(f"plot: {plot_statistics(rows, args.plot)}", file=sys.stderr)
    return 0


def run_prefill(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..engine.prefill import make_generator, prefill_image
    from ..engine.server import model_version_of

    store = _store(args.db)
    args.device = "cpu"
    model = load_model_from_args(args)
    generator = make_generator(model)
    version = model_version_of(model)
    total = 0
    for image in tqdm(store.images(), desc="pre-filling", unit="image"):
        total += len(
            prefill_image(store, image, image.path, model, annotator=args.annotator, model_version=version,
                          generator=generator)
        )
    print(f"pre-filled {total} masks")
    return 0
