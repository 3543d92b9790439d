"""Reading images and bringing arrays to the HxWx3 uint8 RGB form the model expects.

Every way an image can be wrong (unreadable, empty or truncated file, decompression bomb,
16-bit, CMYK, palette, animated, grayscale, alpha, float, NaN) ends here in either a
documented conversion or a ``ValueError`` that names the problem, instead of a shape error
deep inside the model or a machine out of memory.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Largest image accepted from disk, in pixels (e.g. 8660 x 5773). Why this value: decoding
# costs ~3 bytes per pixel and the model's preprocessing several times that, so a 0.5 MB PNG
# of 13,000 x 13,000 pixels cost 6 GB; 50 M pixels stays well inside a laptop's memory and is
# below Pillow's own decompression-bomb limit (~89 M, which only warns below twice that).
# The header's size is checked before any pixel is decoded. Override per process with the
# environment variable SEGANY_MAX_PIXELS, or per call with ``max_pixels=``.
MAX_PIXELS = 50_000_000
MAX_IMAGE_PIXELS = MAX_PIXELS  # the name earlier versions used
MAX_PIXELS_ENV = "SEGANY_MAX_PIXELS"


class ImageError(ValueError):
    """An image cannot be used: unreadable, empty, too large or of an unsupported kind."""


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel cap in force: ``max_pixels`` if given, else ``$SEGANY_MAX_PIXELS``, else
    :data:`MAX_PIXELS`."""
    if max_pixels is not None:
        return int(max_pixels)
    text = os.environ.get(MAX_PIXELS_ENV)
    if text is None or not text.strip():
        return MAX_PIXELS
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ImageError(f"{MAX_PIXELS_ENV}={text!r} must be a positive whole number of pixels")
    return value


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, applying its EXIF orientation.

    - the pixel count is checked from the header, before decoding (see :data:`MAX_PIXELS`);
    - 16-bit images are scaled to 8 bits (with a warning), CMYK/YCbCr/LAB/palette/float
      images are converted to RGB, alpha is dropped (palette transparency included);
    - animated GIF/PNG/WebP/TIFF: the first frame is used, with a warning;
    - empty, truncated or corrupt files raise :class:`ImageError` naming the file.
    """
    path = Path(path)
    limit = max_pixels_limit(max_pixels)
    if not path.is_file():
        raise ImageError(f"image not found: {path}" if not path.exists() else f"{path} is not a file")
    if path.stat().st_size == 0:
        raise ImageError(f"cannot read image {path}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # our own cap below is the check; Pillow's bomb warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im_file = Image.open(path)
        with im_file as im:
            w, h = im.size
            if w * h > limit:
                raise ImageError(
                    f"{path}: {w}x{h} = {w * h:,} pixels exceeds the limit of {limit:,} pixels "
                    f"(downscale the image, or raise the limit with {MAX_PIXELS_ENV}=N)"
                )
            if w == 0 or h == 0:
                raise ImageError(f"{path} is empty ({w}x{h} pixels)")
            frames = int(getattr(im, "n_frames", 1) or 1)
            if frames > 1:
                warnings.warn(f"{path}: animated image with {frames} frames; using the first frame", stacklevel=2)
                im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im)
            arr = _to_array(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"{path}: too many pixels to decode safely ({exc}); raise Pillow's Image.MAX_IMAGE_PIXELS "
            f"and {MAX_PIXELS_ENV} to read it"
        ) from None
    except MemoryError:
        raise ImageError(f"{path}: not enough memory to decode this image") from None
    except Exception as exc:
        raise ImageError(f"cannot read image {path}: {type(exc).__name__}: {' '.join(str(exc).split())}") from None
    return to_rgb_uint8(arr, name=str(path))


def _to_array(im: Image.Image) -> np.ndarray:
    """A decoded Pillow image -> an array :func:`to_rgb_uint8` takes (16-bit kept as uint16)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im)
        return arr.astype(np.uint16)  # native byte order (I;16B is big-endian)
    if im.mode == "I":
        arr = np.asarray(im)
        if arr.size and arr.min() >= 0 and 255 < arr.max() <= 65535:
            return arr.astype(np.uint16)  # a 16-bit grayscale file that Pillow opened as 32-bit
        return arr
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # palette transparency: Pillow wants the detour through RGBA
    return np.asarray(im.convert("RGBA" if "A" in im.getbands() else "RGB"))


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
