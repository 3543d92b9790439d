"""Interchange formats: SA-1B folders out to COCO, COCO polygons, YOLO-seg and label PNGs,
and YOLO-seg / label-PNG folders back in (COCO comes back in through ``convert.iter_coco``).

Layouts, chosen to be what the tools' own documentation shows (docs/datasets.md says
what CVAT, Label Studio and X-AnyLabeling need for each):

- ``coco`` / ``polygons``: ``OUT/annotations/instances_default.json``, images under
  ``OUT/images/default/`` -- CVAT's "COCO 1.0" export layout (subset ``default``) -- and
  ``OUT/classes.txt`` (X-AnyLabeling's class file). ``coco`` keeps SA-1B's compressed RLEs
  unchanged; ``polygons`` writes :mod:`segany.data.polygons` outlines (holes bridged).
- ``yolo``: Ultralytics' segmentation layout, ``OUT/data.yaml``, ``OUT/images/train/``,
  ``OUT/labels/train/<image stem>.txt`` (one line per mask: class, then the normalised
  outline), ``OUT/classes.txt``.
- ``png``: ``OUT/images/`` and ``OUT/labels/<image stem>.png``, one instance-id label image
  per image (0 background, annotation k -> k + 1), 8-bit, or 16-bit over 255 masks.

Categories: SA-1B masks are class-agnostic, so there is one category ``object`` (COCO id 1,
YOLO class 0) unless the records' annotations carry a ``category_id`` (each id then becomes
a category, named by the annotation's ``category_name`` when given). Importing back into
SA-1B drops classes, as SA-1B has none.

What survives a round trip (tests/test_data_formats.py measures it on real masks):

- ``coco``: bit-identical RLEs.
- ``polygons`` / ``yolo``: exact with the default ``tolerance=0`` (pycocotools rasterises
  the quarter-pixel-inset outlines back to the same pixels; YOLO's 6-decimal normalised
  coordinates move a vertex by under 0.001 px at 2,000 px); ``tolerance`` > 0 simplifies.
- ``png``: a pixel belongs to one label, so overlapping masks cannot all survive. Masks
  are painted largest first, so a smaller mask lying on a larger one (a part on its whole,
  SAM's nested masks) stays whole on top and the larger one loses the covered pixels; a
  mask covered entirely disappears. The export summary counts both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..atomic_files import atomic_path, is_partial_file
from ..masks import area_from_rle, coco_bbox, mask_iou, rle_to_mask, validate_rle
from .convert import Item
from .polygons import join_polygons, mask_to_polygons, polygons_to_mask
from .sa1b import SA1BRecord, list_records, read_record

EXPORT_FORMATS = ("coco", "polygons", "yolo", "png")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
COCO_SUBSET = "default"
YOLO_SUBSET = "train"


class FormatError(ValueError):
    """An export or import input is malformed (the message names the file)."""


# --------------------------------------------------------------------------- reading SA-1B


@dataclass(frozen=True)
class SourceImage:
    """One record of the SA-1B folder being exported, with the names it gets outside."""

    record: SA1BRecord
    image_id: int
    rel: Path  # the image's path relative to the SA-1B folder (kept, so names stay unique)


def record_ids(root: str | os.PathLike) -> list[tuple[Path, int]]:
    """The record paths of an SA-1B folder with their export image ids: the ``sa_<n>``
    numbers of the JSON names when those are unique, else 1..N in listing order."""
    paths = list_records(root)
    nums = [re.fullmatch(r"sa_(\d+)", p.stem) for p in paths]
    ids = [int(m.group(1)) for m in nums if m]
    if len(ids) != len(paths) or len(set(ids)) != len(ids):
        ids = list(range(1, len(paths) + 1))
    return list(zip(paths, ids, strict=True))


def iter_source_images(root: str | os.PathLike, listed: list[tuple[Path, int]]) -> Iterator[SourceImage]:
    """Read the listed records one at a time (an export holds one image's masks at once)."""
    root = Path(root)
    for path, image_id in listed:
        rec = read_record(path)
        try:
            rel = rec.image_path.relative_to(root)
        except ValueError:
            rel = Path(rec.image_path.name)
        yield SourceImage(rec, image_id, rel)


def decode_annotation(rec: SA1BRecord, k: int) -> tuple[dict[str, Any], np.ndarray]:
    """Annotation ``k`` of a record: its checked COCO RLE and HxW bool mask."""
    ann = rec.annotations[k]
    try:
        rle = validate_rle(ann["segmentation"], expected_size=(rec.height, rec.width), field="segmentation")
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{rec.json_path}: annotation {k}: {exc}") from None
    return rle, rle_to_mask(rle)


def categories_of(images: Iterator[SourceImage]) -> list[dict[str, Any]]:
    """COCO categories: ``object`` (id 1) unless annotations carry ``category_id``."""
    found: dict[int, str] = {}
    for src in images:
        for ann in src.record.annotations:
            if isinstance(ann, dict) and "category_id" in ann:
                cid = int(ann["category_id"])
                found.setdefault(cid, str(ann.get("category_name", f"category_{cid}")))
    if not found:
        return [{"id": 1, "name": "object", "supercategory": "object"}]
    return [{"id": cid, "name": name, "supercategory": "object"} for cid, name in sorted(found.items())]


def _category(ann: dict[str, Any]) -> int:
    return int(ann.get("category_id", 1))


def _copy_image(src: SourceImage, dest: Path) -> None:
    if not src.record.image_path.is_file():
        raise FormatError(f"{src.record.json_path}: image {src.record.image_path} is missing")
    with atomic_path(dest) as tmp:
        shutil.copyfile(src.record.image_path, tmp)


def _write_text(path: Path, text: str) -> None:
    from ..eval.report import write_text

    write_text(path, text)


# --------------------------------------------------------------------------- export


def export_folder(
    sa1b_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    fmt: str,
    copy_images: bool = True,
    tolerance: float = 0.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Export an SA-1B folder as ``fmt`` (one of :data:`EXPORT_FORMATS`) into ``out_dir``.

    ``copy_images`` puts the images next to the labels (the tools import a folder or zip
    of both); ``tolerance`` (pixels) simplifies polygon outlines (``polygons``/``yolo``).
    Returns a summary: images, masks, and for polygon formats the worst mask IoU of the
    outlines against the masks, for ``png`` the masks overwritten or hidden by overlaps.
    """
    if fmt not in EXPORT_FORMATS:
        raise FormatError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    listed = record_ids(sa1b_dir)
    out = Path(out_dir)
    # Category names need one pass over the records first (the polygon formats number them).
    cats = categories_of(iter_source_images(sa1b_dir, listed)) if fmt != "png" else []
    bar = tqdm(iter_source_images(sa1b_dir, listed), total=len(listed), desc=f"export {fmt}", unit="img",
               disable=not progress)
    if fmt in ("coco", "polygons"):
        return _export_coco(cats, bar, out, polygons=fmt == "polygons", copy_images=copy_images, tolerance=tolerance)
    if fmt == "yolo":
        return _export_yolo(cats, bar, out, copy_images=copy_images, tolerance=tolerance)
    return _export_png(bar, out, copy_images=copy_images)


def _outline_iou(polys: list[np.ndarray], mask: np.ndarray) -> float:
    back = polygons_to_mask(polys, *mask.shape)
    return float(mask_iou(torch.from_numpy(back[None]), torch.from_numpy(mask[None]))[0, 0])


def _export_coco(cats: list[dict[str, Any]], bar: Any, out: Path, polygons: bool, copy_images: bool,
                 tolerance: float) -> dict[str, Any]:
    coco_images, anns = [], []
    min_iou = 1.0
    for src in bar:
        rec = src.record
        file_name = src.rel.as_posix()
        coco_images.append({"id": src.image_id, "file_name": file_name, "width": rec.width, "height": rec.height})
        for k, ann in enumerate(rec.annotations):
            rle, mask = decode_annotation(rec, k)
            if not mask.any():
                continue
            if polygons:
                polys = mask_to_polygons(mask, tolerance)
                min_iou = min(min_iou, _outline_iou(polys, mask))
                seg: Any = [[round(float(v), 4) for v in p.reshape(-1)] for p in polys]
            else:
                seg = rle
            anns.append({
                "id": len(anns) + 1,
                "image_id": src.image_id,
                "category_id": _category(ann),
                "segmentation": seg,
                "area": area_from_rle(rle),
                "bbox": coco_bbox(mask),
                "iscrowd": 0,
                "score": float(ann.get("predicted_iou", 1.0)),
            })
        if copy_images:
            _copy_image(src, out / "images" / COCO_SUBSET / src.rel)
    data = {
        "info": {"description": "exported by segany data export", "version": "1.0"},
        "licenses": [],
        "images": coco_images,
        "annotations": anns,
        "categories": cats,
    }
    json_path = out / "annotations" / f"instances_{COCO_SUBSET}.json"
    _write_text(json_path, json.dumps(data))
    _write_text(out / "classes.txt", "".join(c["name"] + "\n" for c in cats))
    summary: dict[str, Any] = {"format": "polygons" if polygons else "coco", "images": len(coco_images),
                               "masks": len(anns), "annotations": str(json_path)}
    if polygons:
        summary["min_outline_iou"] = min_iou
    return summary


def _yaml_names(cats: list[dict[str, Any]]) -> str:
    return "".join(f"  {k}: {json.dumps(c['name'])}\n" for k, c in enumerate(cats))


def _export_yolo(cats: list[dict[str, Any]], bar: Any, out: Path, copy_images: bool,
                 tolerance: float) -> dict[str, Any]:
    index = {c["id"]: k for k, c in enumerate(cats)}
    n_images = n_masks = 0
    min_iou = 1.0
    for src in bar:
        n_images += 1
        rec = src.record
        lines = []
        for k, ann in enumerate(rec.annotations):
            _rle, mask = decode_annotation(rec, k)
            polys = mask_to_polygons(mask, tolerance)
            if not polys:
                continue
            line = join_polygons(polys) / np.array([rec.width, rec.height], dtype=np.float64)
            coords = " ".join(f"{v:.6f}" for v in line.reshape(-1))
            lines.append(f"{index[_category(ann)]} {coords}\n")
            written = np.array(coords.split(), dtype=np.float64).reshape(-1, 2)  # what a reader gets back
            min_iou = min(min_iou, _outline_iou([written * np.array([rec.width, rec.height])], mask))
            n_masks += 1
        _write_text(out / "labels" / YOLO_SUBSET / src.rel.with_suffix(".txt"), "".join(lines))
        if copy_images:
            _copy_image(src, out / "images" / YOLO_SUBSET / src.rel)
    # No ``path:`` key: Ultralytics then resolves the folders relative to this file.
    _write_text(out / "data.yaml", f"train: images/{YOLO_SUBSET}\nval: images/{YOLO_SUBSET}\nnames:\n{_yaml_names(cats)}")
    _write_text(out / "classes.txt", "".join(c["name"] + "\n" for c in cats))
    return {"format": "yolo", "images": n_images, "masks": n_masks, "min_outline_iou": min_iou}


def paint_labels(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Instance-id label image (mask k -> k + 1, 0 background), uint8 or uint16 over 255
    masks. Largest masks are painted first, so smaller ones stay on top."""
    if len(masks) > 65535:
        raise FormatError(f"{len(masks)} masks do not fit a 16-bit label PNG")
    labels = np.zeros(shape, dtype=np.uint8 if len(masks) <= 255 else np.uint16)
    order = sorted(range(len(masks)), key=lambda k: -int(masks[k].sum()))
    for k in order:
        labels[masks[k]] = k + 1
    return labels


def _export_png(bar: Any, out: Path, copy_images: bool) -> dict[str, Any]:
    from ..eval.report import save_image

    n_images = n_masks = hidden = overwritten = 0
    for src in bar:
        n_images += 1
        rec = src.record
        masks = [decode_annotation(rec, k)[1] for k in range(len(rec.annotations))]
        labels = paint_labels(masks, (rec.height, rec.width))
        for k, m in enumerate(masks):
            kept = int((labels[m] == k + 1).sum())
            if kept == 0:
                hidden += 1
            elif kept < int(m.sum()):
                overwritten += 1
        n_masks += len(masks)
        save_image(out / "labels" / src.rel.with_suffix(".png"), labels)
        if copy_images:
            _copy_image(src, out / "images" / src.rel)
    return {"format": "png", "images": n_images, "masks": n_masks, "masks_partly_covered": overwritten,
            "masks_hidden": hidden}


# --------------------------------------------------------------------------- import


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file, read from its header."""
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except OSError as exc:
        raise FormatError(f"cannot read image {path}: {exc}") from None


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FormatError(f"image folder not found: {folder}")
    found = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not is_partial_file(p)
    )
    if not found:
        raise FormatError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return found


def _pick_dir(root: Path, kind: str, subset: str) -> Path:
    """``root/<kind>/<subset>`` when it exists (the exported layout), else ``root/<kind>``."""
    nested = root / kind / subset
    return nested if nested.is_dir() else root / kind


def parse_yolo_line(line: str, height: int, width: int, where: str) -> np.ndarray:
    """One YOLO-seg line ``class x1 y1 x2 y2 ...`` (normalised) -> HxW bool mask."""
    parts = line.split()
    try:
        values = [float(v) for v in parts[1:]]
        int(parts[0])
    except (ValueError, IndexError):
        raise FormatError(f"{where}: not 'class x1 y1 x2 y2 ...' numbers") from None
    if len(values) % 2 or len(values) < 6:
        kind = " (a detection box, not a polygon)" if len(values) == 4 else ""
        raise FormatError(f"{where}: {len(values)} coordinates{kind}; a polygon needs pairs, at least 3")
    xy = np.asarray(values).reshape(-1, 2)
    if not np.isfinite(xy).all() or xy.min() < -1e-6 or xy.max() > 1 + 1e-6:
        raise FormatError(f"{where}: coordinates outside [0, 1] (YOLO coordinates are normalised by the image size)")
    return polygons_to_mask([xy * np.array([width, height])], height, width)


def iter_yolo(root: str | os.PathLike, images: str | os.PathLike | None = None,
              images_only: bool = False) -> Iterator[Item]:
    """YOLO-seg folder -> items: ``images/[train/]`` and ``labels/[train/]<stem>.txt``.

    An image without a label file has no masks (YOLO's background image). Class ids are
    dropped (SA-1B is class-agnostic)."""
    root = Path(root)
    image_dir = Path(images) if images else _pick_dir(root, "images", YOLO_SUBSET)
    label_dir = _pick_dir(root, "labels", YOLO_SUBSET)
    for image in _list_images(image_dir):
        h, w = image_size(image)
        label = label_dir / image.relative_to(image_dir).with_suffix(".txt")
        if images_only or not label.is_file():
            yield image, [], (h, w)
            continue
        masks = []
        for n, line in enumerate(label.read_text().splitlines(), start=1):
            if line.strip():
                masks.append(parse_yolo_line(line, h, w, f"{label}:{n}"))
        yield image, masks, (h, w)


def read_label_png(path: Path) -> np.ndarray:
    """An instance-id label PNG (8/16-bit grey or palette) as an HxW integer array."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise FormatError(f"{path}: label PNG has mode {im.mode}; expected one channel (grey or palette)")
            return np.asarray(im).astype(np.int64)
    except OSError as exc:
        raise FormatError(f"cannot read label image {path}: {exc}") from None


def iter_label_png_folder(root: str | os.PathLike, images: str | os.PathLike | None = None,
                          images_only: bool = False) -> Iterator[Item]:
    """Label-PNG folder -> items: ``images/<name>`` with ``labels/<stem>.png`` (value =
    instance id, 0 = background; one mask per value, in increasing order)."""
    root = Path(root)
    image_dir = Path(images) if images else root / "images"
    label_dir = root / "labels"
    for image in _list_images(image_dir):
        h, w = image_size(image)
        label = label_dir / image.relative_to(image_dir).with_suffix(".png")
        if not label.is_file():
            raise FormatError(f"label image {label} for {image} is missing")
        if images_only:
            yield image, [], (h, w)
            continue
        labels = read_label_png(label)
        if labels.shape != (h, w):
            raise FormatError(f"{label} is {labels.shape[1]}x{labels.shape[0]}, its image {image} is {w}x{h}")
        yield image, [labels == v for v in np.unique(labels) if v != 0], (h, w)


def coco_image_dir(annotation_json: str | os.PathLike) -> Path:
    """Where a COCO file's images are when no folder is given: ``<root>/images/<subset>``
    for ``<root>/annotations/instances_<subset>.json`` (the exported / CVAT layout), else
    ``images/`` next to the JSON, else the JSON's own folder."""
    path = Path(annotation_json)
    m = re.fullmatch(r"instances_(.+)", path.stem)
    if path.parent.name == "annotations":
        root = path.parent.parent
        if m and (root / "images" / m.group(1)).is_dir():
            return root / "images" / m.group(1)
        if (root / "images").is_dir():
            return root / "images"
    if (path.parent / "images").is_dir():
        return path.parent / "images"
    return path.parent

