"""Converters from common annotation formats into SA-1B folders.

Every converter yields ``(image_path, masks)`` items through :func:`write_folder`, which
writes ``sa_<n>`` records. Supported sources:

- COCO instances JSON (non-crowd instances; polygons and RLEs alike),
- BSDS500 ``.mat`` ground truth: every region of every annotator becomes a mask (the
  annotators disagree on granularity, which is exactly the whole/part ambiguity SAM's
  multimask outputs are trained for),
- per-instance mask PNG folders (``<id>/images/<id>.png`` + ``<id>/masks/*.png``, dsb2018),
- palette / label PNGs (label value = instance id, 0 = background, cvppp).

:func:`convert_shared_train` builds the training set from the project's shared data and
applies each data set's **train** split rule, so eval images can never leak into training.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .sa1b import SA1BError, write_record

Item = tuple[Path, list[np.ndarray], tuple[int, int]]


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size[1], im.size[0]


def iter_coco(annotation_json: str | os.PathLike, image_dir: str | os.PathLike) -> Iterator[Item]:
    """COCO instances: one record per image that has at least one non-crowd instance."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        coco = COCO(str(annotation_json))
    for img_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(img_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=False))
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        if masks:
            yield Path(image_dir) / info["file_name"], masks, (int(info["height"]), int(info["width"]))


def iter_bsds(root: str | os.PathLike, splits: Iterable[str] = ("train", "val")) -> Iterator[Item]:
    """BSDS500: each region of each annotator's segmentation becomes a mask."""
    from scipy.io import loadmat

    root = Path(root)
    for split in splits:
        for mat in sorted((root / "groundTruth" / split).glob("*.mat")):
            image = root / "images" / split / (mat.stem + ".jpg")
            gt = loadmat(str(mat))["groundTruth"]
            masks: list[np.ndarray] = []
            for k in range(gt.shape[1]):
                seg = np.asarray(gt[0, k]["Segmentation"][0, 0])
                masks.extend(seg == v for v in np.unique(seg))
            yield image, masks, seg.shape  # type: ignore[misc]


def iter_instance_folders(
    root: str | os.PathLike, keep: Callable[[str], bool] = lambda name: True
) -> Iterator[Item]:
    """``<id>/images/<id>.png`` with one binary mask per instance in ``<id>/masks/*.png``."""
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        if not keep(folder.name):
            continue
        images = sorted((folder / "images").glob("*.png"))
        if not images:
            continue
        masks = [np.asarray(Image.open(m).convert("L")) > 0 for m in sorted((folder / "masks").glob("*.png"))]
        yield images[0], masks, _image_size(images[0])


def iter_label_pngs(
    root: str | os.PathLike,
    image_glob: str = "*_rgb.png",
    label_suffix: str = "_label.png",
    keep: Callable[[str], bool] = lambda name: True,
) -> Iterator[Item]:
    """Label PNGs (palette index or grey value = instance id, 0 = background)."""
    for image in sorted(Path(root).glob(image_glob)):
        stem = image.name[: -len(image_glob.lstrip("*"))]
        if not keep(stem):
            continue
        label_path = image.with_name(stem + label_suffix)
        if not label_path.is_file():
            raise SA1BError(f"label image {label_path} for {image} is missing")
        with Image.open(label_path) as im:
            labels = np.asarray(im if im.mode in ("P", "L", "I", "I;16") else im.convert("L"))
        masks = [labels == v for v in np.unique(labels) if v != 0]
        yield image, masks, labels.shape  # type: ignore[misc]


def write_folder(items: Iterable[Item], out_dir: str | os.PathLike, desc: str = "convert") -> int:
    """Write items as ``sa_<n>`` records numbered from 1; returns the number written."""
    n = 0
    for image, masks, size in tqdm(items, desc=desc, unit="img"):
        if not image.is_file():
            raise SA1BError(f"image {image} is missing")
        n += 1
        write_record(out_dir, n, image, masks, size)
    return n


# ------------------------------------------------------------------ the project's train splits


def dsb2018_is_train(name: str) -> bool:
    """dsb2018 rule: ids starting with c, d, e or f are the eval split."""
    return name[:1].lower() not in "cdef"


def cvppp_is_train(stem: str) -> bool:
    """cvppp_a1 rule: plants numbered <= 124 are train, the rest eval."""
    m = re.fullmatch(r"plant(\d+)", stem)
    return m is not None and int(m.group(1)) <= 124


def convert_shared_train(data_root: str | os.PathLike, out_root: str | os.PathLike) -> dict[str, int]:
    """Convert the **train** splits of the shared data into ``out_root/<source>/``.

    coco_tiny train2017, BSDS500 train+val (its test split is the edge benchmark),
    dsb2018 ids not starting with c-f, cvppp_a1 plants <= 124. Returns images per source.
    """
    data = Path(data_root)
    out = Path(out_root)
    counts = {}
    counts["coco"] = write_folder(
        iter_coco(data / "coco_tiny/annotations/instances_train2017.json", data / "coco_tiny/train2017"),
        out / "coco", "coco_tiny train2017",
    )
    counts["bsds"] = write_folder(iter_bsds(data / "bsds500", ("train", "val")), out / "bsds", "bsds500 train+val")
    counts["dsb"] = write_folder(iter_instance_folders(data / "dsb2018", dsb2018_is_train), out / "dsb", "dsb2018 train")
    counts["cvppp"] = write_folder(iter_label_pngs(data / "cvppp_a1", keep=cvppp_is_train), out / "cvppp", "cvppp_a1 train")
    return counts
