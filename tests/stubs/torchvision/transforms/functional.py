"""torchvision.transforms.functional stand-in: PIL-based, as torchvision does for PIL input."""

import numpy as np
from PIL import Image


def to_pil_image(pic):
    return Image.fromarray(np.asarray(pic))


def resize(img, size):
    """Resize a PIL image to (h, w) with bilinear filtering (torchvision's default)."""
    h, w = size
    return img.resize((w, h), Image.BILINEAR)
