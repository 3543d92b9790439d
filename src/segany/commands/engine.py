"""``segany engine export | report | prefill``: the data engine's offline side.

Rows or images that cannot be read are skipped and listed on stderr rather than failing
the whole run; bad options and databases print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_model_args, load_model_from_args
from .data_blur import add_detector_options, detector_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("engine", help="data engine: export the annotations, report statistics, pre-fill")
    sub = parser.add_subparsers(dest="engine_command", metavar="ACTION", required=True)

    exp = sub.add_parser("export", help="write an SA-1B-format dataset (OUT/sa1b) and OUT/coco.json from the store")
    exp.add_argument("--db", required=True, help="SQLite file or postgresql:// URL")
    exp.add_argument("--out", required=True, help="output folder")
    exp.add_argument("--sources", default=None, help="comma-separated: manual,prefilled,automatic (default: all)")
    exp.add_argument("--no-copy-images", action="store_true", help="reference the images in place instead of copying")
    exp.add_argument("--blur", action="store_true",
                     help="blur faces and licence plates in the exported copies before they are published (default "
                     "off; log: OUT/blur_log.jsonl; see docs/datasets.md, Privacy)")
    add_detector_options(exp, "--blur-detector")
    exp.set_defaults(func=run_export)

    rep = sub.add_parser("report", help="masks per image and seconds per mask, per stage and model version")
    rep.add_argument("--db", required=True)
    rep.add_argument("--plot", default=None, help="also write a PNG chart here")
    rep.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rep.set_defaults(func=run_report)

    pre = sub.add_parser("prefill", help="semi-automatic stage: pre-fill confident masks on every image")
    pre.add_argument("--db", required=True)
    pre.add_argument("--annotator", default="prefill")
    pre.add_argument("--max-pixels", type=int, default=None,
                     help="skip images with more pixels (default: the server's limit)")
    add_model_args(pre)
    pre.set_defaults(func=run_prefill)


def _store(url: str):
    from pathlib import Path

    from ..engine.store import open_store

    if not url.startswith(("postgresql://", "postgres://")) and not Path(url).is_file():
        raise FileNotFoundError(f"no annotation database at {url}")
    return open_store(url)


MAX_LISTED = 20  # skipped rows named one by one; the rest are counted


def _report_skipped(what: str, skipped: list[str]) -> None:
    for line in skipped[:MAX_LISTED]:
        print(f"skipped {line}", file=sys.stderr)
    if len(skipped) > MAX_LISTED:
        print(f"... and {len(skipped) - MAX_LISTED} more", file=sys.stderr)
    if skipped:
        print(f"{what}: skipped {len(skipped)} unreadable rows or images (listed above)", file=sys.stderr)


def run_export(args: argparse.Namespace) -> int:
    from ..engine.export import export_dataset
    from ..engine.store import SOURCES

    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip()) if args.sources else None
    if sources is not None:
        unknown = sorted(set(sources) - set(SOURCES))
        if unknown or not sources:
            raise ValueError(f"--sources must be a comma-separated subset of {','.join(SOURCES)}, got {args.sources!r}")
    if args.blur and args.no_copy_images:
        raise ValueError("--blur blurs the exported copies; with --no-copy-images there are none (the originals "
                         "are never blurred in place by an export)")
    detector = detector_from_args(args) if args.blur else None  # before the store is opened
    store = _store(args.db)
    skipped: list[dict] = []
    blurred: list = []  # (summary, run settings) of the --blur pass, filled inside the export
    try:
        counts = export_dataset(store, args.out, sources=sources, copy_images=not args.no_copy_images,
                                skipped=skipped, before_release=_blur_pass(blurred, detector) if detector is not None else None)
    except OSError as exc:
        raise ValueError(f"--out {args.out}: cannot write the export ({exc.strerror or exc})") from None
    _report_skipped("export", [
        (f"mask {s['mask_id']}" if "mask_id" in s else f"image {s['image_id']}") + f": {s['reason']}" for s in skipped
    ])
    print(f"wrote {counts['masks']} masks on {counts['images']} images: {args.out}/sa1b (SA-1B, for segany train) "
          f"and {args.out}/coco.json")
    if blurred:
        print("blurred: " + _write_blur_log(blurred, args.out))
    return 0


def _blur_pass(found: list, detector):
    """The export's ``before_release`` hook for ``--blur``: blur the hidden ``sa1b`` folder in
    place with ``detector`` (the one ``--blur-detector`` chose)."""
    from ..data.blur import blur_folder_in_place

    def blur(folder) -> None:
        found.append(blur_folder_in_place(folder, detector=detector))

    return blur


def _write_blur_log(found: list, out: str) -> str:
    from pathlib import Path

    from ..data.blur import LOG_NAME, describe, write_log

    summary, run = found[0]
    for entry in summary.entries:
        entry["image"] = f"sa1b/{entry['image']}"
        entry.pop("source", None)  # the hidden staging folder the export blurred in, gone now
    summary.log = write_log(Path(out) / LOG_NAME, run, summary.entries)
    return describe(summary)


def run_report(args: argparse.Namespace) -> int:
    from ..engine.report import engine_statistics, format_table, plot_statistics

    store = _store(args.db)
    skipped: list[tuple[int, str]] = []
    rows = engine_statistics(store, skipped=skipped)
    _report_skipped("report", [f"mask {mid}: {reason}" for mid, reason in skipped])
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
    from ..engine.server import DEFAULT_MAX_PIXELS, model_placement, model_version_of
    from ..image_io import ImageError

    if args.max_pixels is None:
        args.max_pixels = DEFAULT_MAX_PIXELS
    if args.max_pixels <= 0:
        raise ValueError(f"--max-pixels must be positive, got {args.max_pixels}")
    store = _store(args.db)
    # The model runs where --device (and --dtype, where the shared options have it) put it.
    model = load_model_from_args(args)
    generator = make_generator(model)
    version = model_version_of(model)
    print(f"pre-filling on {model_placement(model)}", file=sys.stderr)
    total = 0
    skipped: list[str] = []
    for image in tqdm(store.images(), desc="pre-filling", unit="image"):
        if image.width * image.height > args.max_pixels:
            skipped.append(f"image {image.id}: {image.width}x{image.height} pixels, above --max-pixels {args.max_pixels}")
            continue
        try:
            total += len(
                prefill_image(store, image, image.path, model, annotator=args.annotator, model_version=version,
                              generator=generator, max_pixels=args.max_pixels)
            )
        except ImageError as exc:  # a file gone or corrupt: the other images still get their masks
            skipped.append(f"image {image.id}: {exc}")
    _report_skipped("prefill", skipped)
    print(f"pre-filled {total} masks")
    return 0
