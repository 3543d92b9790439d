"""Torch Dataset over SA-1B folders, prepared the way appendix A trains on them.

Per image: masks covering more than 90% of the image are dropped (they are mostly the
whole image and teach nothing), at most ``max_masks`` masks are sampled (the paper uses
64), and optionally large-scale jitter (scale 0.1-2.0) is applied. The image is resized so
its longest side is the encoder's ``img_size`` (the *input* frame) and the masks are placed
in the padded ``img_size`` square, the frame the model's outputs cover.

Randomness comes only from the ``numpy.random.Generator`` passed to :meth:`SA1BDataset.load`,
so a trainer that derives that generator from (seed, step) is exactly reproducible and
resumable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..image_io import load_image
from .sa1b import RecordIndex, SA1BError, decode_rle


@dataclass
class TrainSample:
    """One prepared image: ``image`` 3xhxw float (0-255, input frame, unpadded), ``masks``
    NxSxS bool in the padded square, ``size`` (h, w) of the image inside the square."""

    image: torch.Tensor
    masks: torch.Tensor
    size: tuple[int, int]
    source: str


def _resize_mask(mask: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    shrinking = size_wh[0] * size_wh[1] < mask.shape[0] * mask.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(mask.astype(np.float32), size_wh, interpolation=interp) >= 0.5


class SA1BDataset(RecordIndex, Dataset):
    """Images of one or more SA-1B folders.

    Args:
        roots: folders, or ``(folder, repeat)`` pairs; ``repeat`` lists a folder's images
            that many times, to balance small sources against large ones.
        img_size: the encoder's square input side (512 for segany_tiny, 1024 for ViTs).
        max_masks: masks sampled per image (without replacement).
        max_area_frac: masks covering more than this fraction of the image are dropped.
        min_area_frac: masks covering less than this fraction are dropped (0 = keep all). Short
            from-scratch runs use it: tiny masks make "all background" a near-optimal answer.
        jitter: large-scale jitter scale range, e.g. ``(0.1, 2.0)``; None disables it.
    """

    def __init__(
        self,
        roots: list[str | os.PathLike | tuple[str | os.PathLike, int]],
        img_size: int = 1024,
        max_masks: int = 64,
        max_area_frac: float = 0.9,
        jitter: tuple[float, float] | None = None,
        seed: int = 0,
        min_area_frac: float = 0.0,
    ) -> None:
        if max_masks < 1:
            raise ValueError(f"max_masks must be >= 1 (got {max_masks})")
        super().__init__(roots)
        self.img_size = int(img_size)
        self.max_masks = int(max_masks)
        self.max_area_frac = float(max_area_frac)
        self.min_area_frac = float(min_area_frac)
        self.jitter = tuple(jitter) if jitter is not None else None
        self.seed = seed

    def __getitem__(self, index: int) -> TrainSample:
        return self.load(index, np.random.default_rng([self.seed, index]))

    def load(self, index: int, rng: np.random.Generator) -> TrainSample:
        """Prepare image ``index`` with randomness drawn from ``rng`` only."""
        rec = self.record(index)
        image = load_image(rec.image_path)
        h0, w0 = image.shape[:2]
        if (h0, w0) != (rec.height, rec.width):
            raise SA1BError(f"{rec.image_path} is {w0}x{h0}, its JSON says {rec.width}x{rec.height}")
        keep = [
            k for k, a in enumerate(rec.annotations)
            if max(0.0, self.min_area_frac * h0 * w0) < float(a.get("area", 1)) <= self.max_area_frac * h0 * w0
        ]
        if len(keep) > self.max_masks:
            keep = sorted(rng.choice(keep, size=self.max_masks, replace=False).tolist())
        masks = [decode_rle(rec.annotations[k]["segmentation"]) for k in keep]
        masks = [  # the area field may be absent
            m for m in masks if self.min_area_frac * h0 * w0 <= m.sum() <= self.max_area_frac * h0 * w0
        ]
        scale = self.img_size / max(h0, w0)
        if self.jitter is not None:
            scale *= float(rng.uniform(*self.jitter))
        h1, w1 = max(1, int(round(h0 * scale))), max(1, int(round(w0 * scale)))
        # crop window (only when jitter made the image larger than the square)
        y0 = int(rng.integers(0, h1 - self.img_size + 1)) if h1 > self.img_size else 0
        x0 = int(rng.integers(0, w1 - self.img_size + 1)) if w1 > self.img_size else 0
        h, w = min(h1, self.img_size), min(w1, self.img_size)
        resized = cv2.resize(image, (w1, h1), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        crop = resized[y0 : y0 + h, x0 : x0 + w]
        out = np.zeros((len(masks), self.img_size, self.img_size), dtype=bool)
        for k, m in enumerate(masks):
            out[k, :h, :w] = _resize_mask(m, (w1, h1))[y0 : y0 + h, x0 : x0 + w]
        out = out[out.reshape(len(out), -1).any(axis=1)] if len(out) else out
        return TrainSample(
            image=torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float(),
            masks=torch.from_numpy(out),
            size=(h, w),
            source=str(rec.json_path),
        )
