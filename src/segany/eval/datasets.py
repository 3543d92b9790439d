"""Eval-split loaders: each yields images with their ground-truth object masks.

Only the *eval* splits of the project's real data are offered here (see the data README):
GrabCut (all 50), COCO val2017 (``coco_tiny``), DSB2018 ids starting c-f, CVPPP A1 plants
> 124. Any SA-1B folder (``*.json`` + images) or COCO folder (annotation JSON + image folder)
can be evaluated too. Loading is lazy (one image at a time) so big folders stream.

Every object carries a small metadata dict (dataset, image, category, COCO size class, and for
SA-1B the image record's fields) which ``segany eval fairness`` groups by.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_files import is_partial_file
from ..image_io import load_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SMALL_AREA = 32**2  # COCO size classes
LARGE_AREA = 96**2


@dataclass
class EvalObjects:
    """Ground truth of one image: HxW bool masks, an optional HxW ignore map, per-mask metadata."""

    masks: list[np.ndarray]
    ignore: np.ndarray | None
    meta: list[dict[str, Any]]


@dataclass
class EvalImage:
    """One image of an evaluation set, loaded on demand."""

    dataset: str
    image_id: str
    path: Path
    load_objects: Callable[[], EvalObjects] = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)

    def image(self) -> np.ndarray:
        """HxWx3 uint8 RGB pixels."""
        return load_image(self.path)

    def objects(self) -> EvalObjects:
        """Masks (empty masks are dropped) with their metadata."""
        objs = self.load_objects()
        keep = [i for i, m in enumerate(objs.masks) if m.any()]
        return EvalObjects([objs.masks[i] for i in keep], objs.ignore, [objs.meta[i] for i in keep])


def size_class(area: float) -> str:
    """COCO's small / medium / large split by pixel area."""
    return "small" if area < SMALL_AREA else ("medium" if area < LARGE_AREA else "large")


def _meta(dataset: str, image: str, mask: np.ndarray, /, **extra: Any) -> dict[str, Any]:
    """Per-object metadata; the loader's own fields win over same-named ones from the files."""
    area = int(mask.sum())
    return {**extra, "dataset": dataset, "image": image, "area": area, "size": size_class(area)}


def default_data_root() -> Path:
    """``$SEGANY_DATA_ROOT``, else ``../shared/data`` next to the working directory or the repository."""
    env = os.environ.get("SEGANY_DATA_ROOT")
    if env:
        return Path(env)
    candidates = [Path.cwd() / ".." / "shared" / "data", Path(__file__).resolve().parents[3] / ".." / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return candidates[0]


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found at {path}")
    return path


def _find_image(folder: Path, stem: str) -> Path:
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    raise FileNotFoundError(f"no image named {stem}.* in {folder}")


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im)


# --------------------------------------------------------------------------- GrabCut
def grabcut(root: Path) -> list[EvalImage]:
    """GrabCut: one object per image; mask 255 = object, 128 = unknown band (ignored), 0 = background."""
    root = _require_dir(Path(root), "GrabCut folder")
    out = []
    for mpath in sorted((root / "masks").glob("*.png")):
        stem = mpath.stem

        def load(mpath: Path = mpath, stem: str = stem) -> EvalObjects:
            m = _read_png(mpath)
            if m.ndim == 3:
                m = m[..., 0]
            mask = m == 255
            return EvalObjects([mask], m == 128, [_meta("grabcut", stem, mask)])

        out.append(EvalImage("grabcut", stem, _find_image(root / "images", stem), load))
    if not out:
        raise FileNotFoundError(f"no masks/*.png under {root}")
    return out


# --------------------------------------------------------------------------- COCO
def coco_folder(image_dir: Path, annotation_file: Path, name: str = "coco") -> list[EvalImage]:
    """Any COCO-format set: instance masks from polygons/RLE via pycocotools (crowd regions ignored)."""
    from pycocotools.coco import COCO

    image_dir = _require_dir(Path(image_dir), "COCO image folder")
    if not Path(annotation_file).is_file():
        raise FileNotFoundError(f"COCO annotation file not found at {annotation_file}")
    coco = _quiet_coco(COCO, str(annotation_file))
    cats = {c["id"]: c for c in coco.loadCats(coco.getCatIds())}
    out = []
    for img_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(img_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        if not any(not a.get("iscrowd", 0) for a in anns):
            continue

        def load(anns: list[dict[str, Any]] = anns, info: dict[str, Any] = info) -> EvalObjects:
            masks, meta = [], []
            ignore = np.zeros((info["height"], info["width"]), dtype=bool)
            for a in anns:
                m = coco.annToMask(a).astype(bool)
                if a.get("iscrowd", 0):
                    ignore |= m
                    continue
                cat = cats.get(a["category_id"], {})
                masks.append(m)
                meta.append(
                    _meta(
                        name,
                        str(info["id"]),
                        m,
                        category=cat.get("name", str(a["category_id"])),
                        supercategory=cat.get("supercategory", ""),
                        annotation_id=a["id"],
                    )
                )
            return EvalObjects(masks, ignore if ignore.any() else None, meta)

        out.append(
            EvalImage(
                name,
                str(img_id),
                image_dir / info["file_name"],
                load,
                {"coco_id": img_id, "annotation_file": str(annotation_file)},
            )
        )
    return out


def _quiet_coco(cls: Any, path: str) -> Any:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return cls(path)


def coco_tiny(root: Path) -> list[EvalImage]:
    """``coco_tiny`` val2017 (the eval split)."""
    root = _require_dir(Path(root), "coco_tiny folder")
    return coco_folder(root / "val2017", root / "annotations" / "instances_val2017.json", name="coco_tiny")


# --------------------------------------------------------------------------- DSB2018
def dsb2018(root: Path) -> list[EvalImage]:
    """DSB2018 / BBBC038v1 eval split: image ids starting with c, d, e or f; one PNG per nucleus."""
    root = _require_dir(Path(root), "dsb2018 folder")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name[:1] in "cdef"):

        def load(d: Path = d) -> EvalObjects:
            masks = []
            for mp in sorted((d / "masks").glob("*.png")):
                m = _read_png(mp)
                masks.append((m[..., 0] if m.ndim == 3 else m) > 0)
            return EvalObjects(masks, None, [_meta("dsb2018", d.name, m) for m in masks])

        out.append(EvalImage("dsb2018", d.name, d / "images" / f"{d.name}.png", load))
    return out


# --------------------------------------------------------------------------- CVPPP A1
def cvppp_a1(root: Path) -> list[EvalImage]:
    """CVPPP A1 eval split (plants numbered > 124): palette index = leaf id, 0 = background."""
    root = _require_dir(Path(root), "cvppp_a1 folder")
    out = []
    for lp in sorted(root.glob("plant*_label.png")):
        num = int(lp.name[5:8])
        if num <= 124:
            continue
        stem = lp.name[: -len("_label.png")]

        def load(lp: Path = lp, stem: str = stem) -> EvalObjects:
            lab = _read_png(lp)
            ids = [int(v) for v in np.unique(lab) if v != 0]
            masks = [lab == i for i in ids]
            return EvalObjects(masks, None, [_meta("cvppp_a1", stem, m, leaf=i) for m, i in zip(masks, ids)])

        out.append(EvalImage("cvppp_a1", stem, root / f"{stem}_rgb.png", load))
    return out


# --------------------------------------------------------------------------- SA-1B
def sa1b_folder(folder: Path, name: str = "sa1b") -> list[EvalImage]:
    """An SA-1B-format folder: ``<id>.json`` ({"image": {...}, "annotations": [{"segmentation": RLE}]}) + images.

    Read with :mod:`segany.data.sa1b` (the one SA-1B reader); a malformed file raises its
    ``SA1BError`` (a ``ValueError``).
    """
    from ..data import sa1b

    folder = _require_dir(Path(folder), "SA-1B folder")
    out = []
    for jp in sorted(p for p in folder.glob("*.json") if not is_partial_file(p)):  # not a write in progress
        info = sa1b.load_json(jp)["image"]
        img_path = folder / info.get("file_name", jp.stem + ".jpg")
        image_meta = {k: v for k, v in info.items() if isinstance(v, str | int | float) and k != "file_name"}

        def load(jp: Path = jp, image_meta: dict[str, Any] = image_meta) -> EvalObjects:
            anns = sa1b.load_json(jp)["annotations"]
            masks, meta = [], []
            for a in anns:
                m = sa1b.decode_rle(a["segmentation"])
                masks.append(m)
                extra = {k: v for k, v in a.items() if isinstance(v, str | int | float) and k not in ("area",)}
                meta.append(_meta(name, jp.stem, m, **image_meta, **extra))
            return EvalObjects(masks, None, meta)

        out.append(EvalImage(name, jp.stem, img_path, load, image_meta))
    if not out:
        raise FileNotFoundError(f"no *.json annotation files in {folder}")
    return out


# --------------------------------------------------------------------------- selection
BUILTIN = {"grabcut": grabcut, "coco_tiny": coco_tiny, "dsb2018": dsb2018, "cvppp_a1": cvppp_a1}
DEFAULT_POINT_DATASETS = ("grabcut", "coco_tiny", "dsb2018", "cvppp_a1")


def resolve(spec: str, data_root: Path | None = None) -> tuple[str, list[EvalImage]]:
    """A data-set spec -> (name, images).

    ``grabcut | coco_tiny | dsb2018 | cvppp_a1`` (eval splits under the data root),
    ``sa1b:FOLDER``, or ``coco:IMAGE_DIR:ANNOTATIONS.json``.
    """
    root = Path(data_root) if data_root is not None else default_data_root()
    if spec in BUILTIN:
        return spec, BUILTIN[spec](root / spec)
    kind, _, rest = spec.partition(":")
    if kind == "sa1b" and rest:
        return Path(rest).name or "sa1b", sa1b_folder(Path(rest), name=Path(rest).name or "sa1b")
    if kind == "coco" and rest:
        image_dir, _, ann = rest.rpartition(":")
        if not image_dir:
            raise ValueError(f"coco data set spec must be coco:IMAGE_DIR:ANNOTATIONS.json, got {spec!r}")
        name = Path(image_dir).name or "coco"
        return name, coco_folder(Path(image_dir), Path(ann), name=name)
    raise ValueError(
        f"unknown data set {spec!r}: use one of {sorted(BUILTIN)}, sa1b:FOLDER or coco:IMAGE_DIR:ANNOTATIONS.json"
    )


def subsample(images: Sequence[EvalImage], limit: int | None, seed: int) -> list[EvalImage]:
    """At most ``limit`` images, drawn with a fixed seed (the paper subsamples images, not masks)."""
    images = list(images)
    if limit is None or limit >= len(images):
        return images
    if limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    order = np.random.default_rng(seed).permutation(len(images))[:limit]
    return [images[i] for i in sorted(order)]


def objects_and_pixels(im: EvalImage) -> tuple[EvalObjects, np.ndarray | None]:
    """The objects of ``im`` and, when it has any, its HxWx3 pixels (None: nothing to evaluate, nothing read).

    Raises ValueError when a mask's size is not the image's: a mismatched annotation would
    otherwise be scored against the wrong pixels without a word.
    """
    objs = im.objects()
    if not objs.masks:
        return objs, None
    pixels = im.image()
    for m in objs.masks:
        if m.shape != pixels.shape[:2]:
            raise ValueError(f"{im.dataset}/{im.image_id}: mask {m.shape} does not match image {pixels.shape[:2]}")
    return objs, pixels


def iterate_objects(images: Sequence[EvalImage]) -> Iterator[tuple[EvalImage, EvalObjects]]:
    """Images with their objects, skipping images without any non-empty mask."""
    for im in images:
        objs = im.objects()
        if objs.masks:
            yield im, objs
