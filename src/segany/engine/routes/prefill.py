"""The semi-automatic stage from the page: pre-fill one image with automatic masks.

The masks are stored with ``source=prefilled`` (accepted but editable). The generator is
looked up on ``engine.prefill`` at call time, so tests can replace it.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from ...image_io import ImageError
from .. import prefill as engine_prefill
from ..security import Annotator
from .context import Context, Id, image_error

router = APIRouter()


@router.post("/api/images/{image_id}/prefill")
def prefill(image_id: Id, ctx: Context, annotator: Annotator) -> dict:
    config = ctx.config
    row, path = ctx.image_on_disk(image_id)
    ctx.check_pixels(row)
    try:
        with ctx.prefill_lock:
            generator = engine_prefill.make_generator(ctx.model, **config.prefill_settings)
            ids = engine_prefill.prefill_image(
                config.store, row, path, ctx.model, annotator=annotator, model_version=config.model_version,
                generator=generator, max_pixels=config.max_pixels,
            )
    except engine_prefill.PrefillUnavailable as exc:
        raise HTTPException(501, str(exc)) from None
    except ImageError as exc:
        raise image_error(exc, path) from None
    return {"added": ids}
