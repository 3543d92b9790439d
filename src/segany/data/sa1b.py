"""SA-1B format: one image file plus one JSON file per image, side by side in a folder.

The JSON is the SA-1B layout::

    {"image": {"image_id": int, "width": W, "height": H, "file_name": "sa_1.jpg"},
     "annotations": [{"id": int, "segmentation": {"size": [H, W], "counts": str},
                      "area": int, "bbox": [x, y, w, h], "predicted_iou": float,
                      "point_coords": [[x, y]], "stability_score": float,
                      "crop_box": [x, y, w, h]}, ...]}

``segmentation`` is a COCO compressed RLE; boxes are XYWH in pixels. Converted human
annotations carry ``predicted_iou = stability_score = 1.0`` and a point inside the mask, so
files written here read back with the official SA-1B tooling too.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


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
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed ``counts`` string or uncompressed list) -> HxW bool mask."""
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    elif isinstance(counts, str):
        rle = {"size": rle["size"], "counts": counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def annotation_from_mask(mask: np.ndarray, ann_id: int) -> dict[str, Any]:
    """SA-1B annotation dict for one binary mask (a human label: IoU and stability 1)."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise SA1BError(f"annotation {ann_id} is an empty mask")
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    # A point that is in the mask: the mask pixel nearest its median (SA-1B stores the
    # point that produced each automatic mask; for human labels any inside point fits).
    mid = np.argmin((xs - np.median(xs)) ** 2 + (ys - np.median(ys)) ** 2)
    h, w = mask.shape
    return {
        "id": int(ann_id),
        "segmentation": encode_rle(mask),
        "area": int(len(ys)),
        "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
        "predicted_iou": 1.0,
        "point_coords": [[float(xs[mid]), float(ys[mid])]],
        "stability_score": 1.0,
        "crop_box": [0, 0, int(w), int(h)],
    }


def write_record(
    out_dir: str | os.PathLike,
    image_id: int,
    image_src: str | os.PathLike,
    masks: list[np.ndarray],
    size: tuple[int, int],
) -> Path:
    """Write one image (copied from ``image_src``) and its masks as ``sa_<id>.*``.

    ``size`` is the image's (H, W); every mask must have it. Empty masks are skipped. Both
    files are written under temporary names and renamed, JSON last, so a reader never sees
    a JSON whose image is missing or half-written. Returns the JSON path.
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
            annotations.append(annotation_from_mask(m, image_id * 10000 + len(annotations)))
    record = {
        "image": {"image_id": int(image_id), "width": int(w), "height": int(h), "file_name": image_name},
        "annotations": annotations,
    }
    tmp_img = out / (image_name + ".tmp")
    shutil.copyfile(image_src, tmp_img)
    os.replace(tmp_img, out / image_name)
    json_path = out / f"sa_{image_id}.json"
    tmp_json = out / (json_path.name + ".tmp")
    tmp_json.write_text(json.dumps(record))
    os.replace(tmp_json, json_path)
    return json_path


def read_record(json_path: str | os.PathLike) -> SA1BRecord:
    """Parse one SA-1B JSON file (the image is located, not loaded)."""
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text())
        info = data["image"]
        annotations = data["annotations"]
        width, height, file_name = int(info["width"]), int(info["height"]), str(info["file_name"])
    except (OSError, json.JSONDecodeError) as exc:
        raise SA1BError(f"cannot read {json_path}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise SA1BError(f"{json_path} is not an SA-1B record (bad or missing field: {exc})") from None
    return SA1BRecord(json_path, json_path.parent / file_name, width, height, list(annotations))


def list_records(root: str | os.PathLike) -> list[Path]:
    """All SA-1B JSON files of a folder (searched recursively), in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise SA1BError(f"SA-1B folder not found: {root}")
    paths = sorted(p for p in root.rglob("*.json") if not p.name.endswith(".tmp"))
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
