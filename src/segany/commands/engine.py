"""``segany engine export | report | prefill | cycle | versions | import-gt | ratings``: the data engine's offline side.

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

    rep = sub.add_parser("report", help="masks per image, seconds and clicks per mask, per stage and model version")
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
    pre.add_argument("--model-version", default=None, metavar="NAME",
                     help="pre-fill with this registered model version (instead of --checkpoint/--model-type); "
                     "its masks record NAME")
    pre.set_defaults(func=run_prefill)

    register_cycle(sub)
    register_ratings(sub)


def register_cycle(sub: argparse._SubParsersAction) -> None:
    """``engine cycle`` (one model-in-the-loop retraining) and ``engine versions`` (the registry)."""
    cyc = sub.add_parser("cycle", help="export the accepted masks, fine-tune the model on them, evaluate, "
                         "register the result as a new model version")
    cyc.add_argument("--db", required=True, help="SQLite file or postgresql:// URL")
    cyc.add_argument("--base", required=True, metavar="MODEL",
                     help="the model to fine-tune: a registered version's name, 'default' (the shipped model) "
                     "or a checkpoint file")
    cyc.add_argument("--out", required=True, help="run folder (OUT/data, OUT/train, OUT/eval), e.g. runs/cycle1")
    cyc.add_argument("--name", default=None, help="the new version's name (default: the --out folder's name)")
    cyc.add_argument("--config", default=None,
                     help="training config to derive the fine-tuning from (default: the default model's recipe, "
                     "segany/configs/segany_cnn_cpu.yaml)")
    cyc.add_argument("--steps", type=int, default=200, help="fine-tuning steps (default 200)")
    cyc.add_argument("--with-base-data", action="store_true",
                     help="also train on the config's own data roots (mixed with the exported masks)")
    cyc.add_argument("--repeat", type=int, default=1,
                     help="list the exported images this many times among the training roots (default 1)")
    cyc.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override one value of the derived training config, as `segany train --set`; repeatable")
    cyc.add_argument("--eval-datasets", nargs="+", default=["grabcut"],
                     help="eval splits for `eval points`: grabcut coco_tiny dsb2018 cvppp_a1, sa1b:FOLDER or "
                     "coco:IMAGE_DIR:ANN.json (default: grabcut)")
    cyc.add_argument("--limit", type=int, default=None, help="evaluate at most N images per data set")
    cyc.add_argument("--max-clicks", type=int, default=20, help="NoC cap of the evaluation (default 20, at least 9)")
    cyc.add_argument("--data-root", default=None, help="folder holding the eval data sets (default: ../shared/data)")
    cyc.add_argument("--eval-base", action="store_true", help="evaluate the base model too (OUT/eval_base)")
    cyc.add_argument("--seed", type=int, default=0)
    cyc.add_argument("--device", default=None, help="where the evaluation runs (default: cuda when available)")
    cyc.set_defaults(func=run_cycle)

    ver = sub.add_parser("versions", help="list the model versions registered in the store")
    ver.add_argument("--db", required=True)
    ver.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ver.set_defaults(func=run_versions)


def run_cycle(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    import torch

    from ..engine.cycle import DEFAULT_CONFIG, CycleOptions, describe
    from ..engine.cycle import run_cycle as cycle
    from .common import parse_device

    device = str(parse_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
    if args.max_clicks < 9:
        raise ValueError(f"--max-clicks must be at least 9 (mIoU is reported up to 9 clicks), got {args.max_clicks}")
    store = _store(args.db)
    options = CycleOptions(
        base=args.base, out=Path(args.out), name=args.name, config=Path(args.config or DEFAULT_CONFIG), steps=args.steps,
        with_base_data=args.with_base_data, repeat=args.repeat, train_overrides=list(args.set),
        eval_datasets=list(args.eval_datasets), limit=args.limit,
        data_root=Path(args.data_root) if args.data_root else None, max_clicks=args.max_clicks, seed=args.seed,
        eval_base=args.eval_base, device=device,
    )
    command = "segany " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["engine"] else ""
    row = cycle(store, options, command=command or "segany engine cycle")
    print(describe(row))
    return 0


def run_versions(args: argparse.Namespace) -> int:
    from ..engine.versions import list_versions

    rows = list_versions(_store(args.db))
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    print(f"{'name':<24} {'parent':<28} {'images':>6} {'masks':>6} {'mIoU@1':>7} {'NoC@90':>7}  weights")
    for r in rows:
        mean = r.metrics.get("points", {}).get("mean", {})
        miou = f"{100 * mean['mIoU']['1']:.1f}" if mean else "-"
        noc = f"{mean['NoC@90']:.2f}" if mean else "-"
        print(f"{r.name[:24]:<24} {(r.parent or '-')[:28]:<28} {r.images:>6} {r.masks:>6} {miou:>7} {noc:>7}  "
              f"{r.weights}")
    if not rows:
        print("(no model versions registered)")
    return 0


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
    from ..engine.report import engine_statistics, format_table, plot_statistics, version_statistics

    store = _store(args.db)
    skipped: list[tuple[int, str]] = []
    rows = engine_statistics(store, skipped=skipped)
    _report_skipped("report", [f"mask {mid}: {reason}" for mid, reason in skipped])
    versions = version_statistics(store)
    if args.json:
        print(json.dumps({"images_in_store": len(store.images()), "groups": rows, "versions": versions}, indent=2))
    else:
        print(format_table(rows, len(store.images()), versions))
    if args.plot:
        print(f"plot: {plot_statistics(rows, args.plot, versions)}", file=sys.stderr)
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
    if args.model_version is not None:
        model, version = registered_model(store, args)
    else:
        model = load_model_from_args(args)
        version = model_version_of(model)
    generator = make_generator(model)
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


def registered_model(store, args: argparse.Namespace):
    """(model, name) of ``--model-version NAME`` from the store's registry, on ``--device`` in
    ``--dtype``; refused together with ``--checkpoint``/``--model-type``, which name another model."""
    from ..engine.versions import load_version_model
    from .common import parse_device, parse_dtype

    if args.checkpoint is not None or args.model_type is not None:
        raise ValueError("--model-version names the model itself: leave out --checkpoint and --model-type")
    device = parse_device(str(args.device))
    dtype = parse_dtype(getattr(args, "dtype", None))
    args.device = str(device)
    model, row = load_version_model(store, args.model_version)
    return model.to(device=device, dtype=dtype).eval(), row.name


def register_ratings(sub: argparse._SubParsersAction) -> None:
    """``engine import-gt`` (SA-1B ground truth into the rating pool) and ``engine ratings`` (the study's result)."""
    gt = sub.add_parser("import-gt", help="add an SA-1B folder's masks to the rating pool as ground_truth "
                        "(never to the annotation masks that export writes)")
    gt.add_argument("sa1b_dir", metavar="SA1B_DIR", help="folder of SA-1B image + JSON pairs (searched recursively)")
    gt.add_argument("--db", required=True, help="SQLite file (created) or postgresql:// URL")
    gt.add_argument("--max-per-image", type=int, default=None, metavar="N",
                    help="a random sample of N masks per image (seeded; default: all)")
    gt.add_argument("--seed", type=int, default=0)
    gt.set_defaults(func=run_import_gt)

    rat = sub.add_parser("ratings", help="mask-quality study: mean rating per source and model version with "
                         "bootstrap CIs, table and histogram")
    rat.add_argument("--db", required=True)
    rat.add_argument("--out", required=True, help="folder for ratings.md, ratings.json, ratings_histogram.png")
    rat.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    rat.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    rat.set_defaults(func=run_ratings)


def run_import_gt(args: argparse.Namespace) -> int:
    from ..engine.ratings import import_ground_truth, read_ground_truth
    from ..engine.store import open_store

    gt = read_ground_truth(args.sa1b_dir, max_per_image=args.max_per_image, seed=args.seed)  # before the store
    summary = import_ground_truth(open_store(args.db), gt)
    print(f"added {summary.added} ground-truth masks from {summary.records} SA-1B records to the rating pool"
          f" ({summary.masks - summary.added} were there already, {summary.empty_records} records without masks)")
    return 0


def run_ratings(args: argparse.Namespace) -> int:
    from ..engine.ratings import format_table, rating_summary, write_report

    if args.resamples < 1:
        raise ValueError(f"--resamples must be at least 1, got {args.resamples}")
    summary = rating_summary(_store(args.db), resamples=args.resamples, seed=args.seed)
    print(format_table(summary))
    paths = write_report(summary, args.out)
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0
