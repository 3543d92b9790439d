"""Masks: the accepted masks of an image, saving one, deleting one.

:func:`checked_rle` is the one place a saved mask is validated: the schema (:class:`SaveMask`)
refuses wrong types, ranges and unknown fields (422), then the RLE is checked completely
against the image's size before anything is stored (400), because a mask acknowledged once
is exported and trained on later.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from ...masks import coco_rle_to_rle, validate_rle
from ..security import Annotator
from ..store import MAX_CLICKS, MAX_CLIENT_ID, MAX_ID, SOURCES, ImageRow, StoreError
from .context import Context, Id

router = APIRouter()


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
    # prompts (clicks and boxes) the annotator placed for this mask, undone ones included: the
    # effort the report's clicks per mask measures; null = not counted (a mask made elsewhere)
    clicks: Annotated[StrictInt, Field(ge=0, le=MAX_CLICKS)] | None = None


def checked_rle(body: SaveMask, image: ImageRow) -> dict[str, Any]:
    """The mask of ``body`` as a COCO RLE, or a 400 naming the field at fault.

    ``source`` must be a data-engine stage and the RLE must decode to exactly the image's
    (h, w); which of the two forms was sent decides the field name in the message.
    """
    if body.source not in SOURCES:
        raise HTTPException(400, f"source must be one of {list(SOURCES)}, got {body.source[:32]!r}")
    expected = (image.height, image.width)
    try:
        if body.rle is not None:
            if body.size is not None or body.counts is not None:
                raise ValueError("give either rle (COCO) or size + counts, not both")
            return validate_rle(body.rle, expected, field="rle")
        if body.size is None or body.counts is None:
            raise ValueError("give either rle (COCO) or size [h, w] + counts (uncompressed runs)")
        return validate_rle({"size": body.size, "counts": body.counts}, expected, field="")
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


@router.get("/api/images/{image_id}/masks")
def list_masks(image_id: Id, ctx: Context, _: Annotator, runs: bool = False) -> Response:
    """Accepted masks; ``runs=1`` adds uncompressed column-major runs (the page's format).

    ``bbox`` is the store's: COCO's ``toBbox`` extents (``w = x_max - x_min + 1``), as in
    the export's ``coco.json``; the SA-1B export recomputes the official box instead.

    A stored row that cannot be read (written by an older version that did not check
    RLEs) is left out and named in the ``X-Skipped-Masks`` header and the server log,
    so one bad row does not make the image unusable.
    """
    ctx.image_on_disk(image_id)
    skipped: list[tuple[int, str]] = []
    rows = []
    for m in ctx.config.store.masks(image_id, skipped=skipped):
        row = m.to_json()
        if runs:
            row["runs"] = [int(c) for c in coco_rle_to_rle(m.rle)["counts"]]
        rows.append(row)
    headers = {"X-Skipped-Masks": ",".join(str(mid) for mid, _ in skipped)} if skipped else None
    return JSONResponse(rows, headers=headers)


@router.post("/api/images/{image_id}/masks")
def save_mask(image_id: Id, body: SaveMask, ctx: Context, annotator: Annotator) -> JSONResponse:
    """Store one mask; acknowledged (201) only after the transaction commits.

    The mask records the served model's version (``config.model_version``: the registered
    name with ``segany serve --model-version``), so the report can tell the models apart.
    """
    config = ctx.config
    row, _ = ctx.image_on_disk(image_id)
    rle = checked_rle(body, row)
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
            clicks=body.clicks,
        )
    except StoreError as exc:
        raise HTTPException(400, str(exc)) from None
    return JSONResponse({"id": mask_id}, status_code=201)


@router.delete("/api/masks/{mask_id}")
def delete_mask(mask_id: Id, ctx: Context, _: Annotator) -> dict:
    if not ctx.config.store.delete_mask(mask_id):
        raise HTTPException(404, f"no mask with id {mask_id}")
    return {"deleted": mask_id}
