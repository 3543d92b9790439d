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
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .sa1b import SA1BError, write_record

Item = tuple[Path, list[np.ndarray], tuple[int, int]]


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size[1], im.size[0]


def iter_coco(
    annotation_json: str | os.PathLike, image_dir: str | os.PathLike, images_only: bool = False
) -> Iterator[Item]:
    """COCO instances: one record per image that has at least one non-crowd instance.

    ``images_only`` (every iterator here has it) yields the items without decoding masks:
    the same selection, cheaply, for listing and checking splits."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        coco = COCO(str(annotation_json))
    for img_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(img_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=False))
        if images_only and anns:
            yield Path(image_dir) / info["file_name"], [], (int(info["height"]), int(info["width"]))
            continue
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        if masks:
            yield Path(image_dir) / info["file_name"], masks, (int(info["height"]), int(info["width"]))


def iter_bsds(
    root: str | os.PathLike,
    splits: Iterable[str] = ("train", "val"),
    exclude: frozenset[str] = frozenset(),
    images_only: bool = False,
) -> Iterator[Item]:
    """BSDS500: each region of each annotator's segmentation becomes a mask.

    ``exclude`` holds ``<split>/<id>`` names to leave out (the GrabCut benchmark images that
    BSDS500 train/val contains)."""
    from scipy.io import loadmat

    root = Path(root)
    for split in splits:
        for mat in sorted((root / "groundTruth" / split).glob("*.mat")):
            if f"{split}/{mat.stem}" in exclude:
                continue
            image = root / "images" / split / (mat.stem + ".jpg")
            if images_only:
                yield image, [], _image_size(image)
                continue
            gt = loadmat(str(mat))["groundTruth"]
            masks: list[np.ndarray] = []
            for k in range(gt.shape[1]):
                seg = np.asarray(gt[0, k]["Segmentation"][0, 0])
                masks.extend(seg == v for v in np.unique(seg))
            yield image, masks, seg.shape  # type: ignore[misc]


def iter_instance_folders(
    root: str | os.PathLike, keep: Callable[[str], bool] = lambda name: True, images_only: bool = False
) -> Iterator[Item]:
    """``<id>/images/<id>.png`` with one binary mask per instance in ``<id>/masks/*.png``."""
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        if not keep(folder.name):
            continue
        images = sorted((folder / "images").glob("*.png"))
        if not images:
            continue
        if images_only:
            yield images[0], [], _image_size(images[0])
            continue
        masks = [np.asarray(Image.open(m).convert("L")) > 0 for m in sorted((folder / "masks").glob("*.png"))]
        yield images[0], masks, _image_size(images[0])


def iter_label_pngs(
    root: str | os.PathLike,
    image_glob: str = "*_rgb.png",
    label_suffix: str = "_label.png",
    keep: Callable[[str], bool] = lambda name: True,
    images_only: bool = False,
) -> Iterator[Item]:
    """Label PNGs (palette index or grey value = instance id, 0 = background)."""
    for image in sorted(Path(root).glob(image_glob)):
        stem = image.name[: -len(image_glob.lstrip("*"))]
        if not keep(stem):
            continue
        label_path = image.with_name(stem + label_suffix)
        if not label_path.is_file():
            raise SA1BError(f"label image {label_path} for {image} is missing")
        if images_only:
            yield image, [], _image_size(image)
            continue
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
#
# The one place that decides which shared images may be trained on. Every rule is the split
# column of ../shared/data/README.md; tests/test_train_split.py checks that no eval image
# (GrabCut, BSDS500 test, coco val2017, dsb2018 c-f, cvppp > 124) gets through.

EXTRA_SETS = ("ccp", "camvid", "coco128_seg")  # shared/data/extra: train only


def dsb2018_is_train(name: str) -> bool:
    """dsb2018 rule: ids starting with c, d, e or f are the eval split."""
    return name[:1].lower() not in "cdef"


def cvppp_is_train(stem: str) -> bool:
    """cvppp_a1 rule: plants numbered <= 124 are train, the rest eval."""
    m = re.fullmatch(r"plant(\d+)", stem)
    return m is not None and int(m.group(1)) <= 124


def bsds_not_for_training(data_root: str | os.PathLike) -> frozenset[str]:
    """``<split>/<id>`` of BSDS500 train/val photos that are GrabCut benchmark images.

    The list ships with the data (``bsds500/not_for_training.txt``); the GrabCut folder is
    also checked by file stem, so a GrabCut image missing from the list still stays out."""
    data = Path(data_root)
    names: set[str] = set()
    listed = data / "bsds500" / "not_for_training.txt"
    if listed.is_file():
        names.update(line.strip() for line in listed.read_text().splitlines() if line.strip())
    grabcut = data / "grabcut" / "images"
    stems = {p.stem for p in grabcut.iterdir()} if grabcut.is_dir() else set()
    for split in ("train", "val"):
        folder = data / "bsds500" / "images" / split
        if folder.is_dir():
            names.update(f"{split}/{p.stem}" for p in folder.glob("*.jpg") if p.stem in stems)
    return frozenset(names)


def eval_images(data_root: str | os.PathLike) -> list[Path]:
    """Every eval-split image of the shared data: GrabCut, BSDS500 test, coco_tiny val2017,
    dsb2018 ids c-f, cvppp_a1 plants > 124."""
    data = Path(data_root)
    out = [p for p in sorted((data / "grabcut" / "images").glob("*")) if p.is_file()]
    out += sorted((data / "bsds500" / "images" / "test").glob("*.jpg"))
    out += sorted((data / "coco_tiny" / "val2017").glob("*.jpg"))
    if (data / "dsb2018").is_dir():
        for folder in sorted(p for p in (data / "dsb2018").iterdir() if p.is_dir() and not dsb2018_is_train(p.name)):
            out += sorted((folder / "images").glob("*.png"))
    out += [p for p in sorted((data / "cvppp_a1").glob("plant*_rgb.png")) if not cvppp_is_train(p.name[:-8])]
    return out


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha1(path.read_bytes()).hexdigest()


def _drop_eval_copies(make: Callable[..., Iterator[Item]], eval_digests: frozenset[str]) -> Callable[..., Iterator[Item]]:
    """Wrap an item source so byte-identical copies of eval images never come out of it.

    Needed because names are not enough: BSDS500 ``train/124084.jpg`` is GrabCut's
    ``124080.jpg`` byte for byte, and ``not_for_training.txt`` does not list it."""

    def filtered(**kwargs: object) -> Iterator[Item]:
        for item in make(**kwargs):
            if _digest(item[0]) not in eval_digests:
                yield item

    return filtered


def shared_train_sources(data_root: str | os.PathLike) -> dict[str, Callable[..., Iterator[Item]]]:
    """The **train** splits of the shared data, by output folder name: lazily built items.

    coco_tiny train2017; BSDS500 train+val without the GrabCut images (its test split is the
    edge benchmark); dsb2018 ids not starting with c-f; cvppp_a1 plants <= 124; and the
    ``extra/`` sets (ccp, camvid, coco128_seg), which are train only. Any image whose bytes
    equal an eval image's (:func:`eval_images`) is dropped from every source.
    """
    data = Path(data_root)
    sources: dict[str, Callable[..., Iterator[Item]]] = {
        "coco": partial(
            iter_coco, data / "coco_tiny/annotations/instances_train2017.json", data / "coco_tiny/train2017"
        ),
        "bsds": lambda **kw: iter_bsds(data / "bsds500", ("train", "val"), bsds_not_for_training(data), **kw),
        "dsb": partial(iter_instance_folders, data / "dsb2018", dsb2018_is_train),
        "cvppp": partial(iter_label_pngs, data / "cvppp_a1", keep=cvppp_is_train),
    }
    for name in EXTRA_SETS:
        if (data / "extra" / name).is_dir():
            sources[name] = partial(iter_label_pngs, data / "extra" / name, image_glob="*_rgb.jpg")
    digests = frozenset(_digest(p) for p in eval_images(data))
    return {name: _drop_eval_copies(make, digests) for name, make in sources.items()}


def shared_train_images(data_root: str | os.PathLike) -> dict[str, list[Path]]:
    """The image files each train source would convert (no masks decoded)."""
    return {name: [item[0] for item in make(images_only=True)] for name, make in shared_train_sources(data_root).items()}


def convert_shared_train(
    data_root: str | os.PathLike, out_root: str | os.PathLike, only: Iterable[str] | None = None
) -> dict[str, int]:
    """Convert the train splits (:func:`shared_train_sources`) into ``out_root/<source>/``.

    ``only`` limits it to some sources. Returns images per source."""
    sources = shared_train_sources(data_root)
    wanted = list(sources) if only is None else list(only)
    unknown = set(wanted) - set(sources)
    if unknown:
        raise SA1BError(f"unknown train sources {sorted(unknown)}; known: {sorted(sources)}")
    out = Path(out_root)
    return {name: write_folder(sources[name](), out / name, f"{name} train") for name in wanted}
