"""An image's embedding, the one heavy computation the server does for the page.

Served as raw little-endian float32 with its shape and the image's original and input sizes
in headers (what the page's decoder feeds need). Each request also starts computing the next
``prefetch_ahead`` images in the queue, so moving to the next image rarely waits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi import APIRouter
from fastapi.responses import Response

from ...image_io import ImageError
from ..security import Annotator
from .context import Context, Id, ServerContext, image_error

router = APIRouter()


@router.get("/api/images/{image_id}/embedding")
def embedding(image_id: Id, ctx: Context, _: Annotator) -> Response:
    row, path = ctx.image_on_disk(image_id)
    ctx.check_pixels(row)
    try:
        features, original, inp = ctx.embeddings.get(path)
    except ImageError as exc:
        raise image_error(exc, path) from None
    _prefetch_after(ctx, image_id)
    return Response(
        content=np.ascontiguousarray(features, dtype="<f4").tobytes(),
        media_type="application/octet-stream",
        headers={
            "X-Embedding-Shape": ",".join(str(v) for v in features.shape),
            "X-Original-Size": f"{original[0]},{original[1]}",
            "X-Input-Size": f"{inp[0]},{inp[1]}",
        },
    )


def _prefetch_after(ctx: ServerContext, image_id: int) -> None:
    """Queue the images after ``image_id`` that are under the pixel cap and still on disk."""
    config = ctx.config
    order = [r.id for r in config.store.images()]
    if image_id in order and config.prefetch_ahead > 0:
        i = order.index(image_id)
        ahead = [config.store.image(j) for j in order[i + 1 : i + 1 + config.prefetch_ahead]]
        ctx.embeddings.prefetch(
            [r.path for r in ahead if r.width * r.height <= config.max_pixels and Path(r.path).is_file()]
        )
