"""Augmented training crops: large-scale jitter, flips, colour jitter and copy-paste.

Why crops: a CPU step affords few decoder passes, and the decoder's cost grows with the
embedding grid. Training on ``crop``-pixel windows of the input frame (256 px -> a 32x32
grid for the stride-8 CNN encoder) costs a quarter of full 512 px squares per mask, and the
click models of the literature (RITM, FocalClick) train on 256-384 px crops too. The model
stays fully convolutional, so inference runs on the whole 512 px square.

Geometry: one affine map (scale, flip, translation) takes the original image to the crop,
and the same map is applied to every mask with bilinear interpolation then a 0.5
threshold, so masks stay aligned with the image to sub-pixel precision (nearest-neighbour
resizing shifts masks by up to a pixel, which hurts boundaries).

Copy-paste (Ghiasi et al. 2021): with probability ``copy_paste``, one object from another
image is pasted at a random place and scale; it occludes the masks under it and becomes a
training mask itself. It was up to 2x more data-efficient on COCO.

Object zoom: with probability ``object_zoom``, the crop is instead centred on one object and
scaled the way zoom-in shows it at inference (:mod:`segany.zoom_in`): the object's box is
1/e of the input side, with e log-uniform in ``object_zoom_range``, and the window holds its
centre. Why: trained on whole images at 0.5-1.6x only, the default model segmented worse on
zoomed crops, even on a crop taken from the ground-truth box (docs/evaluation.md), so zoom-in
could not help it. The object is always among the crop's candidate masks.

Randomness comes only from the ``numpy.random.Generator`` passed in, so a trainer that
seeds it from (seed, step) stays exactly resumable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..image_io import load_image
from ..masks import batched_mask_to_box
from .sa1b import RecordIndex, SA1BRecord, decode_rle


@dataclass(frozen=True)
class CropConfig:
    """How training crops are made (the ``data`` section of a training config)."""

    crop: int = 256  # crop side in input-frame pixels (a multiple of 32)
    scale: tuple[float, float] = (0.5, 1.6)  # log-uniform jitter of the longest side (x img_size)
    hflip: float = 0.5
    color_jitter: float = 0.3  # brightness/contrast/saturation amplitude (0 = off)
    copy_paste: float = 0.3
    max_masks: int = 4  # masks per crop
    candidates: int = 24  # masks decoded per image before the crop (a random subset)
    min_mask_px: int = 48  # masks smaller than this in the crop are not trained on
    max_area_frac: float = 0.9  # of the crop
    object_zoom: float = 0.0  # probability of a crop centred on one object, zoomed (0 = off)
    object_zoom_range: tuple[float, float] = (1.4, 3.0)  # input side / the object's box side
    object_zoom_max: float = 4.0  # at most this many times the whole-image scale


@dataclass
class CropSample:
    """``image`` 3xCxC float 0-255 (zero outside the image), ``masks`` MxCxC bool, ``valid``
    CxC bool (the pixels that show the image), ``source`` the record's JSON."""

    image: torch.Tensor
    masks: torch.Tensor
    valid: torch.Tensor
    source: str

    def normalised(self, mean: torch.Tensor, std: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The encoder input: normalised like the model's input square, and 0 outside the image,
        as the square's padding is after normalisation."""
        return (self.image.to(device) - mean) / std * self.valid.to(device)


def _warp(array: np.ndarray, matrix: np.ndarray, side: int) -> np.ndarray:
    return cv2.warpAffine(
        array, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def _color_jitter(image: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and saturation (each by up to ``amount``), float 0-255."""
    x = image.astype(np.float32)
    b, c, s = (1.0 + rng.uniform(-amount, amount, 3)).tolist()
    x = x * b
    mean = x.mean()
    x = (x - mean) * c + mean
    grey = x.mean(axis=2, keepdims=True)
    x = (x - grey) * s + grey
    return np.clip(x, 0, 255)


class CropDataset(RecordIndex):
    """Training crops from SA-1B folders (``roots``: folders or ``(folder, repeat)``)."""

    def __init__(
        self,
        roots: list[str | os.PathLike | tuple[str | os.PathLike, int]],
        img_size: int,
        config: CropConfig = CropConfig(),
        holdout_every: int = 0,
        split: str = "train",
    ) -> None:
        """``holdout_every`` and ``split``: see :class:`RecordIndex`."""
        if config.crop % 32 or config.crop <= 0:
            raise ValueError(f"crop must be a positive multiple of 32 (got {config.crop})")
        super().__init__(roots, holdout_every, split)
        if not self.paths:
            raise ValueError("no SA-1B records in the data roots")
        self.img_size = int(img_size)
        self.config = config

    def _matrix(self, h0: int, w0: int, rng: np.random.Generator) -> np.ndarray:
        """Affine map original -> crop: resize-longest-side x jitter, flip, random window."""
        cfg = self.config
        lo, hi = np.log(cfg.scale[0]), np.log(cfg.scale[1])
        s = self.img_size / max(h0, w0) * float(np.exp(rng.uniform(lo, hi)))
        h1, w1 = h0 * s, w0 * s
        tx = -float(rng.uniform(0, max(0.0, w1 - cfg.crop)))
        ty = -float(rng.uniform(0, max(0.0, h1 - cfg.crop)))
        m = np.array([[s, 0.0, tx], [0.0, s, ty]])
        if rng.random() < cfg.hflip:  # mirror inside the scaled image, then the same window
            m = np.array([[-s, 0.0, w1 + tx], [0.0, s, ty]])
        # cv2 maps pixel centres: x_out = m @ (x_in) with centres at integer coordinates;
        # scaling about centres (0.5 px convention) keeps masks and image aligned
        m[:, 2] += 0.5 * (m[:, 0] + m[:, 1]) - 0.5
        return m

    def _zoom_matrix(self, h0: int, w0: int, box: tuple[float, float, float, float],
                     rng: np.random.Generator) -> np.ndarray:
        """Affine map original -> crop for an object zoom on ``box`` (x0, y0, x1, y1, exclusive)."""
        cfg = self.config
        lo, hi = np.log(cfg.object_zoom_range[0]), np.log(cfg.object_zoom_range[1])
        side = max(box[2] - box[0], box[3] - box[1], 1.0)
        base = self.img_size / max(h0, w0)
        s = min(self.img_size / (side * float(np.exp(rng.uniform(lo, hi)))), base * cfg.object_zoom_max)
        cx, cy = (box[0] + box[2]) / 2 * s, (box[1] + box[3]) / 2 * s
        # the object's centre lands at a uniform place in the window's middle half
        tx = float(rng.uniform(0.25, 0.75)) * cfg.crop - cx
        ty = float(rng.uniform(0.25, 0.75)) * cfg.crop - cy
        m = np.array([[s, 0.0, tx], [0.0, s, ty]])
        if rng.random() < cfg.hflip:  # mirror about the window's centre
            m = np.array([[-s, 0.0, cfg.crop - tx], [0.0, s, ty]])
        m[:, 2] += 0.5 * (m[:, 0] + m[:, 1]) - 0.5
        return m

    def _zoom_target(self, rec: SA1BRecord, rng: np.random.Generator) -> tuple[int, tuple[float, ...]] | None:
        """A random annotation of ``rec`` with at least ``min_mask_px`` pixels, and its box."""
        anns = rec.annotations
        ok = [i for i, a in enumerate(anns) if float(a.get("area", self.config.min_mask_px)) >= self.config.min_mask_px]
        if not ok:
            return None
        k = ok[int(rng.integers(len(ok)))]
        if "bbox" in anns[k]:
            x, y, w, h = (float(v) for v in anns[k]["bbox"])
            return k, (x, y, x + w, y + h)
        mask = decode_rle(anns[k]["segmentation"])
        if not mask.any():
            return None
        x0, y0, x1, y1 = (float(v) for v in batched_mask_to_box(mask).tolist())
        return k, (x0, y0, x1 + 1, y1 + 1)

    def _masks(self, rec: SA1BRecord, rng: np.random.Generator, first: int | None = None) -> list[np.ndarray]:
        anns = rec.annotations
        order = rng.permutation(len(anns))[: self.config.candidates]
        if first is not None:  # the zoomed object is always a candidate
            order = np.concatenate([[first], [k for k in order if k != first]])[: self.config.candidates]
        return [decode_rle(anns[int(k)]["segmentation"]) for k in order]

    def load(self, index: int, rng: np.random.Generator) -> CropSample:
        """Crop ``index`` with randomness drawn from ``rng`` only."""
        cfg = self.config
        rec = self.record(index)
        image = load_image(rec.image_path)
        h0, w0 = image.shape[:2]
        # (no random draw for the zoom when it is off: older configs keep their exact streams)
        target = self._zoom_target(rec, rng) if cfg.object_zoom > 0 and rng.random() < cfg.object_zoom else None
        m = self._matrix(h0, w0, rng) if target is None else self._zoom_matrix(h0, w0, target[1], rng)
        crop = _warp(image, m, cfg.crop).astype(np.float32)
        valid = _warp(np.ones((h0, w0), np.uint8), m, cfg.crop) > 0
        first = None if target is None else target[0]
        masks = [_warp(x.astype(np.float32), m, cfg.crop) >= 0.5 for x in self._masks(rec, rng, first)]
        if cfg.copy_paste > 0 and rng.random() < cfg.copy_paste and len(self) > 1:
            crop, masks = self._paste(crop, masks, valid, rng)
        if cfg.color_jitter > 0:
            crop = _color_jitter(crop, cfg.color_jitter, rng) * valid[..., None]
        area = cfg.crop * cfg.crop
        keep = [x for x in masks if cfg.min_mask_px <= int(x.sum()) <= cfg.max_area_frac * area]
        if len(keep) > cfg.max_masks:
            pick = rng.choice(len(keep), size=cfg.max_masks, replace=False)
            keep = [keep[int(k)] for k in sorted(pick)]
        stacked = np.stack(keep) if keep else np.zeros((0, cfg.crop, cfg.crop), bool)
        return CropSample(
            image=torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float(),
            masks=torch.from_numpy(stacked),
            valid=torch.from_numpy(valid),
            source=str(rec.json_path),
        )

    def _paste(
        self, crop: np.ndarray, masks: list[np.ndarray], valid: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Paste one object of another image onto the crop (it occludes what is under it)."""
        cfg = self.config
        other = self.record(int(rng.integers(len(self))))
        anns = [a for a in other.annotations if 0.005 * other.height * other.width < float(a.get("area", 0))
                < 0.5 * other.height * other.width]
        if not anns:
            return crop, masks
        obj = decode_rle(anns[int(rng.integers(len(anns)))]["segmentation"])
        if not obj.any():
            return crop, masks
        src = load_image(other.image_path)
        # exclusive ends: the object's pixel extent (its side counts the last row and column)
        x0, y0, x1, y1 = (int(v) for v in batched_mask_to_box(obj).tolist())
        x1, y1 = x1 + 1, y1 + 1
        side = max(y1 - y0, x1 - x0)
        target = cfg.crop * float(rng.uniform(0.15, 0.7))  # pasted object's longest side
        s = target / side
        tx = float(rng.uniform(0, cfg.crop - (x1 - x0) * s)) - x0 * s
        ty = float(rng.uniform(0, cfg.crop - (y1 - y0) * s)) - y0 * s
        mat = np.array([[s, 0.0, tx], [0.0, s, ty]])
        mat[:, 2] += 0.5 * (mat[:, 0] + mat[:, 1]) - 0.5
        pasted = (_warp(obj.astype(np.float32), mat, cfg.crop) >= 0.5) & valid
        if pasted.sum() < cfg.min_mask_px:
            return crop, masks
        patch = _warp(src, mat, cfg.crop).astype(np.float32)
        out = np.where(pasted[..., None], patch, crop)
        return out, [x & ~pasted for x in masks] + [pasted]
