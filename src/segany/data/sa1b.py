"""SA-1B format: one image file plus one JSON file per image, side by side in a folder.

The one home of the format: every SA-1B JSON segany writes (converted datasets, the
automatic generator's output, the data engine's export) is built by :func:`image_record`
and :func:`annotation_record`, put together by :func:`document` and written by
:func:`write_json` (the automatic generator, which writes each image's files all or
nothing, writes the same object with its own writer); every reader goes through
:func:`load_json` / :func:`read_record`. RLEs and boxes come from :mod:`segany.masks`.
Why one home: three writers once disagreed on the box width by one pixel.

The JSON is the SA-1B layout::

    {"image": {"image_id": int, "width": W, "height": H, "file_name": "sa_1.jpg"},
     "annotations": [{"id": int, "segmentation": {"size": [H, W], "counts": str},
                      "area": int, "bbox": [x, y, w, h], "predicted_iou": float,
                      "point_coords": [[x, y]], "stability_score": float,
                      "crop_box": [x, y, w, h]}, ...]}

``segmentation`` is a COCO compressed RLE. ``bbox`` follows the official generator (see
:mod:`segany.masks`): it spans pixel *indices*, ``w = x_max - x_min`` and ``h = y_max -
y_min``, so a one-pixel mask has ``w = h = 0`` -- not COCO's ``toBbox`` extent (``+ 1``).
Boxes and points are written as floats and ``area`` as an int, whoever the producer.
Converted human annotations carry ``predicted_iou = stability_score = 1.0`` and a point
inside the mask, so files written here read back with the official SA-1B tooling too.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_files import is_partial_file, write_all_or_nothing, write_text_atomic
from ..masks import area_from_rle, batched_mask_to_box, box_xyxy_to_xywh, masks_to_coco_rle, rle_to_mask


class SA1BError(ValueError):
    """An SA-1B folder or record is malformed."""


@dataclass(frozen=True)
class SA1BRecord:
    """One image of an SA-1B folder: where its files are and what its JSON says."""

    json_path: Path
    image_path: Path
    width: int
    height: int
    annotations: list[dict[str, Any]]

    def decode(self, index: int) -> np.ndarray:
        """Annotation ``index`` as an HxW bool mask."""
        return decode_rle(self.annotations[index]["segmentation"])


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """HxW bool mask -> COCO compressed RLE with a JSON-safe ``counts`` string."""
    return masks_to_coco_rle(np.asarray(mask, dtype=bool)[None])[0]


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed ``counts`` string or uncompressed list) -> HxW bool mask."""
    return rle_to_mask(rle)


def mask_bbox(mask: np.ndarray) -> list[float]:
    """The SA-1B ``bbox`` of an HxW bool mask: XYWH over pixel indices (``w = x_max -
    x_min``, a one-pixel mask has ``w = h = 0``); ``[0, 0, 0, 0]`` when it is empty.

    Computed by :func:`segany.masks.batched_mask_to_box`, the box the automatic generator
    gives each mask, so a converted label and a generated mask get the same box.
    """
    return [float(v) for v in box_xyxy_to_xywh(batched_mask_to_box(np.asarray(mask, dtype=bool))).tolist()]


def _point_inside(mask: np.ndarray) -> list[float]:
    # SA-1B stores the point that produced each automatic mask; for a human label any point
    # inside fits: the mask pixel nearest the pixels' median.
    ys, xs = np.nonzero(mask)
    mid = np.argmin((xs - np.median(xs)) ** 2 + (ys - np.median(ys)) ** 2)
    return [float(xs[mid]), float(ys[mid])]


def annotation_record(
    ann_id: int,
    *,
    mask: np.ndarray | None = None,
    rle: dict[str, Any] | None = None,
    bbox: list[float] | None = None,
    area: int | None = None,
    predicted_iou: float = 1.0,
    stability_score: float = 1.0,
    point_coords: list[list[float]] | None = None,
    crop_box: list[float] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One SA-1B annotation, from an HxW bool ``mask`` or a COCO ``rle`` (exactly one).

    The defaults describe a human label: IoU and stability 1, the whole image as crop, and
    a point inside the mask (an empty mask has none, so it is refused unless
    ``point_coords`` is given). ``bbox`` (the :func:`mask_bbox` convention) and ``area``
    are computed from the mask; a producer that already has them *from the same mask* (the
    automatic generator, whose boxes come from :func:`segany.masks.batched_mask_to_box`)
    may pass them to save decoding every mask again -- ``tests/test_sa1b_producers.py``
    checks that all producers agree. ``extra`` keys (e.g. the data engine's ``source``)
    follow the SA-1B ones.
    """
    if (mask is None) == (rle is None):
        raise ValueError("give exactly one of mask and rle")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        rle = encode_rle(mask)
    else:
        rle = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]}
        if isinstance(rle["counts"], bytes):
            rle["counts"] = rle["counts"].decode("ascii")
        elif not isinstance(rle["counts"], str):
            rle = encode_rle(decode_rle(rle))  # uncompressed runs -> the compressed string SA-1B stores
    if bbox is None or (point_coords is None and mask is None):
        mask = decode_rle(rle) if mask is None else mask
    if area is None:
        area = area_from_rle(rle)
    if point_coords is None:
        if area == 0:
            raise SA1BError(f"annotation {ann_id} is an empty mask")
        point_coords = [_point_inside(mask)]
    h, w = rle["size"]
    record = {
        "id": int(ann_id),
        "segmentation": rle,
        "area": int(area),
        "bbox": mask_bbox(mask) if bbox is None else [float(v) for v in bbox],
        "predicted_iou": float(predicted_iou),
        "point_coords": [[float(x), float(y)] for x, y in point_coords],
        "stability_score": float(stability_score),
        "crop_box": [0.0, 0.0, float(w), float(h)] if crop_box is None else [float(v) for v in crop_box],
    }
    if extra:
        record.update(extra)
    return record


def image_record(image_id: int, width: int, height: int, file_name: str) -> dict[str, Any]:
    """The ``image`` entry of an SA-1B JSON."""
    return {"image_id": int(image_id), "width": int(width), "height": int(height), "file_name": str(file_name)}


def document(image: dict[str, Any], annotations: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole SA-1B JSON object of one image (``image`` first, as the official files)."""
    return {"image": image, "annotations": list(annotations)}


def dumps(data: dict[str, Any]) -> str:
    """Compact JSON text of an SA-1B object, key order kept (the form every writer uses)."""
    return json.dumps(data, separators=(",", ":"))


def write_json(path: str | os.PathLike, image: dict[str, Any], annotations: list[dict[str, Any]]) -> Path:
    """Write one SA-1B JSON file atomically; returns its path.

    The text goes to a hidden temporary file in the same folder and is renamed over ``path``
    (:mod:`segany.atomic_files`), so a reader never sees half a file (:func:`list_records`
    skips temporary names).
    """
    return write_text_atomic(path, dumps(document(image, annotations)))


def write_record(
    out_dir: str | os.PathLike,
    image_id: int,
    image_src: str | os.PathLike,
    masks: list[np.ndarray],
    size: tuple[int, int],
) -> Path:
    """Write one image (copied from ``image_src``) and its masks as ``sa_<id>.*``.

    ``size`` is the image's (H, W); every mask must have it. Empty masks are skipped. Both
    files are written under temporary names and renamed only when both are complete, JSON
    last (:func:`~segany.atomic_files.write_all_or_nothing`), so a reader never sees a JSON
    whose image is missing or half-written, nor an image left without its JSON. Returns the
    JSON path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h, w = size
    suffix = Path(image_src).suffix.lower() or ".png"
    image_name = f"sa_{image_id}{suffix}"
    annotations = []
    for k, m in enumerate(masks):
        if m.shape != (h, w):
            raise SA1BError(f"mask {k} of {image_src} has shape {m.shape}, the image is {(h, w)}")
        if m.any():
            annotations.append(annotation_record(image_id * 10000 + len(annotations), mask=m))
    json_path = out / f"sa_{image_id}.json"
    text = dumps(document(image_record(image_id, w, h, image_name), annotations))
    write_all_or_nothing([
        (out / image_name, lambda tmp: shutil.copyfile(image_src, tmp)),
        (json_path, lambda tmp: tmp.write_text(text, encoding="utf-8")),
    ])
    return json_path


def load_json(json_path: str | os.PathLike) -> dict[str, Any]:
    """The parsed JSON of one SA-1B file, checked to have ``image`` and ``annotations``.

    For readers that want the raw object (extra image fields, a lenient ``file_name``);
    :func:`read_record` is the checked, typed form.
    """
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SA1BError(f"cannot read {json_path}: {exc}") from None
    if not isinstance(data, dict) or "image" not in data or "annotations" not in data:
        raise SA1BError(f"{json_path} is not an SA-1B record (needs 'image' and 'annotations')")
    return data


def read_record(json_path: str | os.PathLike) -> SA1BRecord:
    """Parse one SA-1B JSON file (the image is located, not loaded)."""
    json_path = Path(json_path)
    data = load_json(json_path)
    try:
        info = data["image"]
        annotations = data["annotations"]
        width, height, file_name = int(info["width"]), int(info["height"]), str(info["file_name"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SA1BError(f"{json_path} is not an SA-1B record (bad or missing field: {exc})") from None
    return SA1BRecord(json_path, json_path.parent / file_name, width, height, list(annotations))


def list_records(root: str | os.PathLike) -> list[Path]:
    """All SA-1B JSON files of a folder (searched recursively), in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise SA1BError(f"SA-1B folder not found: {root}")
    paths = sorted(p for p in root.rglob("*.json") if not is_partial_file(p))  # not a write in progress
    if not paths:
        raise SA1BError(f"no SA-1B .json records under {root}")
    return paths


def validate_record(json_path: str | os.PathLike, check_image: bool = True) -> list[str]:
    """Problems of one record (empty list when it is valid): fields, RLE sizes, areas,
    boxes, and (optionally) that the image exists and has the stated size."""
    problems: list[str] = []
    try:
        rec = read_record(json_path)
    except SA1BError as exc:
        return [str(exc)]
    if check_image:
        if not rec.image_path.is_file():
            problems.append(f"{json_path}: image {rec.image_path.name} is missing")
        else:
            from PIL import Image

            with Image.open(rec.image_path) as im:
                if im.size != (rec.width, rec.height):
                    problems.append(f"{json_path}: image is {im.size[0]}x{im.size[1]}, JSON says {rec.width}x{rec.height}")
    for k, ann in enumerate(rec.annotations):
        try:
            seg = ann["segmentation"]
            if list(seg["size"]) != [rec.height, rec.width]:
                problems.append(f"{json_path}: annotation {k} RLE size {seg['size']} != image {[rec.height, rec.width]}")
                continue
            m = decode_rle(seg)
            area = int(m.sum())
            if area == 0:
                problems.append(f"{json_path}: annotation {k} is empty")
            if "area" in ann and int(ann["area"]) != area:
                problems.append(f"{json_path}: annotation {k} area {ann['area']} != decoded {area}")
            if len(ann.get("bbox", [0, 0, 0, 0])) != 4:
                problems.append(f"{json_path}: annotation {k} bbox is not XYWH")
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"{json_path}: annotation {k} is malformed ({exc})")
    return problems


class RecordIndex:
    """The records of one or more SA-1B folders, listed once and read lazily (cached).

    ``roots`` are folders or ``(folder, repeat)`` pairs; ``repeat`` lists a folder's records
    that many times, to balance small sources against large ones. ``holdout_every`` N > 0 sets
    every N-th record of each folder aside as a fixed validation set carved from training
    data: ``split="val"`` lists only those (once each, whatever the repeat), ``"train"`` the
    rest. The training datasets build on it, so the split is decided in one place.
    """

    def __init__(
        self,
        roots: list[str | os.PathLike | tuple[str | os.PathLike, int]],
        holdout_every: int = 0,
        split: str = "train",
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val' (got {split!r})")
        self.paths: list[Path] = []
        for root in roots:
            path, repeat = root if isinstance(root, tuple | list) else (root, 1)
            records = list_records(path)
            if holdout_every > 0:
                held = set(records[holdout_every - 1 :: holdout_every])
                records = [r for r in records if (r in held) == (split == "val")]
                repeat = 1 if split == "val" else repeat
            self.paths.extend(records * int(repeat))
        self._records: dict[Path, SA1BRecord] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def record(self, index: int) -> SA1BRecord:
        path = self.paths[index]
        if path not in self._records:
            self._records[path] = read_record(path)
        return self._records[path]
