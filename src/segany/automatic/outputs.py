"""Writers for automatic masks: SA-1B JSON, COCO JSON, instance-label PNG and overlay PNG.

Every file is written to a hidden temporary name in the destination folder and renamed into
place, so a file with its final name is always complete (a killed run leaves at most a
``.*.partial`` file, which the next run removes).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..masks import rle_to_mask

PARTIAL_SUFFIX = ".partial"
FORMATS = ("sa1b", "coco", "png")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` to ``path`` (same folder, so the rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def image_id_for(name: str) -> int:
    """A stable image id from the image's relative path (the same on every run)."""
    return zlib.crc32(name.encode("utf-8"))


def sa1b_json(records: list[dict[str, Any]], file_name: str, width: int, height: int) -> dict[str, Any]:
    """Records of a ``coco_rle`` generator -> the SA-1B per-image JSON layout."""
    annotations = []
    for i, r in enumerate(records):
        annotations.append(
            {
                "id": i + 1,
                "segmentation": r["segmentation"],
                "bbox": [float(v) for v in r["bbox"]],
                "area": int(r["area"]),
                "predicted_iou": float(r["predicted_iou"]),
                "point_coords": [[float(x), float(y)] for x, y in r["point_coords"]],
                "crop_box": [float(v) for v in r["crop_box"]],
                "stability_score": float(r["stability_score"]),
            }
        )
    image = {"image_id": image_id_for(file_name), "width": int(width), "height": int(height), "file_name": file_name}
    return {"image": image, "annotations": annotations}


def coco_json(records: list[dict[str, Any]], file_name: str, width: int, height: int) -> dict[str, Any]:
    """Records -> a COCO instances file for one image (class-agnostic category 1, ``score``
    = predicted IoU, so it loads with pycocotools' COCO / loadRes)."""
    image_id = image_id_for(file_name)
    anns = []
    for i, r in enumerate(records):
        anns.append(
            {
                "id": i + 1,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": r["segmentation"],
                "area": int(r["area"]),
                "bbox": [float(v) for v in r["bbox"]],
                "iscrowd": 0,
                "score": float(r["predicted_iou"]),
                "stability_score": float(r["stability_score"]),
                "point_coords": r["point_coords"],
            }
        )
    return {
        "images": [{"id": image_id, "width": int(width), "height": int(height), "file_name": file_name}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    def _write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, separators=(",", ":"))

    atomic_write(path, _write)


def label_map(records: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """HxW uint16 instance labels (0 = no mask, i+1 = record i); larger masks are painted
    first so smaller masks lying on them stay visible."""
    if len(records) >= 2**16:
        raise ValueError(f"{len(records)} masks do not fit a 16-bit label map")
    labels = np.zeros((height, width), dtype=np.uint16)
    for i in sorted(range(len(records)), key=lambda k: -records[k]["area"]):
        labels[rle_to_mask(records[i]["segmentation"])] = i + 1
    return labels


def write_png(path: Path, array: np.ndarray) -> None:
    def _write(tmp: Path) -> None:
        Image.fromarray(array).save(tmp, format="PNG")

    atomic_write(path, _write)


def overlay(image: np.ndarray, records: list[dict[str, Any]], alpha: float = 0.5, max_side: int = 2048) -> np.ndarray:
    """The image with every mask filled in its own colour (largest first) and outlined;
    images larger than ``max_side`` are shown downscaled (masks with them)."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = image if scale == 1.0 else np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    out = base.astype(np.float32)
    rng = np.random.RandomState(0)
    colours = rng.randint(40, 256, size=(max(1, len(records)), 3)).astype(np.float32)
    for i in sorted(range(len(records)), key=lambda k: -records[k]["area"]):
        m = rle_to_mask(records[i]["segmentation"])
        if scale != 1.0:
            m = np.asarray(Image.fromarray(m).resize(size, Image.NEAREST))
        out[m] = (1 - alpha) * out[m] + alpha * colours[i]
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        out[edge] = colours[i] * 0.6
    return np.clip(out, 0, 255).astype(np.uint8)
