"""Where the masks to embed come from, matched to the images given on the command line.

Two sources: an SA-1B folder (one JSON per image, :mod:`segany.data.sa1b`; what ``segany
data convert`` and ``segany auto`` write) and a COCO instances JSON, whose categories and
supercategories come along as labels -- the linear probe needs them, and converting COCO to
SA-1B first would drop them and renumber the annotations. Either way a mask is named by its
image's file name and its annotation id, and every mask file must name an image the user
gave: an embedding of a mask on the wrong photo would be silently meaningless.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..automatic.folder import collect_images
from ..data.sa1b import list_records, read_record
from ..masks import validate_rle


@dataclass(frozen=True)
class MaskAnnotation:
    """One mask: its id in the mask file, its COCO RLE and (when the source has them) labels."""

    ann_id: int
    rle: dict[str, Any]
    label: str = ""
    """Coarse class (COCO supercategory), "" when the source has none."""
    category: str = ""
    """Fine class (COCO category name), "" when the source has none."""


@dataclass(frozen=True)
class ImageMasks:
    """The masks of one image, and where both came from."""

    image_path: Path
    mask_file: Path
    height: int
    width: int
    annotations: list[MaskAnnotation]


def list_image_files(inputs: list[str]) -> list[Path]:
    """Image files of the given files, folders (recursively) and globs; an input that
    matches nothing is an error (a typo must not silently embed nothing)."""
    jobs, missing = collect_images(inputs)
    if missing:
        item, why = missing[0]
        raise ValueError(f"{item}: {why}")
    if not jobs:
        raise ValueError("no images given")
    return [j.path for j in jobs]


class ImageLookup:
    """Finds the image a mask file names among the images given (by path, else file name)."""

    def __init__(self, images: list[Path]) -> None:
        self.by_path = {p.resolve(): p for p in images}
        self.by_name: dict[str, list[Path]] = {}
        for p in images:
            self.by_name.setdefault(p.name, []).append(p)

    def find(self, file_name: str, beside: Path, mask_file: Path) -> Path:
        candidate = (beside / file_name).resolve()
        if candidate in self.by_path:
            return self.by_path[candidate]
        matches = self.by_name.get(Path(file_name).name, [])
        if not matches:
            raise ValueError(f"{mask_file} names image {file_name!r}, which is not among the images given")
        if len(matches) > 1:
            raise ValueError(
                f"{mask_file} names image {file_name!r}, and several images given have that name: "
                f"{', '.join(str(m) for m in matches[:3])} (give only one)"
            )
        return matches[0]


def default_dataset_name(masks: str | os.PathLike) -> str:
    """A data set name when none is given: the SA-1B folder's name, or for a COCO file
    ``<root>/annotations/instances_x.json`` the root's (``coco_tiny``)."""
    path = Path(masks).resolve()
    if path.is_file():
        return path.parent.parent.name if path.parent.name == "annotations" else path.stem
    return path.name


def read_masks(masks: str | os.PathLike, images: list[Path], limit: int | None = None) -> list[ImageMasks]:
    """The masks of an SA-1B folder (or one SA-1B JSON) or a COCO instances file, each
    image matched to one of ``images``; the first ``limit`` images only when given.

    Raises ValueError for a missing or empty source, a mask file naming an image not given,
    and an RLE that is malformed or whose size differs from the size its file declares
    (the image's own size is checked when it is loaded).
    """
    path = Path(masks)
    if not path.exists():
        raise ValueError(f"mask source not found: {path}")
    lookup = ImageLookup(images)
    coco = _load_coco(path) if path.is_file() else None
    if coco is not None:
        items = _read_coco(coco, path, lookup, limit)
    else:
        records = [path] if path.is_file() else list_records(path)
        items = []
        for json_path in records:
            if limit is not None and len(items) >= limit:
                break
            items.append(_read_sa1b(json_path, lookup))
    if not any(item.annotations for item in items):
        raise ValueError(f"{path} holds no masks")
    items = [item for item in items if item.annotations]
    for item in items:  # before any model runs: a wrong pairing must cost nothing
        h, w = oriented_size(item.image_path)
        if (h, w) != (item.height, item.width):
            raise ValueError(
                f"{item.mask_file}: the masks of {item.image_path.name} are {item.width}x{item.height} "
                f"but the image {item.image_path} is {w}x{h}"
            )
    return items


def oriented_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image as :func:`segany.image_io.load_image` will return it (EXIF
    orientation applied), from the header alone."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            rotated = im.getexif().get(0x0112) in (5, 6, 7, 8)  # orientations that swap the axes
    except OSError as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    return (w, h) if rotated else (h, w)


def _read_sa1b(json_path: Path, lookup: ImageLookup) -> ImageMasks:
    rec = read_record(json_path)
    image = lookup.find(rec.image_path.name, json_path.parent, json_path)
    anns = []
    for k, ann in enumerate(rec.annotations):
        if not isinstance(ann, dict) or "segmentation" not in ann:
            raise ValueError(f"{json_path}: annotation {k} has no segmentation")
        rle = validate_rle(
            ann["segmentation"], (rec.height, rec.width), field=f"{json_path.name}: annotation {k} segmentation"
        )
        ann_id = int(ann.get("id", k))
        category = str(ann.get("category_name", ""))
        anns.append(MaskAnnotation(ann_id, rle, str(ann.get("supercategory", category)), category))
    return ImageMasks(image, json_path, rec.height, rec.width, anns)


def _load_coco(path: Path) -> Any | None:
    """A pycocotools ``COCO`` index when ``path`` is a COCO instances file (it has an
    ``images`` list), None for anything else (an SA-1B record is read as one)."""
    from pycocotools.coco import COCO

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read mask file {path}: {exc}") from None
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)):
        return None
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
            coco.createIndex()
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a COCO instances file (bad or missing field: {exc})") from None
    return coco


def _read_coco(coco: Any, path: Path, lookup: ImageLookup, limit: int | None) -> list[ImageMasks]:
    try:
        return _coco_items(coco, path, lookup, limit)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a COCO instances file (bad or missing field: {exc})") from None


def _coco_items(coco: Any, path: Path, lookup: ImageLookup, limit: int | None) -> list[ImageMasks]:
    cats = {c["id"]: c for c in coco.loadCats(coco.getCatIds())}
    infos = sorted(coco.loadImgs(coco.getImgIds()), key=lambda info: str(info["file_name"]))
    items = []
    for info in infos:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=info["id"], iscrowd=False))
        if not anns:
            continue  # nothing to embed; such an image need not be given either
        if limit is not None and len(items) >= limit:
            break
        h, w = int(info["height"]), int(info["width"])
        image = lookup.find(str(info["file_name"]), path.parent, path)
        masks = []
        for ann in anns:
            rle = coco.annToRLE(ann)
            counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
            rle = validate_rle(
                {"size": [int(v) for v in rle["size"]], "counts": counts},
                (h, w),
                field=f"{path.name}: annotation {ann['id']} segmentation",
            )
            cat = cats.get(ann.get("category_id"), {})
            masks.append(
                MaskAnnotation(int(ann["id"]), rle, str(cat.get("supercategory", "")), str(cat.get("name", "")))
            )
        items.append(ImageMasks(image, path, h, w, masks))
    return items
