"""Masks, run-length encodings and boxes in one place (thin layers over torch and pycocotools).

Conventions (the same as the official package and COCO, so outputs interoperate):

- A binary mask is HxW (or BxHxW) bool, rows first (C order).
- An *uncompressed RLE* is ``{"size": [h, w], "counts": [int, ...]}``: run lengths of the
  mask read in column-major (Fortran) order, starting with a run of zeros (which is 0 when
  the first pixel is set).
- A *COCO RLE* is pycocotools' compressed form ``{"size": [h, w], "counts": str}`` (the
  counts decoded to ``str`` so the record serialises to JSON, as SA-1B stores it).
- Boxes are XYXY unless named ``xywh``. A box from a mask spans pixel *indices*: a mask with
  one pixel at (x, y) has box (x, y, x, y) and XYWH width 0, exactly as the reference's
  ``batched_mask_to_box``, which SA-1B's ``bbox`` fields were made with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

RLE = dict[str, Any]


# ---------------------------------------------------------------------- uncompressed RLE


def mask_to_rle(
    masks: torch.Tensor | np.ndarray,
    frame: tuple[int, int] | None = None,
    offset: tuple[int, int] = (0, 0),
) -> list[RLE]:
    """BxHxW bool masks -> B uncompressed RLEs (column-major runs, zeros first).

    With ``frame=(H_img, W_img)`` and ``offset=(x0, y0)`` the masks are a window of a larger
    image and the RLEs describe the whole image (zeros outside the window), as if each mask
    had been padded to the image first -- without allocating the padded masks.

    Vectorised: every column is framed by one zero above and below, so the run boundaries of
    the whole batch come from one ``nonzero``; a boundary at offset ``q`` of the framed column
    ``j`` is image position ``(x0 + j) * H_img + y0 + q``. Boundaries that coincide (a run
    leaving the bottom of one column and re-entering the top of the next, when the window
    spans the full height) cancel in pairs.
    """
    t = torch.as_tensor(masks)
    if t.ndim != 3:
        raise ValueError(f"masks must be BxHxW, got shape {tuple(t.shape)}")
    b, h, w = t.shape
    img_h, img_w = (h, w) if frame is None else (int(frame[0]), int(frame[1]))
    x0, y0 = int(offset[0]), int(offset[1])
    if x0 < 0 or y0 < 0 or x0 + w > img_w or y0 + h > img_h:
        raise ValueError(f"a {w}x{h} window at ({x0}, {y0}) does not fit in a {img_w}x{img_h} image")
    if b == 0:
        return []
    n = img_h * img_w
    framed = torch.zeros(b, w, h + 2, dtype=torch.bool, device=t.device)
    framed[:, :, 1:-1] = t.to(torch.bool).transpose(1, 2)
    flat = framed.reshape(b, w * (h + 2))
    mask_idx, q = (flat[:, 1:] != flat[:, :-1]).nonzero(as_tuple=True)
    q = q.cpu().numpy()
    bounds_all = (x0 + q // (h + 2)) * img_h + y0 + q % (h + 2)
    splits = np.searchsorted(mask_idx.cpu().numpy(), np.arange(1, b))
    out = []
    for bounds in np.split(bounds_all, splits):
        if bounds.size > 1:
            dup = bounds[1:] == bounds[:-1]
            if dup.any():
                drop = np.zeros(bounds.size, dtype=bool)
                drop[:-1] |= dup
                drop[1:] |= dup
                bounds = bounds[~drop]
        if bounds.size and bounds[-1] == n:
            bounds = bounds[:-1]  # a run ending at the last pixel: no empty run after it
        counts = np.diff(np.concatenate(([0], bounds, [n]))).tolist()
        out.append({"size": [img_h, img_w], "counts": counts})
    return out


def rle_to_mask(rle: RLE) -> np.ndarray:
    """Uncompressed (list counts) or COCO (str/bytes counts) RLE -> HxW bool mask."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        return mask_utils.decode(_coco_for_pycocotools(rle)).astype(bool)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected h*w = {h * w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape(w, h).T


def area_from_rle(rle: RLE) -> int:
    """Number of set pixels of an uncompressed or COCO RLE."""
    if isinstance(rle["counts"], (str, bytes)):
        return int(mask_utils.area(_coco_for_pycocotools(rle)))
    return int(sum(rle["counts"][1::2]))


# ---------------------------------------------------------------------- COCO (compressed) RLE


def _coco_for_pycocotools(rle: RLE) -> RLE:
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.encode("utf-8") if isinstance(counts, str) else counts}


def coco_encode_rle(uncompressed: RLE) -> RLE:
    """Uncompressed RLE -> COCO compressed RLE with ``str`` counts (JSON-serialisable)."""
    h, w = (int(v) for v in uncompressed["size"])
    rle = mask_utils.frPyObjects(uncompressed, h, w)
    return {"size": [h, w], "counts": rle["counts"].decode("utf-8")}


def masks_to_coco_rle(masks: torch.Tensor | np.ndarray) -> list[RLE]:
    """BxHxW bool masks -> COCO RLEs directly (pycocotools' C encoder)."""
    arr = np.asarray(torch.as_tensor(masks).cpu().numpy(), dtype=np.uint8)
    if arr.ndim != 3:
        raise ValueError(f"masks must be BxHxW, got shape {arr.shape}")
    if arr.shape[0] == 0:
        return []
    encoded = mask_utils.encode(np.asfortranarray(arr.transpose(1, 2, 0)))
    return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("utf-8")} for r in encoded]


def coco_rle_to_rle(rle: RLE) -> RLE:
    """COCO compressed RLE -> uncompressed RLE (same runs)."""
    return mask_to_rle(rle_to_mask(rle)[None])[0]


# ---------------------------------------------------------------------- boxes


def box_xyxy_to_xywh(box: Any) -> Any:
    """XYXY -> XYWH for a list, numpy array or tensor (last axis of length 4)."""
    if isinstance(box, (list, tuple)):
        x0, y0, x1, y1 = box
        return [x0, y0, x1 - x0, y1 - y0]
    out = box.clone() if isinstance(box, torch.Tensor) else np.array(box, copy=True)
    out[..., 2] = box[..., 2] - box[..., 0]
    out[..., 3] = box[..., 3] - box[..., 1]
    return out


def box_xywh_to_xyxy(box: Any) -> Any:
    """XYWH -> XYXY for a list, numpy array or tensor (last axis of length 4)."""
    if isinstance(box, (list, tuple)):
        x, y, w, h = box
        return [x, y, x + w, y + h]
    out = box.clone() if isinstance(box, torch.Tensor) else np.array(box, copy=True)
    out[..., 2] = box[..., 0] + box[..., 2]
    out[..., 3] = box[..., 1] + box[..., 3]
    return out


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """...xHxW bool masks -> ...x4 XYXY boxes of pixel indices (int64); [0,0,0,0] when empty."""
    masks = torch.as_tensor(masks)
    if masks.ndim < 2:
        raise ValueError(f"masks must be ...xHxW, got shape {tuple(masks.shape)}")
    lead = masks.shape[:-2]
    h, w = masks.shape[-2:]
    if masks.numel() == 0:
        return torch.zeros(*lead, 4, dtype=torch.int64, device=masks.device)
    m = masks.reshape(-1, h, w).to(torch.bool)
    rows = m.any(dim=2)  # Nxh
    cols = m.any(dim=1)  # Nxw
    top = rows.to(torch.uint8).argmax(dim=1)
    bottom = h - 1 - rows.flip(1).to(torch.uint8).argmax(dim=1)
    left = cols.to(torch.uint8).argmax(dim=1)
    right = w - 1 - cols.flip(1).to(torch.uint8).argmax(dim=1)
    out = torch.stack([left, top, right, bottom], dim=1).to(torch.int64)
    out[~rows.any(dim=1)] = 0
    return out.reshape(*lead, 4)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Nx4 XYXY -> N areas, (x1 - x0) * (y1 - y0) as torchvision computes them."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Nx4, Mx4 XYXY -> NxM IoU (torchvision's formula: no +1 on widths)."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)


# ---------------------------------------------------------------------- mask IoU


def mask_iou(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> torch.Tensor:
    """NxHxW, MxHxW bool masks -> NxM IoU (two empty masks have IoU 1)."""
    fa = torch.as_tensor(a).reshape(len(a), -1).to(torch.float32)
    fb = torch.as_tensor(b).reshape(len(b), -1).to(torch.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
