"""Classic zero-shot edge detectors (Sobel 1968, Canny 1986) as soft edge maps for the BSDS benchmark.

The SAM paper compares against both (Table 3). The benchmark needs a *soft* map that it can
threshold at many levels, so:

- Sobel: gradient magnitude of the Gaussian-smoothed grey image, normalised to [0, 1] and
  thinned with the same edge NMS as segany's edge maps.
- Canny: ``cv2.Canny`` (with hysteresis, low = 0.4 x high) at ``levels`` high thresholds; a
  pixel's strength is the highest level at which Canny still marks it. Canny's output shrinks
  monotonically as its thresholds rise, so thresholding this map at t reproduces Canny run at
  the corresponding threshold: the benchmark's threshold sweep is a sweep of Canny's threshold.
"""

from __future__ import annotations

import cv2
import numpy as np

from .edge_nms import edge_nms


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image.astype(np.uint8), cv2.COLOR_RGB2GRAY)
    if image.ndim != 2:
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {image.shape}")
    return image


def sobel_edges(image: np.ndarray, sigma: float = 1.0, nms: bool = True) -> np.ndarray:
    """Soft Sobel edge map in [0, 1] of an RGB or grey uint8 image (HxW float64)."""
    grey = _grey(image).astype(np.float64) / 255.0
    if sigma > 0:
        grey = cv2.GaussianBlur(grey, (0, 0), sigma)
    gx = cv2.Sobel(grey, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_64F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy)
    if mag.max() > 0:
        mag /= mag.max()
    return edge_nms(mag) if nms else mag


def canny_edges(image: np.ndarray, sigma: float = 1.0, levels: int = 64, low_ratio: float = 0.4) -> np.ndarray:
    """Soft Canny edge map in [0, 1]: the highest of ``levels`` thresholds at which a pixel is an edge."""
    grey = _grey(image)
    if sigma > 0:
        grey = cv2.GaussianBlur(grey, (0, 0), sigma)
    # L2 gradient magnitudes of the 3x3 Sobel on uint8 images stay below ~1443
    top = float(np.hypot(cv2.Sobel(grey, cv2.CV_64F, 1, 0), cv2.Sobel(grey, cv2.CV_64F, 0, 1)).max())
    out = np.zeros(grey.shape, dtype=np.float64)
    if top <= 0:
        return out
    for k in range(1, levels + 1):
        high = top * k / (levels + 1)
        edges = cv2.Canny(grey, low_ratio * high, high, L2gradient=True) > 0
        out[edges] = k / levels
    return out
