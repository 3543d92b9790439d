"""Writers for automatic masks: SA-1B JSON, COCO JSON, instance-label PNG and overlay PNG
(its pixels drawn by :func:`segany.visualize.overlay_records`), and the output-path checks
every command shares.

Every file is written to a hidden temporary name in the destination folder and renamed into
place (:mod:`segany.atomic_files`), so a file with its final name is always complete (a killed
run leaves at most a hidden ``.partial`` temp, which the next run removes). Output paths are
checked before any work (:func:`check_outputs`): a path that names an input, another output,
an existing directory or an unwritable folder is refused with a one-line ``ValueError`` instead of an ``OSError``
after minutes of computing -- or, worse, a photo silently replaced by its mask.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..atomic_files import write_all_or_nothing
from ..data import sa1b
from ..masks import rle_to_mask

FORMATS = ("sa1b", "coco", "png")


def _same_key(path: Path) -> str:
    """What two paths share when they name one file: the resolved, case-normalised path."""
    return os.path.normcase(os.path.realpath(path))


def check_output_file(path: Path, what: str = "output") -> None:
    """Refuse an output path that cannot be written, before any work is done.

    Checks that it is not an existing directory or special file (replacing ``/dev/null``
    as root would be a disaster), that the nearest existing ancestor of its folder is a
    directory, and that it is writable (folders that do not exist yet are created later).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is an existing directory; give a file path")
    if path.exists() and not path.is_file():
        raise ValueError(f"{what} {path} exists and is not a regular file")
    check_output_dir(path.parent, what=f"folder of {what} {path}")


def check_output_dir(folder: Path, what: str = "output folder") -> None:
    """Refuse a folder that is not a directory or cannot be created or written to."""
    folder = Path(folder) if str(folder) else Path(".")
    probe = folder
    while not probe.exists():
        if probe.is_symlink():
            raise ValueError(f"{what}: {probe} is a dangling symbolic link")
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if not probe.is_dir():
        raise ValueError(f"{what}: {probe} exists and is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: cannot write to {probe} (permission denied or read-only)")


def check_outputs(outputs: Iterable[tuple[str, Path]], inputs: Iterable[Path] = ()) -> None:
    """Refuse outputs that name an input or each other, or cannot be written.

    ``outputs`` are ``(what, path)`` pairs (``what`` names the option in the message).
    Paths are compared resolved (symbolic links, ``..``), so ``--out ./photo.jpg`` for the
    input ``photo.jpg`` is caught as well.
    """
    ins = {_same_key(Path(p)): Path(p) for p in inputs}
    seen: dict[str, str] = {}
    for what, path in outputs:
        path = Path(path)
        key = _same_key(path)
        if key in ins:
            raise ValueError(f"{what} {path} is the input {ins[key]}: refusing to overwrite an input")
        if key in seen:
            raise ValueError(f"{what} {path} is the same file as {seen[key]}; give different paths")
        seen[key] = f"{what} {path}"
        check_output_file(path, what)


def image_id_for(name: str) -> int:
    """A stable image id from the image's relative path (the same on every run)."""
    return zlib.crc32(name.encode("utf-8"))


def sa1b_json(records: list[dict[str, Any]], file_name: str, width: int, height: int) -> dict[str, Any]:
    """Records of a ``coco_rle`` generator -> the SA-1B per-image JSON layout.

    Built by :mod:`segany.data.sa1b` (the one SA-1B record builder). The generator's own
    ``bbox`` and ``area`` are passed on: they come from the same masks in the same
    convention (``masks.batched_mask_to_box``), and recomputing them would decode every mask
    again.
    """
    annotations = [
        sa1b.annotation_record(
            i + 1,
            rle=r["segmentation"],
            bbox=r["bbox"],
            area=r["area"],
            predicted_iou=r["predicted_iou"],
            stability_score=r["stability_score"],
            point_coords=r["point_coords"],
            crop_box=r["crop_box"],
        )
        for i, r in enumerate(records)
    ]
    return sa1b.document(sa1b.image_record(image_id_for(file_name), width, height, file_name), annotations)


def coco_json(records: list[dict[str, Any]], file_name: str, width: int, height: int) -> dict[str, Any]:
    """Records -> a COCO instances file for one image (class-agnostic category 1, ``score``
    = predicted IoU, so it loads with pycocotools' COCO / loadRes).

    ``bbox`` is the generator's as it is (the official convention, ``w = x_max - x_min``),
    one pixel narrower than pycocotools' ``toBbox`` that the engine's ``coco.json`` uses.
    """
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
    write_all_or_nothing([(path, json_writer(payload))])


def json_writer(payload: dict[str, Any]) -> Callable[[Path], None]:
    """A writer of compact JSON (key order kept), for :func:`write_all_or_nothing`."""

    def _write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, separators=(",", ":"))

    return _write


def label_map(records: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """HxW uint16 instance labels (0 = no mask, i+1 = record i); larger masks are painted
    first so smaller masks lying on them stay visible."""
    if len(records) >= 2**16:
        raise ValueError(f"{len(records)} masks do not fit a 16-bit label map")
    labels = np.zeros((height, width), dtype=np.uint16)
    for i in sorted(range(len(records)), key=lambda k: -records[k]["area"]):
        labels[rle_to_mask(records[i]["segmentation"])] = i + 1
    return labels


def write_png(path: Path, array: np.ndarray, text: dict[str, str] | None = None) -> None:
    write_all_or_nothing([(path, png_writer(array, text))])


def png_writer(array: np.ndarray, text: dict[str, str] | None = None) -> Callable[[Path], None]:
    """A writer of ``array`` as PNG with optional ``tEXt`` chunks (written before the pixel
    data, so reading them back does not decode the image)."""

    def _write(tmp: Path) -> None:
        info = None
        if text:
            from PIL.PngImagePlugin import PngInfo

            info = PngInfo()
            for key, value in text.items():
                info.add_text(key, value)
        Image.fromarray(array).save(tmp, format="PNG", pnginfo=info)

    return _write
