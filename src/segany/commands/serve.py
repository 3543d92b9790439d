"""``segany serve IMAGES... --db annotations.sqlite``: the data engine's annotation tool."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import add_model_args, load_model_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="browser annotation tool (decoder runs in the page)",
        description="Serves a page where annotators click points, drag boxes and paint masks; the image "
        "embedding is computed here once per image and the ONNX decoder runs in the browser.",
    )
    parser.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--db", required=True, help="SQLite file (created) or postgresql://user@host/db URL")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=os.environ.get("SEGANY_TOKEN"), help="access token (default: random)")
    parser.add_argument("--cache-dir", default=None, help="embedding cache (default: <db folder>/.segany-cache)")
    parser.add_argument("--upload-dir", default=None, help="allow uploads into this folder")
    parser.add_argument("--max-upload-mb", type=float, default=32.0)
    parser.add_argument("--prefill-points-per-side", type=int, default=16,
                        help="point grid of the pre-fill action (16 x 16 points)")
    parser.add_argument("--quantized-decoder", action="store_true",
                        help="send the page the uint8-quantised decoder (smaller, less CPU, slightly less exact)")
    parser.add_argument("--annotator", default=os.environ.get("USER", "annotator"), help="default annotator name")
    add_model_args(parser)
    parser.set_defaults(func=run)


def collect_images(items: list[str]) -> tuple[list[Path], list[Path]]:
    """(image files, roots) from the command line; roots are the folders given and the
    folders of the files given, the only places the server will read from."""
    from ..engine.server import IMAGE_SUFFIXES

    files: list[Path] = []
    roots: list[Path] = []
    for item in items:
        p = Path(item).resolve()
        if p.is_dir():
            roots.append(p)
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            roots.append(p.parent)
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image file or folder: {item}")
    return files, sorted(set(roots))


def register_images(store, files: list[Path]) -> int:
    """Add images to the store (size read from the header; unreadable files are skipped)."""
    from PIL import Image
    from tqdm import tqdm

    added = 0
    for f in tqdm(files, desc="registering images", disable=len(files) < 50):
        try:
            with Image.open(f) as im:
                w, h = im.size
        except Exception as exc:
            print(f"skipping {f}: not a readable image ({type(exc).__name__})", file=sys.stderr)
            continue
        store.add_image(f, w, h)
        added += 1
    return added


def run(args: argparse.Namespace) -> int:
    from ..engine.server import ServerConfig, serve
    from ..engine.store import open_store

    files, roots = collect_images(args.images)
    if not files:
        raise ValueError("no images found in " + ", ".join(args.images))
    store = open_store(args.db)
    register_images(store, files)
    if args.cache_dir:
        cache = Path(args.cache_dir)
    elif store.is_postgres:
        cache = Path.cwd() / ".segany-cache"
    else:
        cache = Path(args.db).resolve().parent / ".segany-cache"
    args.device = "cpu"
    model = load_model_from_args(args)
    config = ServerConfig(
        store=store,
        image_roots=roots,
        cache_dir=cache,
        upload_dir=Path(args.upload_dir) if args.upload_dir else None,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        annotator=args.annotator,
        model=model,
        prefill_settings={"points_per_side": args.prefill_points_per_side},
        quantized_decoder=args.quantized_decoder,
    )
    if args.token:
        config.token = args.token
    serve(config, host=args.host, port=args.port)
    return 0
