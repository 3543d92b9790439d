"""Masks, run-length encodings, boxes from masks and mask IoU in one place (thin layers over
torch and pycocotools); nothing else in the package computes these.

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


def _as_bool_tensor(x: torch.Tensor | np.ndarray | Any) -> torch.Tensor:
    """``x`` as a bool tensor (nonzero = True), sharing memory with a bool array where it can.

    Numpy input is converted the way ``np.asarray(x, dtype=bool)`` does (any dtype numpy
    has), and copied when torch cannot share it: flipped views (negative strides) are
    refused by ``torch.from_numpy`` and read-only arrays would make it warn.
    """
    if isinstance(x, torch.Tensor):
        return x.to(torch.bool)
    arr = np.asarray(x, dtype=bool)
    if not arr.flags.writeable or any(st < 0 for st in arr.strides):
        arr = arr.copy()
    return torch.from_numpy(arr)


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


def coco_rle_bbox(rle: RLE) -> list[float]:
    """COCO's ``bbox`` of an RLE without decoding it (pycocotools ``toBbox``): XYWH pixel
    *extents*, ``w = x_max - x_min + 1``, one pixel wider than SA-1B's ``bbox`` (see the
    module docstring); ``[0, 0, 0, 0]`` for an empty mask. For COCO files and the engine
    store, whose rows have always held this convention."""
    return [float(v) for v in mask_utils.toBbox(_coco_for_pycocotools(rle))]


def coco_bbox(mask: torch.Tensor | np.ndarray) -> list[int]:
    """COCO's ``bbox`` of an HxW mask, equal to :func:`coco_rle_bbox` of its RLE: one pixel
    at (x, y) is ``[x, y, 1, 1]``, an empty mask ``[0, 0, 0, 0]``."""
    t = _as_bool_tensor(mask)
    if not bool(t.any()):
        return [0, 0, 0, 0]
    x0, y0, x1, y1 = (int(v) for v in batched_mask_to_box(t).tolist())
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def rasterize_polygons(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons (flat ``[x0, y0, x1, y1, ...]`` lists, at least 3 points each) -> HxW
    bool mask of their union, rasterised exactly as pycocotools' ``annToMask`` does, so masks
    read from polygon files match what COCO tools see. Callers validate the coordinates."""
    if not polygons:
        return np.zeros((int(height), int(width)), dtype=bool)
    rles = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], int(height), int(width))
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


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


def batched_mask_to_box(masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    """...xHxW bool masks -> ...x4 XYXY boxes of pixel indices (int64); [0,0,0,0] when empty.

    The one box-from-mask of the package (the official convention, see the module
    docstring). A caller that needs another convention adjusts the result where it calls
    this, with a comment saying why: exclusive ends (``+ 1`` on x1, y1) for slicing,
    ``.float()`` for box prompts, COCO's ``toBbox`` width ``x1 - x0 + 1``.
    """
    masks = _as_bool_tensor(masks)
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


def mask_window(mask: torch.Tensor | np.ndarray) -> tuple[slice, slice] | None:
    """(rows, cols) slices of the smallest window holding every set pixel of an HxW mask.

    ``batched_mask_to_box`` with exclusive ends, for code that crops a mask before heavier
    per-mask work (contours, hulls); None for an empty mask, so callers cannot crop to the
    ``[0, 0, 0, 0]`` box an empty mask gets.
    """
    t = _as_bool_tensor(mask)
    if t.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {tuple(t.shape)}")
    if not bool(t.any()):
        return None
    x0, y0, x1, y1 = (int(v) for v in batched_mask_to_box(t))
    return slice(y0, y1 + 1), slice(x0, x1 + 1)


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


def mask_iou(
    a: torch.Tensor | np.ndarray,
    b: torch.Tensor | np.ndarray,
    ignore: torch.Tensor | np.ndarray | None = None,
    *,
    pairwise: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """IoU of binary masks (nonzero = set); 1 where both masks are empty.

    The one mask IoU of the package: the automatic generator's tests and the data checks
    compare sets of masks, training scores each prediction against its target
    (:func:`segany.train.losses.mask_iou`), evaluation one prediction against its ground
    truth outside an ignore band (:func:`segany.eval.clicks.iou`).

    Args:
        a, b: with ``pairwise=True`` NxHxW and MxHxW, giving NxM (every mask of ``a``
            against every mask of ``b``); with ``pairwise=False`` any shapes ...xHxW that
            broadcast together, giving ... (mask against mask).
        ignore: pixels counted in neither mask (broadcast against the masks, e.g. HxW),
            such as GrabCut's unlabelled band.
        dtype: the dtype the counts are divided in. The counts are exact integers, so the
            result is the correctly rounded quotient in ``dtype``: float32 is what training
            logs and the generator's tests compare, float64 equals Python's
            ``intersection / union`` (evaluation reports).

    Why two empty masks score 1: predicting nothing for an object that is not there (or
    entirely ignored) is a perfect answer, and every caller has always counted it so.
    """
    ta, tb = _as_bool_tensor(a), _as_bool_tensor(b)
    if ignore is not None:
        keep = ~_as_bool_tensor(ignore).to(ta.device)
        ta, tb = ta & keep, tb & keep
    if pairwise:
        # one matmul for all pairs; sums of 0/1 products are exact below 2**24 pixels in float32
        fa = ta.flatten(1).to(dtype)
        fb = tb.flatten(1).to(dtype)
        inter = fa @ fb.T
        union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    else:
        inter = (ta & tb).flatten(-2).sum(-1).to(dtype)
        union = (ta | tb).flatten(-2).sum(-1).to(dtype)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


# ---------------------------------------------------------------------- validation

# pycocotools keeps run lengths and sizes in uint32; larger values wrap silently.
_MAX_RLE_VALUE = 2**32 - 1
_MAX_RLE_SIDE = 2**31 - 1


def decode_coco_counts(counts: str | bytes, field: str = "rle.counts") -> np.ndarray:
    """The run lengths (int64) of a COCO compressed ``counts`` string, checking its syntax.

    Why not pycocotools: its C decoder trusts the string. Garbage, a truncated run or runs
    that sum past ``h*w`` make it read or write past its buffers (wrong masks, crashes), so a
    string from a client or an old database row is decoded here first, vectorised, following
    ``rleFrString``: 6-bit groups ('0' + value), bit 5 continues a number, bit 4 of the last
    group is the sign, and from the fourth run on each number is a delta to the run two back.
    Raises ``ValueError`` naming ``field``.
    """
    if isinstance(counts, str):
        try:
            raw = counts.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"{field} must be ASCII (a COCO RLE string), got non-ASCII characters") from None
    elif isinstance(counts, (bytes, bytearray)):
        raw = bytes(counts)
    else:
        raise ValueError(f"{field} must be a string, got {type(counts).__name__}")
    if not raw:
        raise ValueError(f"{field} is empty")
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if (c < 0).any() or (c > 63).any():
        raise ValueError(f"{field} has characters outside the COCO RLE alphabet ('0' to 'o')")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError(f"{field} is truncated (ends inside a run length)")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if int(lengths.max()) > 7:  # 7 groups = 35 bits, enough for any uint32 run or delta
        raise ValueError(f"{field} holds a number too large for a run length")
    position = np.arange(c.size) - np.repeat(starts, lengths)
    x = np.add.reduceat((c & 0x1F) << (5 * position), starts)
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.left_shift(np.int64(1), 5 * lengths[negative])
    runs = x.copy()
    runs[1::2] = np.cumsum(x[1::2])
    runs[2::2] = np.cumsum(x[2::2])
    return runs


def _check_rle_size(size: Any, field: str) -> tuple[int, int]:
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ValueError(f"{field} must be [height, width], got {_short(size)}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size):
        raise ValueError(f"{field} must be two integers, got {_short(size)}")
    h, w = int(size[0]), int(size[1])
    if not (1 <= h <= _MAX_RLE_SIDE and 1 <= w <= _MAX_RLE_SIDE):
        raise ValueError(f"{field} must be two positive integers below 2**31, got {_short(size)}")
    return h, w


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def validate_rle(rle: Any, expected_size: tuple[int, int] | None = None, field: str = "rle") -> RLE:
    """Check an RLE completely and return it as a COCO RLE ``{"size": [h, w], "counts": str}``.

    Accepts the COCO compressed form (``str``/``bytes`` counts) and the uncompressed one
    (a list of run lengths). Checks that ``size`` is two positive ints (equal to
    ``expected_size`` (h, w) when given), that compressed counts are ASCII and decode, and
    that the runs are non-negative and sum to ``h*w``. Stored data has to pass this before
    it is acknowledged, because every later reader (pycocotools, the page, the exporter)
    assumes it; a ``ValueError`` naming the offending field is raised otherwise (``field``
    is the prefix of those names; ``""`` names top-level ``size`` and ``counts``).
    """
    name = field or "mask"
    size_field, counts_field = (f"{field}.size", f"{field}.counts") if field else ("size", "counts")
    if not isinstance(rle, dict):
        raise ValueError(f"{name} must be an object {{'size': [h, w], 'counts': ...}}, got {type(rle).__name__}")
    unknown = sorted(str(k) for k in set(rle) - {"size", "counts"})
    if unknown:
        raise ValueError(f"{name} has unknown keys {unknown[:5]}; expected only 'size' and 'counts'")
    if "size" not in rle or "counts" not in rle:
        raise ValueError(f"{name} must have both 'size' and 'counts'")
    h, w = _check_rle_size(rle["size"], size_field)
    if expected_size is not None and (h, w) != (int(expected_size[0]), int(expected_size[1])):
        raise ValueError(
            f"{size_field} [{h}, {w}] does not match the image's [{int(expected_size[0])}, {int(expected_size[1])}] (h, w)"
        )
    n = h * w
    counts = rle["counts"]
    if isinstance(counts, (str, bytes, bytearray)):
        runs = decode_coco_counts(counts, counts_field)
    elif isinstance(counts, (list, tuple)):
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in counts):
            raise ValueError(f"{counts_field} must be a list of integers (uncompressed runs) or a COCO RLE string")
        if len(counts) > n + 1:
            raise ValueError(f"{counts_field} has {len(counts)} runs, more than h*w + 1 = {n + 1}")
        if any(c < 0 or c > n for c in counts):
            raise ValueError(f"{counts_field} must be run lengths between 0 and h*w = {n}")
        runs = np.asarray(counts, dtype=np.int64)
    else:
        raise ValueError(f"{counts_field} must be a COCO RLE string or a list of run lengths, got {type(counts).__name__}")
    if runs.size == 0:
        raise ValueError(f"{counts_field} is empty")
    if (runs < 0).any():
        raise ValueError(f"{counts_field} decodes to a negative run length")
    if (runs > _MAX_RLE_VALUE).any():
        raise ValueError(f"{counts_field} holds a run longer than 2**32 - 1")
    total = int(runs.sum())
    if total != n:
        raise ValueError(f"{counts_field} runs sum to {total}, expected h*w = {h}*{w} = {n}")
    if isinstance(counts, (list, tuple)):
        return coco_encode_rle({"size": [h, w], "counts": [int(c) for c in counts]})
    text = counts if isinstance(counts, str) else bytes(counts).decode("ascii")
    return {"size": [h, w], "counts": text}
