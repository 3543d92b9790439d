"""Many images through one generator (the batched API).

The model is loaded once and its weights stay warm; each image is embedded and decoded in
turn, so memory stays that of one image whatever the number of images. Paths are read with
:func:`segany.image_io.load_image`; a bad one gives an :class:`ImageError` in its slot
(``errors="return"``) or stops the run (``errors="raise"``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..image_io import ImageError, load_image
from .generator import SamAutomaticMaskGenerator

ImageLike = np.ndarray | str | os.PathLike


def generate_many(
    generator: SamAutomaticMaskGenerator, images: Iterable[ImageLike], errors: str = "raise"
) -> Iterator[list[dict[str, Any]] | ImageError]:
    """Yield ``generator.generate(image)`` for each image (array or path), in order."""
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
    for item in images:
        try:
            image = item if isinstance(item, np.ndarray) else load_image(item)
        except ImageError as exc:
            if errors == "raise":
                raise
            yield exc
            continue
        yield generator.generate(image)


def generate_batch(
    generator: SamAutomaticMaskGenerator, images: Iterable[ImageLike], errors: str = "raise"
) -> list[list[dict[str, Any]] | ImageError]:
    """List form of :func:`generate_many`."""
    return list(generate_many(generator, images, errors=errors))
