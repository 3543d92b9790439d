"""Image files as the annotation server accepts them: which names, how many pixels, and
reading their size without letting one file exhaust the machine.

A 0.5 MB PNG can announce 13,000 x 13,000 pixels; decoding it costs gigabytes. So the size
is read from the header first and refused above a cap, and full decodes (which also refuse
corrupt files) run at most ``MAX_CONCURRENT_DECODES`` at a time, in worker threads.
"""

from __future__ import annotations

import threading
from pathlib import Path

from .. import image_io
from ..image_io import ImageError, load_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# Images above this many pixels are refused before decoding. Below PIL's own bomb limit
# (89 M pixels, and only a warning up to twice that): a 0.5 MB 13,000 x 13,000 PNG decodes to
# 0.5 GB of RGB and several GB in the model's preprocessing. Lowered further if image_io's
# global cap (MAX_PIXELS; MAX_IMAGE_PIXELS in older versions) is lower.
DEFAULT_MAX_PIXELS = min(
    50_000_000, int(getattr(image_io, "MAX_PIXELS", getattr(image_io, "MAX_IMAGE_PIXELS", 50_000_000)))
)
MAX_CONCURRENT_DECODES = 2  # full image decodes at once (each can take hundreds of MB)


class ImageTooLarge(ImageError):
    """An image whose header announces more pixels than the server accepts."""


_decode_slots = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)


def image_header_size(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the file's header, refusing images above ``max_pixels``.

    Reads only the header, so a decompression bomb costs nothing; raises
    :class:`ImageTooLarge` or :class:`ImageError` (messages name the file, not its folder).
    """
    from PIL import Image

    name = Path(path).name
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{name} is far larger than the limit of {max_pixels} pixels") from None
    except Exception as exc:
        raise ImageError(f"cannot read image {name}: {type(exc).__name__}") from None
    if w * h > max_pixels:
        raise ImageTooLarge(f"{name} has {w}x{h} = {w * h} pixels, more than the limit of {max_pixels} (--max-pixels)")
    if w <= 0 or h <= 0:
        raise ImageError(f"{name} is empty ({w}x{h} pixels)")
    return int(w), int(h)


def image_size(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an image file, decoding it fully (so corrupt files are refused).

    Blocking and memory-hungry: call it from a worker thread, never on the event loop. At
    most ``MAX_CONCURRENT_DECODES`` decodes run at once.
    """
    image_header_size(path, max_pixels)
    with _decode_slots:
        image = load_image(path, max_pixels)
    return int(image.shape[1]), int(image.shape[0])
