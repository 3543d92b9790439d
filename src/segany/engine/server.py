"""The annotation server (FastAPI): images, embeddings, the ONNX decoder and the mask store.

The split follows the paper's data engine (section 4): the server runs the heavy image
encoder once per image and serves the 64x64x256 embedding; the page runs the prompt
encoder + mask decoder itself (onnxruntime-web) so every click answers in milliseconds
without a round trip. The server only stores what the annotator accepts.

Security model (a tool that reads the annotator's disk): it listens on 127.0.0.1 unless
told otherwise, every ``/api`` call needs the access token printed at start (header
``Authorization: Bearer TOKEN``, or ``?token=`` on GETs), no path can resolve outside
the image roots (symlinks included), uploads are capped in size and must decode as images.
Requests whose ``Host`` header is not one of the server's own names are refused (a web
page that rebinds its DNS name to 127.0.0.1 cannot talk to the server), request bodies are
capped, images above a pixel cap are refused before they are decoded (413), and decoding
never runs on the event loop.

Every malformed request ends in a 4xx whose body is one JSON line ``{"detail": "..."}``
naming the field at fault, never a traceback and never an absolute path of the server's disk.
"""

from __future__ import annotations

import copy
import hmac
import ipaddress
import logging
import os
import re
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import image_io
from ..image_io import ImageError, load_image
from ..masks import validate_rle
from .embedding_cache import EmbeddingCache
from .store import MAX_CLIENT_ID, MAX_ID, SOURCES, Store, StoreError

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs")
PAGE_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
DEFAULT_MAX_UPLOAD = 32 * 1024 * 1024
# JSON bodies (a mask's runs): generous for a brushed mask on a large image, small enough
# that a hostile client cannot make the server buffer gigabytes.
DEFAULT_MAX_BODY = 16 * 1024 * 1024
# Images above this many pixels are refused before decoding. Below PIL's own bomb limit
# (89 M pixels, and only a warning up to twice that): a 0.5 MB 13,000 x 13,000 PNG decodes to
# 0.5 GB of RGB and several GB in the model's preprocessing. Lowered further if image_io's
# global cap (MAX_PIXELS; MAX_IMAGE_PIXELS in older versions) is lower.
DEFAULT_MAX_PIXELS = min(
    50_000_000, int(getattr(image_io, "MAX_PIXELS", getattr(image_io, "MAX_IMAGE_PIXELS", 50_000_000)))
)
PREFETCH_AHEAD = 2
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
MAX_CONCURRENT_DECODES = 2  # full image decodes at once (each can take hundreds of MB)


def ort_dist_dir() -> Path | None:
    """Where onnxruntime-web's dist files are (installed by npm, never committed)."""
    candidates = [os.environ.get("SEGANY_ORT_WEB_DIR"), WEB_DIR / "node_modules" / "onnxruntime-web" / "dist"]
    for c in candidates:
        if c and all((Path(c) / f).is_file() for f in ORT_FILES):
            return Path(c)
    return None


@dataclass
class ServerConfig:
    """Everything the app needs; built by ``segany serve`` or by tests."""

    store: Store
    image_roots: list[Path]
    cache_dir: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    upload_dir: Path | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    annotator: str = "annotator"
    model: Any = None  # a segany Sam, on any device; the default model when None
    model_version: str | None = None
    prefetch_ahead: int = PREFETCH_AHEAD
    prefill_settings: dict = field(default_factory=dict)  # overrides of prefill.PREFILL_SETTINGS
    quantized_decoder: bool = False  # serve the uint8-quantised decoder (about 16% less CPU in wasm)
    host: str = "127.0.0.1"  # the interface it listens on; its name is an allowed Host header
    allowed_hosts: list[str] = field(default_factory=list)  # further Host names (a LAN name, a proxy)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_body_bytes: int = DEFAULT_MAX_BODY


Id = Annotated[int, PathParam(ge=1, le=MAX_ID, description="a database id (1 .. 2**63 - 1)")]


class AddImage(BaseModel):
    """Register an image that is already inside the roots."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=4096)


class SaveMask(BaseModel):
    """One accepted mask: uncompressed column-major runs (what the page sends) or a COCO RLE."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not a silent default

    size: list[StrictInt] | None = None
    counts: list[StrictInt] | None = None  # uncompressed column-major runs, as the page sends
    rle: dict[str, Any] | None = None  # or a COCO RLE
    source: str = Field("manual", max_length=32)
    seconds: float = Field(0.0, ge=0.0, le=1e7, allow_inf_nan=False)
    score: float | None = Field(None, allow_inf_nan=False)
    client_id: str | None = Field(None, min_length=1, max_length=MAX_CLIENT_ID)
    replaces: Annotated[StrictInt, Field(ge=1, le=MAX_ID)] | None = None


class PathOutsideRoots(ValueError):
    """A path that resolves outside every image root."""


class ImageTooLarge(ImageError):
    """An image whose header announces more pixels than the server accepts."""


def resolve_under_roots(path: str | Path, roots: list[Path]) -> Path:
    """Resolve ``path`` (relative paths against the first root) and refuse anything that is
    not inside one of ``roots`` once symlinks and ``..`` are resolved.

    The message never repeats the resolved path: it would tell a client where the roots are.
    """
    raw = str(path)
    if "\x00" in raw:
        raise PathOutsideRoots("path contains a NUL byte")
    p = Path(raw)
    if not p.is_absolute():
        if not roots:
            raise PathOutsideRoots("no image roots configured")
        p = roots[0] / p
    try:
        resolved = p.resolve()
    except (OSError, RuntimeError) as exc:  # a name too long, a symlink loop
        raise PathOutsideRoots(f"path cannot be resolved ({type(exc).__name__})") from None
    for root in roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    raise PathOutsideRoots("path is outside the image roots")


def _safe_upload_name(name: str) -> str:
    """The last path component, restricted to a conservative character set."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    if not base or Path(base).suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"filename must end with one of {sorted(IMAGE_SUFFIXES)}, got {name[:100]!r}")
    return base[-120:]


_decode_slots = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)


def image_header_size(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the file's header, refusing images above ``max_pixels``.

    Reads only the header, so a decompression bomb costs nothing; raises
    :class:`ImageTooLarge` or :class:`ImageError` (messages name the file, not its folder).
    """
    from PIL import Image

    name = Path(path).name
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{name} is far larger than the limit of {max_pixels} pixels") from None
    except Exception as exc:
        raise ImageError(f"cannot read image {name}: {type(exc).__name__}") from None
    if w * h > max_pixels:
        raise ImageTooLarge(f"{name} has {w}x{h} = {w * h} pixels, more than the limit of {max_pixels} (--max-pixels)")
    if w <= 0 or h <= 0:
        raise ImageError(f"{name} is empty ({w}x{h} pixels)")
    return int(w), int(h)


def image_size(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an image file, decoding it fully (so corrupt files are refused).

    Blocking and memory-hungry: call it from a worker thread, never on the event loop. At
    most ``MAX_CONCURRENT_DECODES`` decodes run at once.
    """
    image_header_size(path, max_pixels)
    with _decode_slots:
        image = load_image(path, max_pixels)
    return int(image.shape[1]), int(image.shape[0])


def model_version_of(model: Any) -> str:
    """A short name identifying the model that proposed masks (for the statistics)."""
    from ..embeddings import encoder_fingerprint

    kind = "segany_default" if getattr(model, "is_trained", False) else f"untrained-{model.img_size}px"
    return f"{kind}@{encoder_fingerprint(model)[:8]}"


def model_device(model: Any) -> str:
    """The device the model's weights are on (``cpu``, ``cuda:0``, ...)."""
    try:
        return str(next(model.parameters()).device)
    except (StopIteration, AttributeError):
        return "cpu"


def model_placement(model: Any) -> str:
    """Where and in what type the model runs, for the startup line (``cuda:0, bfloat16``)."""
    try:
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    except (StopIteration, AttributeError):
        dtype = "float32"
    return f"{model_device(model)}, {dtype}"


def _decoder_export_copy(model: Any) -> Any:
    """A float32 CPU copy of just the prompt encoder and mask decoder, for the ONNX export.

    ``export_decoder`` moves the model it is given to the CPU in place: handing it the
    served model would silently pull a GPU model off its device (and the image encoder,
    the big part, is not in the decoder graph anyway).
    """
    import torch

    shell = torch.nn.Module()
    shell.prompt_encoder = copy.deepcopy(model.prompt_encoder).float().cpu().eval()
    shell.mask_decoder = copy.deepcopy(model.mask_decoder).float().cpu().eval()
    shell.img_size = int(model.img_size)
    shell.mask_threshold = float(getattr(model, "mask_threshold", 0.0))
    return shell.eval()


# ---------------------------------------------------------------------- errors


_ABS_PATH = re.compile(r"""(?<![\w.~-])/(?:[^\s/'"`:,;()<>\[\]{}]+/)+([^\s/'"`:,;()<>\[\]{}]*)""")


def one_line(message: Any, limit: int = 400) -> str:
    """An error message fit for a client: one line, short, absolute paths cut to their last part."""
    text = " ".join(str(message).split())
    text = _ABS_PATH.sub(lambda m: m.group(1) or "<path>", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_error(status: int, message: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": one_line(message)}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError, content_type: str = "") -> str:
    """FastAPI's list of validation errors as one sentence naming each field at fault."""
    is_json = content_type.split(";")[0].strip().lower().endswith("json")
    parts = []
    errors = list(exc.errors())
    for err in errors[:3]:
        loc = [str(x) for x in err.get("loc", ())]
        kind = err.get("type", "")
        if kind == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "decode error")
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            parts.append(f"body: malformed JSON ({detail}{at})")
            continue
        where = ".".join(loc[1:]) if len(loc) > 1 and loc[0] in ("body", "path", "query", "header") else ".".join(loc)
        if loc[:1] == ["body"] and len(loc) == 1:
            if kind == "missing":
                parts.append("body: a JSON object is required")
            elif is_json:
                parts.append("body: expected a JSON object")
            else:
                parts.append("body: expected a JSON object sent with Content-Type: application/json")
            continue
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    if len(errors) > 3:
        parts.append(f"and {len(errors) - 3} more problems")
    return "; ".join(parts) or "invalid request"


def _host_name(value: str) -> str:
    """The host part of a ``Host`` header (brackets and port removed, lower case)."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        return v[1:end] if end > 0 else v
    if v.count(":") == 1:
        v = v.split(":", 1)[0]
    return v.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


# Cross-origin isolation lets onnxruntime-web use SharedArrayBuffer (wasm threads).
_RESPONSE_HEADERS = [
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-embedder-policy", b"require-corp"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
]


class _RequestGuard:
    """ASGI middleware run before anything else: the Host check, the body size cap and the
    headers every response carries.

    Why here and not in the routes: a DNS-rebinding page reaches the server under the
    attacker's name, which only the ``Host`` header reveals; and a body must be counted
    while it arrives, before FastAPI buffers it whole for JSON parsing. (A plain ASGI class
    rather than ``@app.middleware``: that one runs the app in a task group, which would
    wrap the 413 raised while the body arrives into an exception group.)
    """

    def __init__(self, app: Any, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        host = _host_name(config.host) if config.host else ""
        self.wildcard = host in WILDCARD_HOSTS
        names = {*LOCAL_HOSTS, host, *(_host_name(h) for h in config.allowed_hosts)} - {""}
        if self.wildcard:
            for fn in (socket.gethostname, socket.getfqdn):
                try:
                    names.add(fn().lower().rstrip("."))
                except OSError:
                    pass
        self.names = names

    def host_allowed(self, header: str, client: Any = None) -> bool:
        name = _host_name(header)
        if name in self.names or name.endswith(".localhost"):
            return True
        if name == "testserver" and client and client[0] == "testclient":
            return True  # Starlette's in-process TestClient: no browser, no network, no DNS
        # An address literal cannot be rebound by DNS; accept them when listening everywhere.
        return self.wildcard and _is_ip(name)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        original_send = send

        async def send_with_headers(message: dict) -> None:  # every response, errors included
            if message.get("type") == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in _RESPONSE_HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await original_send(message)

        send = send_with_headers
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host")
        if host is not None and not self.host_allowed(host, scope.get("client")):
            response = _json_error(
                400,
                f"Host header {host[:80]!r} is not a name of this server (DNS rebinding protection); open it as "
                f"http://127.0.0.1:PORT/ or start it with --allowed-host NAME",
            )
            await response(scope, receive, send)
            return
        limit = self.config.max_upload_bytes if scope.get("path") == "/api/upload" else self.config.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _json_error(400, "Content-Length header must be a non-negative integer")(scope, receive, send)
                return
            if int(declared) > limit:
                await _json_error(413, f"request body larger than the limit of {limit} bytes")(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body larger than the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


def create_app(config: ServerConfig):  # noqa: C901 - one closure per route keeps the app readable
    """The FastAPI app; ``config`` is kept on ``app.state.config``.

    The model is used where it is (its device and dtype are the caller's choice, e.g.
    ``segany serve --device cuda``); only the ONNX export works on a CPU copy of the decoder.
    """
    if config.model is None:
        from ..default_model import load_default_model

        config.model = load_default_model()
    for name in ("max_pixels", "max_upload_bytes", "max_body_bytes"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    model = config.model.eval()
    config.model_version = config.model_version or model_version_of(model)
    config.image_roots = [Path(r).resolve() for r in config.image_roots]
    config.cache_dir = Path(config.cache_dir)
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    if config.upload_dir is not None:
        config.upload_dir = Path(config.upload_dir).resolve()
        config.upload_dir.mkdir(parents=True, exist_ok=True)
        if config.upload_dir not in config.image_roots:
            config.image_roots.append(config.upload_dir)
    embeddings = EmbeddingCache(model, config.cache_dir, max_pixels=config.max_pixels)
    decoder_lock = threading.Lock()
    prefill_lock = threading.Lock()

    app = FastAPI(title="segany annotation server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = config
    app.state.embeddings = embeddings

    app.add_middleware(_RequestGuard, config=config)  # outermost: before routing and the token

    # Every error is one JSON line; no traceback and no server path reaches the client.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _json_error(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _json_error(422, _validation_message(exc, request.headers.get("content-type", "")))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _json_error(500, f"internal server error ({type(exc).__name__}); the server log has the details")

    def require_token(request: Request) -> str:
        given = ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        elif request.method == "GET":
            given = request.query_params.get("token", "")
        if not given:
            raise HTTPException(401, "missing access token (Authorization: Bearer TOKEN)")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), config.token.encode()):
            raise HTTPException(403, "wrong access token")
        annotator = request.headers.get("x-annotator", "").strip() or config.annotator
        return re.sub(r"[^\w .@-]", "_", annotator)[:64]

    def image_row(image_id: int):
        try:
            row = config.store.image(image_id)
        except StoreError as exc:
            raise HTTPException(404, str(exc)) from None
        try:
            path = resolve_under_roots(row.path, config.image_roots)
        except PathOutsideRoots:
            raise HTTPException(403, f"image {image_id} lies outside this server's image roots") from None
        try:
            present = path.is_file()
        except OSError:
            present = False
        if not present:
            raise HTTPException(410, f"image file is gone: {path.name}")
        return row, path

    def check_pixels(row: Any) -> None:
        if row.width * row.height > config.max_pixels:
            raise HTTPException(
                413, f"image {row.id} has {row.width}x{row.height} pixels, more than the limit of {config.max_pixels}"
                " (--max-pixels)",
            )

    def image_error(exc: ImageError, path: Path, shown: str | None = None) -> HTTPException:
        message = str(exc).replace(str(path), shown or path.name).replace(path.name, shown or path.name)
        if isinstance(exc, ImageTooLarge) or "exceeds the limit" in message or "too many pixels" in message:
            return HTTPException(413, f"image too large: {message}")
        return HTTPException(400, f"not a readable image: {message}")

    def queue_order() -> list[int]:
        return [r.id for r in config.store.images()]

    # ------------------------------------------------------------------ page and assets

    @app.get("/")
    def index() -> Response:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in PAGE_FILES:
            raise HTTPException(404, "not found")
        return FileResponse(WEB_DIR / name, media_type=PAGE_FILES[name])

    @app.get("/vendor/ort/{name}")
    def vendor(name: str) -> Response:
        dist = ort_dist_dir()
        if name not in ORT_FILES:
            raise HTTPException(404, "not found")
        if dist is None:
            raise HTTPException(
                503, "onnxruntime-web is not installed: run `npm install` in src/segany/engine/web (or .ci/setup-extra.sh)"
            )
        media = {"js": "text/javascript", "mjs": "text/javascript", "wasm": "application/wasm"}[name.rsplit(".", 1)[1]]
        return FileResponse(dist / name, media_type=media)

    # ------------------------------------------------------------------ model

    @app.get("/api/model")
    def model_info(annotator: str = Depends(require_token)) -> dict:
        return {
            "img_size": model.img_size,
            "model_version": config.model_version,
            "is_trained": bool(getattr(model, "is_trained", False)),
            "annotator": annotator,
            "ort_available": ort_dist_dir() is not None,
            "max_pixels": config.max_pixels,
        }

    @app.get("/api/decoder.onnx")
    def decoder(_: str = Depends(require_token)) -> Response:
        from ..export.onnx import export_decoder

        suffix = "-uint8" if config.quantized_decoder else ""
        path = config.cache_dir / f"decoder-{embeddings.fingerprint}{suffix}.onnx"
        with decoder_lock:
            if not path.is_file():
                export_decoder(_decoder_export_copy(model), path, quantize=config.quantized_decoder)
        return FileResponse(path, media_type="application/octet-stream")

    # ------------------------------------------------------------------ images

    @app.get("/api/images")
    def list_images(_: str = Depends(require_token)) -> list[dict]:
        counts = config.store.mask_counts()
        return [
            {"id": r.id, "name": Path(r.path).name, "width": r.width, "height": r.height, "masks": counts.get(r.id, 0)}
            for r in config.store.images()
        ]

    @app.post("/api/images")
    def add_image(body: AddImage, _: str = Depends(require_token)) -> dict:
        try:
            path = resolve_under_roots(body.path, config.image_roots)
        except PathOutsideRoots as exc:
            raise HTTPException(403, f"path: {exc}") from None
        try:
            present = path.is_file()
        except OSError:
            present = False
        if not present:
            raise HTTPException(404, f"path: no such image file: {body.path[:200]}")
        try:
            w, h = image_size(path, config.max_pixels)
        except ImageError as exc:
            raise image_error(exc, path) from None
        try:
            image_id = config.store.add_image(path, w, h)
        except StoreError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"id": image_id, "width": w, "height": h}

    @app.get("/api/images/{image_id}/file")
    def image_file(image_id: Id, _: str = Depends(require_token)) -> Response:
        _, path = image_row(image_id)
        return FileResponse(path)

    @app.get("/api/images/{image_id}/embedding")
    def embedding(image_id: Id, _: str = Depends(require_token)) -> Response:
        row, path = image_row(image_id)
        check_pixels(row)
        try:
            features, original, inp = embeddings.get(path)
        except ImageError as exc:
            raise image_error(exc, path) from None
        order = queue_order()
        if image_id in order and config.prefetch_ahead > 0:
            i = order.index(image_id)
            ahead = [config.store.image(j) for j in order[i + 1 : i + 1 + config.prefetch_ahead]]
            embeddings.prefetch(
                [r.path for r in ahead if r.width * r.height <= config.max_pixels and Path(r.path).is_file()]
            )
        return Response(
            content=np.ascontiguousarray(features, dtype="<f4").tobytes(),
            media_type="application/octet-stream",
            headers={
                "X-Embedding-Shape": ",".join(str(v) for v in features.shape),
                "X-Original-Size": f"{original[0]},{original[1]}",
                "X-Input-Size": f"{inp[0]},{inp[1]}",
            },
        )

    @app.post("/api/upload")
    async def upload(
        request: Request,
        filename: Annotated[str, Query(min_length=1, max_length=1024)],
        _: str = Depends(require_token),
    ) -> dict:
        if config.upload_dir is None:
            raise HTTPException(403, "uploads are disabled (start the server with --upload-dir)")
        try:
            name = _safe_upload_name(filename)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        target = config.upload_dir / f"{uuid.uuid4().hex[:8]}-{name}"
        tmp = target.with_name(target.name + ".part")
        size = 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > config.max_upload_bytes:
                        raise HTTPException(413, f"upload larger than the limit of {config.max_upload_bytes} bytes")
                    f.write(chunk)
            if size == 0:
                raise HTTPException(400, "not a readable image: the upload is empty")
            try:
                # Decoding takes seconds on a large image: off the event loop, or every
                # other request (other annotators' saves included) waits for it.
                w, h = await run_in_threadpool(image_size, tmp, config.max_pixels)
            except ImageError as exc:
                raise image_error(exc, tmp, name) from None
            os.replace(tmp, target)
        except OSError as exc:
            raise HTTPException(507, f"cannot store the upload: {exc.strerror or type(exc).__name__}") from None
        finally:
            tmp.unlink(missing_ok=True)
        try:
            image_id = await run_in_threadpool(config.store.add_image, target, w, h)
        except BaseException:
            target.unlink(missing_ok=True)  # no file without its row
            raise
        return {"id": image_id, "name": target.name, "width": w, "height": h}

    # ------------------------------------------------------------------ masks

    @app.get("/api/images/{image_id}/masks")
    def list_masks(image_id: Id, runs: bool = False, _: str = Depends(require_token)) -> Response:
        """Accepted masks; ``runs=1`` adds uncompressed column-major runs (the page's format).

        A stored row that cannot be read (written by an older version that did not check
        RLEs) is left out and named in the ``X-Skipped-Masks`` header and the server log,
        so one bad row does not make the image unusable.
        """
        from ..masks import coco_rle_to_rle

        image_row(image_id)
        skipped: list[tuple[int, str]] = []
        rows = []
        for m in config.store.masks(image_id, skipped=skipped):
            row = m.to_json()
            if runs:
                row["runs"] = [int(c) for c in coco_rle_to_rle(m.rle)["counts"]]
            rows.append(row)
        headers = {"X-Skipped-Masks": ",".join(str(mid) for mid, _ in skipped)} if skipped else None
        return JSONResponse(rows, headers=headers)

    @app.post("/api/images/{image_id}/masks")
    def save_mask(image_id: Id, body: SaveMask, annotator: str = Depends(require_token)) -> JSONResponse:
        row, _ = image_row(image_id)
        if body.source not in SOURCES:
            raise HTTPException(400, f"source must be one of {list(SOURCES)}, got {body.source[:32]!r}")
        expected = (row.height, row.width)
        try:
            if body.rle is not None:
                if body.size is not None or body.counts is not None:
                    raise ValueError("give either rle (COCO) or size + counts, not both")
                rle = validate_rle(body.rle, expected, field="rle")
            else:
                if body.size is None or body.counts is None:
                    raise ValueError("give either rle (COCO) or size [h, w] + counts (uncompressed runs)")
                rle = validate_rle({"size": body.size, "counts": body.counts}, expected, field="")
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            mask_id = config.store.save_mask(
                image_id,
                rle,
                source=body.source,
                annotator=annotator,
                model_version=config.model_version,
                seconds=body.seconds,
                score=body.score,
                client_id=body.client_id,
                replaces=body.replaces,
            )
        except StoreError as exc:
            raise HTTPException(400, str(exc)) from None
        return JSONResponse({"id": mask_id}, status_code=201)

    @app.delete("/api/masks/{mask_id}")
    def delete_mask(mask_id: Id, _: str = Depends(require_token)) -> dict:
        if not config.store.delete_mask(mask_id):
            raise HTTPException(404, f"no mask with id {mask_id}")
        return {"deleted": mask_id}

    @app.post("/api/images/{image_id}/prefill")
    def prefill(image_id: Id, annotator: str = Depends(require_token)) -> dict:
        from .prefill import PrefillUnavailable, make_generator, prefill_image

        row, path = image_row(image_id)
        check_pixels(row)
        try:
            with prefill_lock:
                generator = make_generator(model, **config.prefill_settings)
                ids = prefill_image(
                    config.store, row, path, model, annotator=annotator, model_version=config.model_version,
                    generator=generator, max_pixels=config.max_pixels,
                )
        except PrefillUnavailable as exc:
            raise HTTPException(501, str(exc)) from None
        except ImageError as exc:
            raise image_error(exc, path) from None
        return {"added": ids}

    return app


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or a ``ValueError`` saying why not (for exit status 2).

    Binding here, before the model loads, turns a port out of range, a port in use or an
    unknown interface into one clear line instead of a traceback from inside uvicorn.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"--host {host!r}: not an address of this machine ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ValueError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


def serve(config: ServerConfig, host: str = "127.0.0.1", port: int = 8765, sock: socket.socket | None = None) -> None:
    """Run the server until interrupted, printing the page address with its token."""
    import uvicorn

    config.host = host
    sock = sock or listen_socket(host, port)
    app = create_app(config)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/?token={config.token}"
    print(
        f"segany annotation server: {len(config.store.images())} images, model {config.model_version} "
        f"on {model_placement(config.model)}",
        flush=True,
    )
    print(f"open {url}", flush=True)
    print(f"access token: {config.token}", flush=True)
    if host not in LOCAL_HOSTS:
        print(f"warning: listening on {host}: anyone who can reach it and knows the token can read the images",
              flush=True)
    started = time.time()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
    log.info("server stopped after %.0f s", time.time() - started)
