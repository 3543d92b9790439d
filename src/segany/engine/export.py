"""Export the annotation store as an SA-1B-format dataset (and one COCO JSON).

Layout: ``OUT/sa1b/sa_<id>.<ext>`` + ``OUT/sa1b/sa_<id>.json`` per annotated image, and
``OUT/coco.json`` beside (not inside) the SA-1B folder, since SA-1B readers take every JSON
under their folder as an image record. SA-1B stores one image + JSON pair per image; the JSON holds
``{"image": {image_id, width, height, file_name}, "annotations": [{id, segmentation (COCO
RLE), bbox (XYWH), area, predicted_iou, stability_score, point_coords, crop_box}]}``. That
is what the paper's retraining consumed, so ``segany train`` reads ``OUT/sa1b`` directly.
``point_coords`` holds the mask's innermost pixel (largest distance to the boundary), a
point inside the mask as SA-1B records carry one. The SA-1B records are built and written by
:mod:`segany.data.sa1b`, so their ``bbox`` is the official generator's (pixel indices, ``w =
x_max - x_min``; a one-pixel mask has ``w = h = 0``), computed from the mask rather than
taken from the store's ``bbox`` column. ``coco.json`` holds the same masks as class-agnostic COCO instances
(category 1, "object") for tools that read COCO, and keeps COCO's own box convention there:
``pycocotools.mask.toBbox`` extents (``w = x_max - x_min + 1``), which the store records
with each mask and which COCO tools derive from an RLE themselves.

Nothing partial is left behind: the whole export is written into a hidden staging folder
inside ``OUT`` and moved into place (``sa1b`` and ``coco.json``, each by one rename) only
once every file is complete, so a failure leaves the previous export (or nothing) as it
was. A mask row that cannot be read (a malformed RLE stored by an older version) or an
image whose file is gone is skipped and reported instead of failing the whole export.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..atomic_files import write_json_atomic
from ..data import sa1b
from .store import Store


def _inner_point(rle: dict[str, Any]) -> list[float]:
    """(x, y) of the mask pixel farthest from the background (inside even for rings)."""
    from scipy.ndimage import distance_transform_edt

    from ..masks import rle_to_mask

    mask = rle_to_mask(rle)
    if not mask.any():
        return [0.0, 0.0]
    dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return [float(x), float(y)]


def export_dataset(
    store: Store,
    out_dir: str | Path,
    *,
    sources: tuple[str, ...] | None = None,
    copy_images: bool = True,
    include_empty: bool = False,
    skipped: list[dict[str, Any]] | None = None,
    before_release: Callable[[Path], Any] | None = None,
) -> dict[str, int]:
    """Write ``out_dir/sa1b/sa_<id>.{jpg|png,json}`` per annotated image plus ``out_dir/coco.json``.

    Args:
        sources: only masks with these sources (default: all).
        copy_images: copy each image beside its JSON (SA-1B layout); otherwise
            ``file_name`` is the absolute source path.
        include_empty: also write images that have no masks.
        skipped: if given, receives one ``{"mask_id" | "image_id", "reason"}`` dict per mask
            row or image left out because it could not be read.
        before_release: called with the finished, still hidden ``sa1b`` folder before it is
            moved into place (``segany engine export --blur`` blurs faces and plates there,
            so no unblurred copy is ever published); an error in it leaves nothing behind.
    Returns counts: images, masks (what was written; ``skipped`` lists what was not).
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    bad: list[dict[str, Any]] = []
    bad_rows: list[tuple[int, str]] = []
    masks_by_image: dict[int, list] = {}
    for m in store.masks(skipped=bad_rows):
        if sources is None or m.source in sources:
            masks_by_image.setdefault(m.image_id, []).append(m)
    bad.extend({"mask_id": mid, "reason": reason} for mid, reason in bad_rows)
    coco: dict[str, Any] = {
        "info": {"description": "segany data engine export"},
        "images": [],
        "annotations": [],
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
    }
    n_images = n_masks = 0
    staging = Path(tempfile.mkdtemp(prefix=".segany-export-", dir=root))
    try:
        out = staging / "sa1b"
        out.mkdir()
        for image in tqdm(store.images(), desc="exporting", unit="image"):
            rows = masks_by_image.get(image.id, [])
            if not rows and not include_empty:
                continue
            src = Path(image.path)
            stem = f"sa_{image.id}"
            if copy_images:
                file_name = stem + src.suffix.lower()
                try:
                    shutil.copyfile(src, out / file_name)
                except OSError as exc:
                    bad.append({"image_id": image.id, "reason": f"cannot copy {src.name}: {exc.strerror or exc}"})
                    continue
            else:
                file_name = str(src)
            annotations = []
            for m in rows:
                ann = sa1b.annotation_record(
                    m.id,
                    rle=m.rle,
                    predicted_iou=float(m.score) if m.score is not None else 1.0,
                    point_coords=[_inner_point(m.rle)],
                    extra={
                        "source": m.source,
                        "annotator": m.annotator,
                        "model_version": m.model_version,
                        "seconds": m.seconds,
                    },
                )
                annotations.append(ann)
                coco["annotations"].append(
                    {
                        "id": m.id,
                        "image_id": image.id,
                        "category_id": 1,
                        "segmentation": ann["segmentation"],
                        "area": ann["area"],
                        "bbox": [float(v) for v in m.bbox],  # the store's box: COCO's toBbox convention
                        "iscrowd": 0,
                    }
                )
            sa1b.write_json(
                out / f"{stem}.json", sa1b.image_record(image.id, image.width, image.height, file_name), annotations
            )
            coco["images"].append(
                {"id": image.id, "width": image.width, "height": image.height, "file_name": file_name}
            )
            n_images += 1
            n_masks += len(annotations)
        write_json_atomic(staging / "coco.json", coco)
        if before_release is not None:
            before_release(out)
        _swap_into_place(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if skipped is not None:
        skipped.extend(bad)
    return {"images": n_images, "masks": n_masks}


def _swap_into_place(staging: Path, root: Path) -> None:
    """Move the finished ``sa1b`` folder and ``coco.json`` from ``staging`` into ``root``.

    Each move is one rename on the same file system; a previous export's folder is moved
    aside into the staging folder first (removed with it), so readers see either the old
    complete export or the new complete one.
    """
    final = root / "sa1b"
    if final.is_dir() and not final.is_symlink():
        os.replace(final, staging / "sa1b.previous")
    elif final.exists() or final.is_symlink():
        final.unlink()
    os.replace(staging / "sa1b", final)
    os.replace(staging / "coco.json", root / "coco.json")
