"""The annotation server's HTTP API, one router per resource.

=============  ==========================================================================
``page``       ``/``, ``/static/*``, ``/vendor/ort/*``: the page, no token
``model``      ``/api/model``, ``/api/decoder.onnx``
``images``     ``/api/images`` (list, register), ``/api/images/{id}/file``, ``/api/upload``
``embeddings`` ``/api/images/{id}/embedding``
``masks``      ``/api/images/{id}/masks`` (list, save), ``/api/masks/{id}`` (delete)
``prefill``    ``/api/images/{id}/prefill``
``rating``     ``/``, ``/rate/*``, ``/api/rate/*``: the blind mask-quality rating page, served
               *instead of* all the above (``segany serve --rate``), so a rater cannot ask
               the annotation API for a mask's source
=============  ==========================================================================

Each module holds its routes and the request models and checks of its resource; what they
share (the served state, the image lookup) is in ``context``, and the rules that hold for
every request (token, Host, body caps, paths) in ``engine.security``.
"""

from __future__ import annotations

from fastapi import APIRouter

from . import embeddings, images, masks, model, page, prefill, rating

ROUTERS: tuple[APIRouter, ...] = (
    page.router,
    model.router,
    images.router,
    embeddings.router,
    masks.router,
    prefill.router,
)

RATING_ROUTERS: tuple[APIRouter, ...] = (rating.page_router, rating.router)
