"""What every router of the annotation server shares: the served state, and the one way a
route turns an image id into a file it may read.

The state lives on ``app.state.context`` (one per app, so two apps in one process, as in the
tests, never share a cache or a lock) and reaches a route as the ``Context`` parameter.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi import Path as PathParam

from ...image_io import ImageError
from ..embedding_cache import EmbeddingCache
from ..image_files import ImageTooLarge
from ..security import PathOutsideRoots, is_present_file, resolve_under_roots
from ..server_config import ServerConfig
from ..store import MAX_ID, ImageRow, StoreError

Id = Annotated[int, PathParam(ge=1, le=MAX_ID, description="a database id (1 .. 2**63 - 1)")]
"""A database id in a URL: outside 1 .. 2**63 - 1 it is a 422 naming the parameter."""


@dataclass
class ServerContext:
    """The prepared config, the model, its embedding cache and the locks of one app.

    ``decoder_lock`` makes concurrent first requests export the ONNX decoder once;
    ``prefill_lock`` runs one pre-fill at a time (each runs the automatic generator over a whole image).
    """

    config: ServerConfig
    embeddings: EmbeddingCache
    decoder_lock: threading.Lock = field(default_factory=threading.Lock)
    prefill_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def for_config(cls, config: ServerConfig) -> ServerContext:
        """The context of a config that :func:`prepare_config` has checked."""
        return cls(config, EmbeddingCache(config.model, config.cache_dir, max_pixels=config.max_pixels))

    @property
    def model(self) -> Any:
        return self.config.model

    def image_on_disk(self, image_id: int) -> tuple[ImageRow, Path]:
        """The image's row and its resolved file.

        404 if there is no such row; 403 if the stored path resolves outside this server's
        roots (another folder was served, a symlink changed); 410 if the file is gone.
        """
        try:
            row = self.config.store.image(image_id)
        except StoreError as exc:
            raise HTTPException(404, str(exc)) from None
        try:
            path = resolve_under_roots(row.path, self.config.image_roots)
        except PathOutsideRoots:
            raise HTTPException(403, f"image {image_id} lies outside this server's image roots") from None
        if not is_present_file(path):
            raise HTTPException(410, f"image file is gone: {path.name}")
        return row, path

    def check_pixels(self, row: ImageRow) -> None:
        """413 for an image whose registered size is above ``--max-pixels``, before any decode."""
        max_pixels = self.config.max_pixels
        if row.width * row.height > max_pixels:
            raise HTTPException(
                413, f"image {row.id} has {row.width}x{row.height} pixels, more than the limit of {max_pixels}"
                " (--max-pixels)",
            )


async def server_context(request: Request) -> ServerContext:
    """The app's :class:`ServerContext` (async: a plain lookup needs no worker thread)."""
    return request.app.state.context


Context = Annotated[ServerContext, Depends(server_context)]


def image_error(exc: ImageError, path: Path, shown: str | None = None) -> HTTPException:
    """An image that cannot be used, as a client error: 413 if it is too large, else 400.

    The message names the file as ``shown`` (an upload's name) or by its base name, never by
    its folder.
    """
    message = str(exc).replace(str(path), shown or path.name).replace(path.name, shown or path.name)
    if isinstance(exc, ImageTooLarge) or "exceeds the limit" in message or "too many pixels" in message:
        return HTTPException(413, f"image too large: {message}")
    return HTTPException(400, f"not a readable image: {message}")
