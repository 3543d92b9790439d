"""``segany serve IMAGES... --db annotations.sqlite``: the data engine's annotation tool.

Every option is checked before anything starts (port, caps, database, cache folder), so a
mistake on the command line prints one line and exits with status 2 instead of a traceback
from deep inside the web server.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from .common import add_model_args, load_model_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..engine.image_files import DEFAULT_MAX_PIXELS

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
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="another name the page may be opened under (a LAN name, a reverse proxy); "
                        "requests with any other Host header are refused (DNS rebinding protection)")
    parser.add_argument("--token", default=os.environ.get("SEGANY_TOKEN"), help="access token (default: random)")
    parser.add_argument("--cache-dir", default=None, help="embedding cache (default: <db folder>/.segany-cache)")
    parser.add_argument("--upload-dir", default=None, help="allow uploads into this folder")
    parser.add_argument("--max-upload-mb", type=float, default=32.0)
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse images with more pixels, before decoding them (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--prefill-points-per-side", type=int, default=16,
                        help="point grid of the pre-fill action (16 x 16 points)")
    parser.add_argument("--quantized-decoder", action="store_true",
                        help="send the page the uint8-quantised decoder (smaller, less CPU, slightly less exact)")
    parser.add_argument("--annotator", default=os.environ.get("USER", "annotator"), help="default annotator name")
    parser.add_argument("--rate", action="store_true",
                        help="serve the blind mask-quality rating page instead of the annotation tool: the store's "
                        "masks and imported ground truth (segany engine import-gt) one at a time, rated 1-10 "
                        "(segany engine ratings summarises); no model is loaded")
    add_model_args(parser)
    parser.add_argument("--model-version", default=None, metavar="NAME",
                        help="serve this model version from the --db store's registry (see `segany engine cycle`; "
                        "instead of --checkpoint/--model-type); every mask saved records NAME")
    parser.set_defaults(func=run)


def collect_images(items: list[str]) -> tuple[list[Path], list[Path]]:
    """(image files, roots) from the command line; roots are the folders given and the
    folders of the files given, the only places the server will read from."""
    from ..atomic_files import is_partial_file
    from ..engine.image_files import IMAGE_SUFFIXES

    files: list[Path] = []
    roots: list[Path] = []
    for item in items:
        p = Path(item).resolve()
        if p.is_dir():
            roots.append(p)
            files.extend(sorted(
                f for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not is_partial_file(f)  # not an upload in progress
            ))
        elif p.is_file():
            roots.append(p.parent)
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image file or folder: {item}")
    return files, sorted(set(roots))


def register_images(store, files: list[Path], max_pixels: int | None = None) -> int:
    """Add images to the store (size read from the header; unreadable files and images above
    ``max_pixels`` are skipped with a note, so one bad file does not stop the server)."""
    from tqdm import tqdm

    from ..engine.image_files import DEFAULT_MAX_PIXELS, image_header_size
    from ..engine.store import StoreError
    from ..image_io import ImageError

    added = 0
    for f in tqdm(files, desc="registering images", disable=len(files) < 50):
        try:
            w, h = image_header_size(f, max_pixels or DEFAULT_MAX_PIXELS)
            store.add_image(f, w, h)
        except (ImageError, StoreError) as exc:
            print(f"skipping {f}: {exc}", file=sys.stderr)
            continue
        added += 1
    return added


def check_options(args: argparse.Namespace) -> None:
    """Refuse impossible option values with one line naming the option (exit status 2)."""
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    if not (math.isfinite(args.max_upload_mb) and args.max_upload_mb > 0):
        raise ValueError(f"--max-upload-mb must be a positive number, got {args.max_upload_mb}")
    if args.max_pixels <= 0:
        raise ValueError(f"--max-pixels must be positive, got {args.max_pixels}")
    if not 1 <= args.prefill_points_per_side <= 256:
        raise ValueError(f"--prefill-points-per-side must be between 1 and 256, got {args.prefill_points_per_side}")
    if args.token and (not args.token.isascii() or not args.token.isprintable() or " " in args.token):
        raise ValueError("--token must be printable ASCII without spaces (it travels in a header)")
    if getattr(args, "model_version", None) is not None and (args.checkpoint is not None or args.model_type is not None):
        raise ValueError("--model-version names the model itself: leave out --checkpoint and --model-type")


def _writable_dir(path: Path, option: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: the folder is not writable")
    return path


def run(args: argparse.Namespace) -> int:
    from ..engine.server import listen_socket, serve
    from ..engine.server_config import ServerConfig
    from ..engine.store import open_store

    check_options(args)
    files, roots = collect_images(args.images)
    if not files:
        raise ValueError("no images found in " + ", ".join(args.images))
    store = open_store(args.db)
    register_images(store, files, args.max_pixels)
    if not store.images():
        raise ValueError(f"none of the {len(files)} images could be registered (see the notes above)")
    if args.rate:
        from ..engine.ratings import require_pool

        if args.model_version is not None or args.upload_dir:
            raise ValueError("--rate shows stored masks only: --model-version and --upload-dir do not apply")
        require_pool(store, roots)  # nothing to rate fails here, not as an empty page
    if args.model_version is not None:
        from ..engine.versions import get_version

        get_version(store, args.model_version)  # an unknown name fails before the port is taken
    if args.cache_dir:
        cache = Path(args.cache_dir)
    elif store.is_postgres:
        cache = Path.cwd() / ".segany-cache"
    else:
        cache = Path(args.db).resolve().parent / ".segany-cache"
    _writable_dir(cache, "--cache-dir")
    upload_dir = _writable_dir(Path(args.upload_dir), "--upload-dir") if args.upload_dir else None
    sock = listen_socket(args.host, args.port)  # before the model loads: a busy port fails fast
    try:
        # The model goes where --device (and --dtype, where the shared options have it) say;
        # nothing here moves it back to the CPU. The startup line shows where it ended up.
        version = None
        if args.rate:
            model = None  # the rating page runs no model
        elif args.model_version is not None:
            from .engine import registered_model

            model, version = registered_model(store, args)
        else:
            model = load_model_from_args(args)
        config = ServerConfig(
            store=store,
            image_roots=roots,
            cache_dir=cache,
            upload_dir=upload_dir,
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
            annotator=args.annotator,
            model=model,
            model_version=version,
            prefill_settings={"points_per_side": args.prefill_points_per_side},
            quantized_decoder=args.quantized_decoder,
            host=args.host,
            allowed_hosts=list(args.allowed_host),
            max_pixels=args.max_pixels,
            rate=args.rate,
        )
        if args.token:
            config.token = args.token
        serve(config, host=args.host, port=args.port, sock=sock)
    finally:
        sock.close()
    return 0
