"""The annotation page and the files it loads: no data, so no token.

Only a fixed list of file names is served (never a path a client builds), and
onnxruntime-web's dist files come from npm, not from the repository, so a missing install
is a clear 503 rather than a broken page.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response

WEB_DIR = Path(__file__).parent.parent / "web"
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs")
PAGE_FILES = {"index.html": "text/html", "app.js": "text/javascript", "threads.js": "text/javascript", "style.css": "text/css"}

router = APIRouter()


def ort_dist_dir() -> Path | None:
    """Where onnxruntime-web's dist files are (installed by npm, never committed)."""
    candidates = [os.environ.get("SEGANY_ORT_WEB_DIR"), WEB_DIR / "node_modules" / "onnxruntime-web" / "dist"]
    for c in candidates:
        if c and all((Path(c) / f).is_file() for f in ORT_FILES):
            return Path(c)
    return None


@router.get("/")
def index() -> Response:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")


@router.get("/favicon.ico")
def favicon() -> Response:
    return Response(status_code=204)


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in PAGE_FILES:
        raise HTTPException(404, "not found")
    return FileResponse(WEB_DIR / name, media_type=PAGE_FILES[name])


@router.get("/vendor/ort/{name}")
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
