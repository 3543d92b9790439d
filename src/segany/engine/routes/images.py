"""Images: the list, registering a file already inside the roots, serving a file, uploads.

Clients name images by id; the only paths they give (``POST /api/images {"path"}``) go
through the path guard, and an upload's name is reduced to a safe base name. Every image
is decoded once before it is registered (a corrupt file is refused, not stored), in a worker
thread and under the pixel cap. The size check is looked up on ``image_files`` at call time,
so the tests can watch where decoding runs.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ...atomic_files import atomic_path
from ...image_io import ImageError
from .. import image_files
from ..security import Annotator, PathOutsideRoots, is_present_file, resolve_under_roots, safe_upload_name
from ..store import StoreError
from .context import Context, Id, image_error

router = APIRouter()


class AddImage(BaseModel):
    """Register an image that is already inside the roots."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=4096)


@router.get("/api/images")
def list_images(ctx: Context, _: Annotator) -> list[dict]:
    store = ctx.config.store
    counts = store.mask_counts()
    return [
        {"id": r.id, "name": Path(r.path).name, "width": r.width, "height": r.height, "masks": counts.get(r.id, 0)}
        for r in store.images()
    ]


@router.post("/api/images")
def add_image(body: AddImage, ctx: Context, _: Annotator) -> dict:
    config = ctx.config
    try:
        path = resolve_under_roots(body.path, config.image_roots)
    except PathOutsideRoots as exc:
        raise HTTPException(403, f"path: {exc}") from None
    if not is_present_file(path):
        raise HTTPException(404, f"path: no such image file: {body.path[:200]}")
    try:
        w, h = image_files.image_size(path, config.max_pixels)
    except ImageError as exc:
        raise image_error(exc, path) from None
    try:
        image_id = config.store.add_image(path, w, h)
    except StoreError as exc:
        raise HTTPException(400, str(exc)) from None
    return {"id": image_id, "width": w, "height": h}


@router.get("/api/images/{image_id}/file")
def image_file(image_id: Id, ctx: Context, _: Annotator) -> Response:
    _, path = ctx.image_on_disk(image_id)
    return FileResponse(path)


@router.post("/api/upload")
async def upload(
    request: Request,
    filename: Annotated[str, Query(min_length=1, max_length=1024)],
    ctx: Context,
    _: Annotator,
) -> dict:
    """Stream the body into a hidden temporary file beside its final name (the cap is counted
    as it arrives), decode it off the event loop, then move it into place; a refused upload
    leaves nothing on disk, and a file is never left without its row."""
    config = ctx.config
    if config.upload_dir is None:
        raise HTTPException(403, "uploads are disabled (start the server with --upload-dir)")
    try:
        name = safe_upload_name(filename)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    target = config.upload_dir / f"{uuid.uuid4().hex[:8]}-{name}"
    size = 0
    try:
        with atomic_path(target) as tmp:  # any refusal below removes the temp file
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
                w, h = await run_in_threadpool(image_files.image_size, tmp, config.max_pixels)
            except ImageError as exc:
                raise image_error(exc, tmp, name) from None
    except OSError as exc:
        raise HTTPException(507, f"cannot store the upload: {exc.strerror or type(exc).__name__}") from None
    try:
        image_id = await run_in_threadpool(config.store.add_image, target, w, h)
    except BaseException:
        target.unlink(missing_ok=True)  # no file without its row
        raise
    return {"id": image_id, "name": target.name, "width": w, "height": h}
