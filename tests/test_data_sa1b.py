"""SA-1B format, converters (COCO, BSDS .mat, instance folders, label PNGs), split rules,
and the training Dataset (>90% mask drop, max masks, jitter)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segany.data.convert import (
    cvppp_is_train,
    dsb2018_is_train,
    iter_bsds,
    iter_coco,
    iter_instance_folders,
    iter_label_pngs,
    write_folder,
)
from segany.data.dataset import SA1BDataset
from segany.data.sa1b import SA1BError, decode_rle, encode_rle, list_records, read_record, validate_record, write_record


def _image(path, h=40, w=60):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_rle_roundtrip():
    m = _rect(30, 20, 3, 17, 5, 9)
    rle = encode_rle(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [30, 20]
    assert np.array_equal(decode_rle(rle), m)


def test_write_read_validate(tmp_path):
    img = _image(tmp_path / "a.png")
    masks = [_rect(40, 60, 0, 10, 0, 10), _rect(40, 60, 5, 30, 20, 50), np.zeros((40, 60), bool)]
    jp = write_record(tmp_path / "out", 7, img, masks, (40, 60))
    rec = read_record(jp)
    assert rec.image_path.is_file() and (rec.width, rec.height) == (60, 40)
    assert len(rec.annotations) == 2  # the empty mask is skipped
    a = rec.annotations[1]
    assert a["bbox"] == [20, 5, 29, 24] and a["area"] == 25 * 30  # official boxes: w = x_max - x_min
    x, y = a["point_coords"][0]
    assert masks[1][int(y), int(x)]
    assert np.array_equal(rec.decode(0), masks[0])
    assert validate_record(jp) == []
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_validate_finds_problems(tmp_path):
    img = _image(tmp_path / "a.png")
    jp = write_record(tmp_path / "out", 1, img, [_rect(40, 60, 0, 10, 0, 10)], (40, 60))
    d = json.loads(jp.read_text())
    d["annotations"][0]["area"] = 5
    jp.write_text(json.dumps(d))
    assert "area 5 != decoded 100" in " ".join(validate_record(jp))
    d["image"]["width"] = 61
    jp.write_text(json.dumps(d))
    problems = " ".join(validate_record(jp))
    assert "JSON says 61x40" in problems and "RLE size" in problems
    jp.write_text("{}")
    with pytest.raises(SA1BError, match="not an SA-1B record"):
        read_record(jp)


def test_write_rejects_wrong_mask_shape(tmp_path):
    img = _image(tmp_path / "a.png")
    with pytest.raises(SA1BError, match="shape"):
        write_record(tmp_path / "out", 1, img, [np.ones((10, 10), bool)], (40, 60))


def test_list_records_errors(tmp_path):
    with pytest.raises(SA1BError, match="not found"):
        list_records(tmp_path / "nope")
    with pytest.raises(SA1BError, match="no SA-1B"):
        list_records(tmp_path)


def test_coco_converter(tmp_path):
    (tmp_path / "imgs").mkdir()
    _image(tmp_path / "imgs" / "1.jpg")
    coco = {
        "images": [{"id": 1, "file_name": "1.jpg", "height": 40, "width": 60}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100, "bbox": [10, 10, 10, 10],
             "segmentation": [[10, 10, 20, 10, 20, 20, 10, 20]]},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 100, "bbox": [0, 0, 5, 5],
             "segmentation": encode_rle(_rect(40, 60, 0, 5, 0, 5))},
        ],
        "categories": [{"id": 1, "name": "x"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    items = list(iter_coco(tmp_path / "ann.json", tmp_path / "imgs"))
    assert len(items) == 1
    path, masks, size = items[0]
    assert size == (40, 60) and len(masks) == 1  # the crowd region is not an instance
    assert masks[0][15, 15] and not masks[0][30, 30]


def test_bsds_converter(tmp_path):
    from scipy.io import savemat

    (tmp_path / "images/train").mkdir(parents=True)
    (tmp_path / "groundTruth/train").mkdir(parents=True)
    _image(tmp_path / "images/train/1.jpg")
    seg_a = np.ones((40, 60), np.uint16)
    seg_a[:, 30:] = 2
    seg_b = np.ones((40, 60), np.uint16)
    seg_b[:20] = 2
    seg_b[20:, 40:] = 3
    gt = np.empty((1, 2), dtype=object)
    for k, s in enumerate([seg_a, seg_b]):
        gt[0, k] = {"Segmentation": s, "Boundaries": np.zeros_like(s, dtype=np.uint8)}
    savemat(tmp_path / "groundTruth/train/1.mat", {"groundTruth": gt})
    items = list(iter_bsds(tmp_path, ["train"]))
    assert len(items) == 1
    _, masks, size = items[0]
    assert size == (40, 60) and len(masks) == 5  # 2 regions + 3 regions, both annotators
    assert sum(int(m.sum()) for m in masks) == 2 * 40 * 60


def test_instance_folder_and_label_png_converters(tmp_path):
    for name in ("aa", "cc"):
        (tmp_path / "dsb" / name / "images").mkdir(parents=True)
        (tmp_path / "dsb" / name / "masks").mkdir()
        _image(tmp_path / "dsb" / name / "images" / f"{name}.png")
        for k in range(2):
            Image.fromarray((_rect(40, 60, 0, 10, 10 * k, 10 * k + 5) * 255).astype(np.uint8)).save(
                tmp_path / "dsb" / name / "masks" / f"{k}.png"
            )
    items = list(iter_instance_folders(tmp_path / "dsb", dsb2018_is_train))
    assert [p.name for p, _, _ in items] == ["aa.png"] and len(items[0][1]) == 2

    (tmp_path / "cv").mkdir()
    for n in (1, 125):
        _image(tmp_path / "cv" / f"plant{n:03d}_rgb.png")
        lab = np.zeros((40, 60), np.uint8)
        lab[5:10, 5:10] = 1
        lab[20:30, 20:40] = 3
        im = Image.fromarray(lab, mode="P")
        im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
        im.save(tmp_path / "cv" / f"plant{n:03d}_label.png")
    items = list(iter_label_pngs(tmp_path / "cv", keep=cvppp_is_train))
    assert [p.name for p, _, _ in items] == ["plant001_rgb.png"]
    assert sorted(int(m.sum()) for m in items[0][1]) == [25, 200]
    assert write_folder(iter(items), tmp_path / "sa") == 1
    assert validate_record(tmp_path / "sa" / "sa_1.json") == []


def test_split_rules():
    assert dsb2018_is_train("0a1b") and dsb2018_is_train("b99") and dsb2018_is_train("9ff")
    assert not any(dsb2018_is_train(x) for x in ("c12", "d00", "e5", "ff1"))
    assert cvppp_is_train("plant124") and not cvppp_is_train("plant125") and not cvppp_is_train("x")


@pytest.fixture()
def sa1b_folder(tmp_path):
    img = _image(tmp_path / "a.png", 40, 80)
    masks = [_rect(40, 80, 0, 40, 0, 80),  # the whole image: dropped (> 90%)
             _rect(40, 80, 0, 40, 0, 75)]  # 94%: dropped
    masks += [_rect(40, 80, 2 * k, 2 * k + 4, 5 * k, 5 * k + 6) for k in range(10)]
    write_record(tmp_path / "sa", 1, img, masks, (40, 80))
    return tmp_path / "sa"


def test_dataset_drops_large_masks_and_samples(sa1b_folder):
    ds = SA1BDataset([sa1b_folder], img_size=64, max_masks=4)
    s = ds.load(0, np.random.default_rng(0))
    assert s.image.shape == (3, 32, 64) and s.size == (32, 64)
    assert s.masks.shape == (4, 64, 64) and s.masks.dtype.is_floating_point is False
    assert not s.masks[:, 32:].any()  # the padding below the image is empty
    assert (s.masks.flatten(1).float().mean(1) < 0.9 * 0.5).all()
    all_masks = SA1BDataset([(sa1b_folder, 3)], img_size=64, max_masks=64)
    assert len(all_masks) == 3
    assert len(all_masks.load(0, np.random.default_rng(0)).masks) == 10
    # same generator state, same sample
    a, b = ds.load(0, np.random.default_rng(5)), ds.load(0, np.random.default_rng(5))
    assert np.array_equal(a.masks.numpy(), b.masks.numpy())


def test_dataset_jitter(sa1b_folder):
    ds = SA1BDataset([sa1b_folder], img_size=64, max_masks=64, jitter=(0.1, 2.0))
    sizes = set()
    for seed in range(20):
        s = ds.load(0, np.random.default_rng(seed))
        h, w = s.size
        assert s.image.shape == (3, h, w) and h <= 64 and w <= 64
        assert s.masks.shape[1:] == (64, 64) and s.masks.flatten(1).any(1).all()
        sizes.add((h, w))
    assert len(sizes) > 5


def test_dataset_drops_small_masks(sa1b_folder, tmp_path):
    # the 10 small rectangles cover 24 px of 3200 (0.75%); one larger mask is added
    img = _image(tmp_path / "b.png", 40, 80)
    masks = [_rect(40, 80, 2 * k, 2 * k + 4, 5 * k, 5 * k + 6) for k in range(10)] + [_rect(40, 80, 0, 20, 0, 20)]
    write_record(tmp_path / "sb", 1, img, masks, (40, 80))
    ds = SA1BDataset([tmp_path / "sb"], img_size=64, max_masks=64, min_area_frac=0.01)
    s = ds.load(0, np.random.default_rng(0))
    assert len(s.masks) == 1 and s.masks[0].float().mean() > 0.05
    assert len(SA1BDataset([tmp_path / "sb"], img_size=64, max_masks=64).load(0, np.random.default_rng(0)).masks) == 11
