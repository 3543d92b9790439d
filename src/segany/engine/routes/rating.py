"""The mask-quality rating page (``segany serve IMAGES --db DB --rate``): one mask at a time,
blind to its source, rated 1-10.

Blind by construction: these routes send a rating item's opaque id, its image and its mask,
and nothing else about it (no source, model version, mask or image id, file name, score or
annotator of the mask). A rating server mounts only these routers, so the annotation API that
lists masks with their sources is not there to be asked either.

=====================================  =================================================
``GET /``, ``/rate/{file}``            the rating page and its script (no data, no token)
``GET /api/rate/next``                 the annotator's next mask (their own seeded order)
``GET /api/rate/items/{id}/image``     the image of an item
``POST /api/rate/items/{id}/rating``   ``{"rating": 1..10, "seconds": s}``: 201 new, 200 the
                                       same rating again, 409 another one (ratings are final)
=====================================  =================================================
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from ...masks import coco_rle_to_rle
from .. import ratings
from ..security import Annotator
from ..store import RATING_MAX, RATING_MIN, RatingConflict, StoreError
from .context import Context
from .page import WEB_DIR

page_router = APIRouter()
router = APIRouter()

RATE_FILES = {"rate.js": "text/javascript", "rate.css": "text/css", "style.css": "text/css"}

ItemId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{16}$", description="an opaque rating-item id (16 hex digits)")]
"""A rating item in a URL: anything but 16 lower-case hex digits is a 422 naming the parameter."""


class SaveRating(BaseModel):
    """One rating of the mask shown: an integer from 1 to 10 and the seconds it took."""

    model_config = ConfigDict(extra="forbid")

    rating: Annotated[StrictInt, Field(ge=RATING_MIN, le=RATING_MAX)]
    seconds: float = Field(0.0, ge=0.0, le=1e7, allow_inf_nan=False)


@page_router.get("/")
def rate_page() -> Response:
    return FileResponse(WEB_DIR / "rate.html", media_type="text/html")


@page_router.get("/favicon.ico")
def favicon() -> Response:
    return Response(status_code=204)


@page_router.get("/rate/{name}")
def rate_file(name: str) -> Response:
    if name not in RATE_FILES:
        raise HTTPException(404, "not found")
    return FileResponse(WEB_DIR / name, media_type=RATE_FILES[name])


@router.get("/api/rate/next")
def next_item(ctx: Context, annotator: Annotator) -> dict:
    """The annotator's next unrated mask on the served images, as uncompressed column-major
    runs (the page's format); ``item`` is null once they have rated the whole pool."""
    store = ctx.config.store
    try:
        found = ratings.next_item(store, annotator, ratings.servable_images(store, ctx.config.image_roots))
    except ratings.EmptyPool as exc:
        raise HTTPException(404, str(exc)) from None
    progress = {"annotator": annotator, "rated": found.rated, "remaining": found.remaining}
    if found.item is None:
        return {"item": None, **progress}
    height, width = found.item.rle["size"]
    runs = [int(c) for c in coco_rle_to_rle(found.item.rle)["counts"]]
    return {"item": found.item.id, "width": int(width), "height": int(height), "runs": runs, **progress}


@router.get("/api/rate/items/{item_id}/image")
def item_image(item_id: ItemId, ctx: Context, _: Annotator) -> Response:
    try:
        item = ctx.config.store.rating_item(item_id)
    except StoreError as exc:
        raise HTTPException(404, str(exc)) from None
    _, path = ctx.image_on_disk(item.image_id)
    return FileResponse(path)  # no file name: it could tell where the mask came from


@router.post("/api/rate/items/{item_id}/rating")
def save_rating(item_id: ItemId, body: SaveRating, ctx: Context, annotator: Annotator) -> JSONResponse:
    """Store the rating; acknowledged only after the transaction commits."""
    try:
        rating_id, new = ctx.config.store.save_rating(item_id, annotator, body.rating, body.seconds)
    except RatingConflict as exc:
        raise HTTPException(409, str(exc)) from None
    except StoreError as exc:
        raise HTTPException(404, str(exc)) from None
    return JSONResponse({"item": item_id, "rating": body.rating, "id": rating_id}, status_code=201 if new else 200)
