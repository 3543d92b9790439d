"""Every SA-1B producer writes the same record for the same mask.

Why: three writers (the automatic generator's output, the dataset converters, the data
engine's export) once built SA-1B annotations separately and disagreed on the box width by
one pixel. Now :mod:`segany.data.sa1b` builds them all; this pushes the same awkward masks
(an L-shape, one pixel, one touching the image border, one with a hole) through each path,
reads the files back with the one reader, and checks that box, area and decoded mask agree
with each other and with the official box convention computed by hand (pixel indices:
``w = x_max - x_min``, so a one-pixel mask has ``w = h = 0``).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from segany.automatic.generator import MaskSet, SamAutomaticMaskGenerator
from segany.automatic.outputs import json_writer, sa1b_json, write_all_or_nothing
from segany.data.sa1b import list_records, mask_bbox, read_record, validate_record, write_record
from segany.engine.export import export_dataset
from segany.engine.store import open_store
from segany.masks import batched_mask_to_box, mask_to_rle, masks_to_coco_rle

H, W = 24, 32


def _masks() -> list[np.ndarray]:
    ell = np.zeros((H, W), bool)
    ell[3:15, 4:7] = True
    ell[12:15, 4:16] = True
    dot = np.zeros((H, W), bool)
    dot[9, 20] = True
    border = np.zeros((H, W), bool)
    border[18:, 25:] = True  # touches the bottom and right edges
    ring = np.zeros((H, W), bool)
    ring[2:10, 18:28] = True
    ring[4:8, 21:25] = False  # a hole
    return [ell, dot, border, ring]


def _by_hand(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min())]


def _image(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)
    return path


def _automatic(masks: list[np.ndarray], out: Path) -> Path:
    """The automatic path: the generator's own record formatter, then its SA-1B writer."""
    stack = torch.from_numpy(np.stack(masks))
    n = len(masks)
    data = MaskSet(
        mask_to_rle(stack),
        batched_mask_to_box(stack),  # what the generator computes for each kept mask
        torch.full((n,), 0.9),
        torch.tensor([[float(x), float(y)] for y, x in (np.argwhere(m)[0] for m in masks)], dtype=torch.float64),
        torch.full((n,), 0.95),
        torch.tensor([[0, 0, W, H]] * n, dtype=torch.int64),
    )
    records = SamAutomaticMaskGenerator.records(SimpleNamespace(output_mode="coco_rle"), data)
    path = out / "img.json"
    write_all_or_nothing([(path, json_writer({"segany": {"key": "test"}, **sa1b_json(records, "img.png", W, H)}))])
    return path


def _converted(masks: list[np.ndarray], image: Path, out: Path) -> Path:
    """The dataset converters' path (``segany data convert`` -> write_folder -> write_record)."""
    return write_record(out, 1, image, masks, (H, W))


def _engine(masks: list[np.ndarray], image: Path, tmp: Path) -> Path:
    """The data engine's path: masks saved in the store, then exported."""
    tmp.mkdir()
    store = open_store(tmp / "db.sqlite")
    image_id = store.add_image(image, W, H)
    for m in masks:
        store.save_mask(image_id, masks_to_coco_rle(m[None])[0], source="manual", annotator="a",
                        model_version="v1", seconds=1.0)
    assert export_dataset(store, tmp / "export") == {"images": 1, "masks": len(masks)}
    store.close()
    return tmp / "export" / "sa1b" / f"sa_{image_id}.json"


@pytest.fixture()
def produced(tmp_path: Path) -> tuple[list[np.ndarray], dict[str, Path]]:
    masks = _masks()
    image = _image(tmp_path / "img.png")
    (tmp_path / "auto").mkdir()
    paths = {
        "automatic": _automatic(masks, tmp_path / "auto"),
        "converted": _converted(masks, image, tmp_path / "converted"),
        "engine": _engine(masks, image, tmp_path / "engine"),
    }
    return masks, paths


def test_producers_agree_with_each_other_and_the_official_box(produced):
    masks, paths = produced
    expected = [_by_hand(m) for m in masks]
    assert expected[1][2:] == [0.0, 0.0]  # one pixel: no width, no height
    assert expected[2][0] + expected[2][2] == W - 1 and expected[2][1] + expected[2][3] == H - 1
    for name, path in paths.items():
        rec = read_record(path)
        assert (rec.width, rec.height) == (W, H), name
        assert len(rec.annotations) == len(masks), name
        for k, (ann, m) in enumerate(zip(rec.annotations, masks)):
            assert ann["bbox"] == expected[k], (name, k)
            assert ann["area"] == int(m.sum()), (name, k)
            assert np.array_equal(rec.decode(k), m), (name, k)
            assert ann["segmentation"]["size"] == [H, W]
            assert set(ann) >= {"id", "predicted_iou", "stability_score", "point_coords", "crop_box"}
            x, y = ann["point_coords"][0]
            assert m[int(y), int(x)], (name, k)  # a point inside the mask
            assert ann["crop_box"] == [0.0, 0.0, float(W), float(H)]
    fields = {name: [(a["bbox"], a["area"], a["segmentation"]) for a in read_record(p).annotations]
              for name, p in paths.items()}
    assert fields["automatic"] == fields["converted"] == fields["engine"]


def test_every_produced_file_validates(produced):
    _, paths = produced
    for name, path in paths.items():
        if name == "automatic":  # the generator writes no image beside its JSON
            assert validate_record(path, check_image=False) == []
        else:
            assert list_records(path.parent) == [path]
            assert validate_record(path) == []


def test_mask_bbox_is_the_official_convention():
    for m in _masks():
        assert mask_bbox(m) == _by_hand(m)
    assert mask_bbox(np.zeros((H, W), bool)) == [0.0, 0.0, 0.0, 0.0]


def test_engine_coco_json_keeps_coco_boxes(produced):
    """coco.json is for COCO tools, so it keeps pycocotools' toBbox extents (w + 1)."""
    from pycocotools import mask as mask_utils

    masks, paths = produced
    coco = json.loads((paths["engine"].parent.parent / "coco.json").read_text())
    for ann, m in zip(coco["annotations"], masks):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert ann["bbox"] == [float(v) for v in mask_utils.toBbox(rle)]
        x, y, w, h = _by_hand(m)
        assert ann["bbox"] == [x, y, w + 1, h + 1]
