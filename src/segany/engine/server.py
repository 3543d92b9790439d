"""The annotation server (FastAPI): images, embeddings, the ONNX decoder and the mask store.

The split follows the paper's data engine (section 4): the server runs the heavy image
encoder once per image and serves the 64x64x256 embedding; the page runs the prompt
encoder + mask decoder itself (onnxruntime-web) so every click answers in milliseconds
without a round trip. The server only stores what the annotator accepts.

Security model (a tool that reads the annotator's disk): it listens on 127.0.0.1 unless
told otherwise, every ``/api`` call needs the access token printed at start (header
``Authorization: Bearer TOKEN``, or ``?token=`` on GETs), no path can resolve outside
the image roots (symlinks included), uploads are capped in size and must decode as images.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel

from ..image_io import ImageError, load_image
from ..masks import coco_encode_rle
from .embedding_cache import EmbeddingCache
from .store import SOURCES, Store, StoreError

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs")
PAGE_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
DEFAULT_MAX_UPLOAD = 32 * 1024 * 1024
PREFETCH_AHEAD = 2


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
    model: Any = None  # a segany Sam; the default model when None
    model_version: str | None = None
    prefetch_ahead: int = PREFETCH_AHEAD
    prefill_settings: dict = field(default_factory=dict)  # overrides of prefill.PREFILL_SETTINGS
    quantized_decoder: bool = False  # serve the uint8-quantised decoder (about 16% less CPU in wasm)


class AddImage(BaseModel):
    """Register an image that is already inside the roots."""

    path: str


class SaveMask(BaseModel):
    """One accepted mask: uncompressed column-major runs (what the page sends) or a COCO RLE."""

    size: list[int] | None = None
    counts: list[int] | None = None  # uncompressed column-major runs, as the page sends
    rle: dict | None = None  # or a COCO RLE
    source: str = "manual"
    seconds: float = 0.0
    score: float | None = None
    client_id: str | None = None
    replaces: int | None = None

class PathOutsideRoots(ValueError):
    """A path that resolves outside every image root."""


def resolve_under_roots(path: str | Path, roots: list[Path]) -> Path:
    """Resolve ``path`` (relative paths against the first root) and refuse anything that is
    not inside one of ``roots`` once symlinks and ``..`` are resolved."""
    raw = str(path)
    if "\x00" in raw:
        raise PathOutsideRoots("path contains a NUL byte")
    p = Path(raw)
    if not p.is_absolute():
        if not roots:
            raise PathOutsideRoots("no image roots configured")
        p = roots[0] / p
    resolved = p.resolve()
    for root in roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    raise PathOutsideRoots(f"{path} is outside the image roots")


def _safe_upload_name(name: str) -> str:
    """The last path component, restricted to a conservative character set."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    if not base or Path(base).suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"upload name must end with one of {sorted(IMAGE_SUFFIXES)}, got {name!r}")
    return base[:120]


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, decoding it fully (so corrupt files are refused)."""
    image = load_image(path)
    return int(image.shape[1]), int(image.shape[0])


def model_version_of(model: Any) -> str:
    """A short name identifying the model that proposed masks (for the statistics)."""
    from ..embeddings import encoder_fingerprint

    kind = "segany_default" if getattr(model, "is_trained", False) else f"untrained-{model.img_size}px"
    return f"{kind}@{encoder_fingerprint(model)[:8]}"


def create_app(config: ServerConfig):  # noqa: C901 - one closure per route keeps the app readable
    """The FastAPI app; ``config`` is kept on ``app.state.config``."""
    if config.model is None:
        from ..default_model import load_default_model

        config.model = load_default_model()
    model = config.model.cpu().eval()
    config.model_version = config.model_version or model_version_of(model)
    config.image_roots = [Path(r).resolve() for r in config.image_roots]
    config.cache_dir = Path(config.cache_dir)
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    if config.upload_dir is not None:
        config.upload_dir = Path(config.upload_dir).resolve()
        config.upload_dir.mkdir(parents=True, exist_ok=True)
        if config.upload_dir not in config.image_roots:
            config.image_roots.append(config.upload_dir)
    embeddings = EmbeddingCache(model, config.cache_dir)
    decoder_lock = threading.Lock()
    prefill_lock = threading.Lock()

    app = FastAPI(title="segany annotation server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = config
    app.state.embeddings = embeddings

    @app.middleware("http")
    async def isolation_headers(request: Request, call_next):
        # Cross-origin isolation lets onnxruntime-web use SharedArrayBuffer (wasm threads).
        response = await call_next(request)
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        response.headers["Cross-Origin-Embedder-Policy"] = "require-corp"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response

    def require_token(request: Request) -> str:
        given = ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        elif request.method == "GET":
            given = request.query_params.get("token", "")
        if not given:
            raise HTTPException(401, "missing access token (Authorization: Bearer TOKEN)")
        if not hmac.compare_digest(given.encode(), config.token.encode()):
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
        except PathOutsideRoots as exc:
            raise HTTPException(403, str(exc)) from None
        if not path.is_file():
            raise HTTPException(410, f"image file is gone: {path.name}")
        return row, path

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
        }

    @app.get("/api/decoder.onnx")
    def decoder(_: str = Depends(require_token)) -> Response:
        from ..export.onnx import export_decoder

        suffix = "-uint8" if config.quantized_decoder else ""
        path = config.cache_dir / f"decoder-{embeddings.fingerprint}{suffix}.onnx"
        with decoder_lock:
            if not path.is_file():
                export_decoder(model, path, quantize=config.quantized_decoder)
        return FileResponse(path, media_type="application/octet-stream")

    # ------------------------------------------------------------------ images

    @app.get("/api/images")
    def list_images(_: str = Depends(require_token)) -> list[dict]:
        counts: dict[int, int] = {}
        for m in config.store.masks():
            counts[m.image_id] = counts.get(m.image_id, 0) + 1
        return [
            {"id": r.id, "name": Path(r.path).name, "width": r.width, "height": r.height, "masks": counts.get(r.id, 0)}
            for r in config.store.images()
        ]

    @app.post("/api/images")
    def add_image(body: AddImage, _: str = Depends(require_token)) -> dict:
        try:
            path = resolve_under_roots(body.path, config.image_roots)
        except PathOutsideRoots as exc:
            raise HTTPException(403, str(exc)) from None
        if not path.is_file():
            raise HTTPException(404, f"no such image file: {body.path}")
        try:
            w, h = image_size(path)
        except ImageError as exc:
            raise HTTPException(400, f"not a readable image: {exc}") from None
        return {"id": config.store.add_image(path, w, h), "width": w, "height": h}

    @app.get("/api/images/{image_id}/file")
    def image_file(image_id: int, _: str = Depends(require_token)) -> Response:
        _, path = image_row(image_id)
        return FileResponse(path)

    @app.get("/api/images/{image_id}/embedding")
    def embedding(image_id: int, _: str = Depends(require_token)) -> Response:
        row, path = image_row(image_id)
        try:
            features, original, inp = embeddings.get(path)
        except ImageError as exc:
            raise HTTPException(400, f"not a readable image: {exc}") from None
        order = queue_order()
        if image_id in order and config.prefetch_ahead > 0:
            i = order.index(image_id)
            ahead = [config.store.image(j).path for j in order[i + 1 : i + 1 + config.prefetch_ahead]]
            embeddings.prefetch([p for p in ahead if Path(p).is_file()])
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
    async def upload(request: Request, filename: str, _: str = Depends(require_token)) -> dict:
        if config.upload_dir is None:
            raise HTTPException(403, "uploads are disabled (start the server with --upload-dir)")
        try:
            name = _safe_upload_name(filename)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_upload_bytes:
            raise HTTPException(413, f"upload larger than the limit of {config.max_upload_bytes} bytes")
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
            try:
                w, h = image_size(tmp)
            except ImageError as exc:
                raise HTTPException(400, f"not a readable image: {exc}") from None
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return {"id": config.store.add_image(target, w, h), "name": target.name, "width": w, "height": h}

    # ------------------------------------------------------------------ masks

    @app.get("/api/images/{image_id}/masks")
    def list_masks(image_id: int, runs: bool = False, _: str = Depends(require_token)) -> list[dict]:
        """Accepted masks; ``runs=1`` adds uncompressed column-major runs (the page's format)."""
        from ..masks import coco_rle_to_rle

        image_row(image_id)
        rows = []
        for m in config.store.masks(image_id):
            row = m.to_json()
            if runs:
                row["runs"] = [int(c) for c in coco_rle_to_rle(m.rle)["counts"]]
            rows.append(row)
        return rows

    @app.post("/api/images/{image_id}/masks")
    def save_mask(image_id: int, body: SaveMask, annotator: str = Depends(require_token)) -> JSONResponse:
        row, _ = image_row(image_id)
        if body.source not in SOURCES:
            raise HTTPException(400, f"source must be one of {SOURCES}")
        if body.rle is not None:
            rle = body.rle
            if not isinstance(rle.get("counts"), str):
                raise HTTPException(400, "rle must be a COCO RLE with string counts")
        else:
            if body.size is None or body.counts is None or len(body.size) != 2:
                raise HTTPException(400, "give either rle (COCO) or size [h, w] + counts (uncompressed runs)")
            h, w = body.size
            if any(c < 0 for c in body.counts) or sum(body.counts) != h * w:
                raise HTTPException(400, f"counts must be non-negative runs summing to h*w = {h * w}")
            rle = coco_encode_rle({"size": [h, w], "counts": body.counts})
        if [int(v) for v in rle.get("size", [])] != [row.height, row.width]:
            raise HTTPException(400, f"mask size {rle.get('size')} does not match the image ({row.height}, {row.width})")
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
    def delete_mask(mask_id: int, _: str = Depends(require_token)) -> dict:
        if not config.store.delete_mask(mask_id):
            raise HTTPException(404, f"no mask with id {mask_id}")
        return {"deleted": mask_id}

    @app.post("/api/images/{image_id}/prefill")
    def prefill(image_id: int, annotator: str = Depends(require_token)) -> dict:
        from .prefill import PrefillUnavailable, make_generator, prefill_image

        row, path = image_row(image_id)
        try:
            with prefill_lock:
                generator = make_generator(model, **config.prefill_settings)
                ids = prefill_image(
                    config.store, row, path, model, annotator=annotator, model_version=config.model_version,
                    generator=generator,
                )
        except PrefillUnavailable as exc:
            raise HTTPException(501, str(exc)) from None
        return {"added": ids}

    return app


def serve(config: ServerConfig, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the server until interrupted, printing the page address with its token."""
    import uvicorn

    app = create_app(config)
    url = f"http://{host}:{port}/?token={config.token}"
    print(f"segany annotation server: {len(config.store.images())} images, model {config.model_version}", flush=True)
    print(f"open {url}", flush=True)
    print(f"access token: {config.token}", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: anyone who can reach it and knows the token can read the images",
              flush=True)
    started = time.time()
    uvicorn.run(app, host=host, port=port, log_level="warning")
    log.info("server stopped after %.0f s", time.time() - started)
