"""Reading images and bringing arrays to the HxWx3 uint8 RGB form the model expects.

Every way an image can be wrong (unreadable file, decompression bomb, empty, 16-bit,
grayscale, alpha, float, NaN) ends here in either a documented conversion or a
``ValueError`` that names the problem, instead of a shape error deep inside the model.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Largest image accepted from disk (pixels); ~ 16k x 12k. PIL's own bomb check is a warning
# only below twice its limit, so we check explicitly and say what to do.
MAX_IMAGE_PIXELS = 200_000_000


class ImageError(ValueError):
    """An image cannot be used: unreadable, empty, too large or of an unsupported kind."""


def load_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, applying its EXIF orientation."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"{path}: {w}x{h} pixels exceeds the limit of {max_pixels} pixels")
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im)
            else:
                arr = np.asarray(im.convert("RGBA" if "A" in im.getbands() else "RGB"))
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None
    return to_rgb_uint8(arr, name=str(path))


def to_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Convert an array to HxWx3 uint8.

    - HxW or HxWx1 grayscale: replicated to 3 channels.
    - HxWx4 (RGBA): alpha dropped.
    - uint16: scaled by 255/65535, with a warning; other integer types must hold 0..255.
    - float in [0, 1]: scaled by 255; float in [0, 255]: rounded; anything else refused.
    - bool: 0/255.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ImageError(f"{name} must be HxW, HxWx1, HxWx3 or HxWx4; got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"{name} is empty (shape {image.shape})")
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif image.dtype == np.uint8:
        pass
    elif image.dtype == np.uint16:
        warnings.warn(f"{name}: 16-bit image scaled to 8 bits", stacklevel=3)
        image = np.round(image.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif np.issubdtype(image.dtype, np.integer):
        lo, hi = int(image.min()), int(image.max())
        if lo < 0 or hi > 255:
            raise ImageError(
                f"{name} is {image.dtype} with values in [{lo}, {hi}]; expected 0..255 "
                "(or a uint16 array for 16-bit images)"
            )
        image = image.astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ImageError(f"{name} contains NaN or infinite values")
        lo, hi = float(image.min()), float(image.max())
        if lo >= 0.0 and hi <= 1.0:
            image = np.round(image * 255.0).astype(np.uint8)
        elif lo >= 0.0 and hi <= 255.0:
            image = np.round(image).astype(np.uint8)
        else:
            raise ImageError(f"{name} is float with values in [{lo:g}, {hi:g}]; expected [0, 1] or [0, 255]")
    else:
        raise ImageError(f"{name} has unsupported dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)
