"""``segany data export`` (COCO RLE, COCO polygons, YOLO-seg, label PNGs) and the way back
(``segany data convert coco|yolo|png``), measured on real masks: a few coco_tiny train2017
and cvppp_a1 train plants, read in place from ../shared/data (converted into tmp_path)."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segany.cli import main
from segany.data.convert import cvppp_is_train, iter_coco, iter_label_pngs, write_folder
from segany.data.formats import (
    FormatError,
    export_folder,
    iter_label_png_folder,
    iter_yolo,
    paint_labels,
)
from segany.data.polygons import join_polygons, mask_to_polygons, polygons_to_mask
from segany.data.sa1b import list_records, read_record, write_record
from segany.masks import coco_bbox, mask_iou, rle_to_mask

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COCO_JSON = DATA / "coco_tiny" / "annotations" / "instances_train2017.json"
needs_data = pytest.mark.skipif(not COCO_JSON.is_file() or not (DATA / "cvppp_a1").is_dir(),
                                reason="../shared/data not available")


def _masks(folder: Path) -> list[list[np.ndarray]]:
    return [[rle_to_mask(a["segmentation"]) for a in read_record(p).annotations] for p in list_records(folder)]


def _ious(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> list[float]:
    assert [len(x) for x in a] == [len(y) for y in b]
    out = []
    for xs, ys in zip(a, b, strict=True):
        for x, y in zip(xs, ys, strict=True):
            out.append(float(mask_iou(x[None], y[None])[0, 0]))
    return out


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """SA-1B folders of 5 coco_tiny train images (overlapping masks, holes, several parts)
    and 2 cvppp train plants (a label map: no overlaps)."""
    root = tmp_path_factory.mktemp("real")
    with contextlib.redirect_stderr(io.StringIO()):
        write_folder(itertools.islice(iter_coco(COCO_JSON, DATA / "coco_tiny" / "train2017"), 5), root / "coco")
        plants = iter_label_pngs(DATA / "cvppp_a1", keep=cvppp_is_train)
        write_folder(itertools.islice(plants, 2), root / "cvppp")
    return root


# --------------------------------------------------------------------------- polygons


def test_polygons_are_exact_on_shapes_with_holes_and_parts():
    m = np.zeros((40, 40), bool)
    m[5:35, 5:35] = True
    m[12:28, 12:28] = False  # a hole
    m[16:24, 16:24] = True  # an island in the hole: a part of its own
    m[37:39, 2:4] = True  # a separate 2x2 part
    polys = mask_to_polygons(m)
    assert len(polys) == 3
    assert np.array_equal(polygons_to_mask(polys, 40, 40), m)
    assert np.array_equal(polygons_to_mask([join_polygons(polys)], 40, 40), m)  # one YOLO line
    one = np.zeros((5, 5), bool)
    one[2, 3] = True
    (p,) = mask_to_polygons(one)
    assert len(p) >= 3 and np.array_equal(polygons_to_mask([p], 5, 5), one)
    assert mask_to_polygons(np.zeros((4, 4), bool)) == []


def test_polygons_are_exact_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(4, 40, 2))
        m = rng.random((h, w)) < 0.5  # many holes, diagonal-only contacts
        polys = mask_to_polygons(m)
        assert np.array_equal(polygons_to_mask(polys, h, w), m)
        assert np.array_equal(polygons_to_mask([join_polygons(polys)], h, w), m)


def test_coco_bbox_matches_pycocotools():
    m = np.zeros((30, 20), bool)
    m[4:9, 7:8] = True
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    assert coco_bbox(m) == [int(v) for v in mask_utils.toBbox(rle)] == [7, 4, 1, 5]


# --------------------------------------------------------------------------- round trips on real masks


def _load_coco(path: Path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@needs_data
def test_coco_rle_round_trip_is_identical(real, tmp_path):
    out = tmp_path / "coco"
    summary = export_folder(real / "coco", out, "coco", progress=False)
    ann_file = out / "annotations" / "instances_default.json"
    coco = _load_coco(ann_file)
    originals = [read_record(p) for p in list_records(real / "coco")]
    assert summary["images"] == 5 and summary["masks"] == sum(len(r.annotations) for r in originals)
    for img_id, rec in zip(sorted(coco.getImgIds()), originals, strict=True):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        assert [a["segmentation"]["counts"] for a in anns] == [a["segmentation"]["counts"] for a in rec.annotations]
        for ann, orig in zip(anns, rec.annotations, strict=True):
            m = coco.annToMask(ann).astype(bool)
            assert np.array_equal(m, rle_to_mask(orig["segmentation"]))
            assert ann["bbox"] == coco_bbox(m) and ann["area"] == int(m.sum()) and ann["category_id"] == 1
    assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert (out / "images" / "default" / "sa_1.jpg").is_file() and (out / "classes.txt").read_text() == "object\n"
    back = tmp_path / "back"
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["data", "convert", "coco", str(ann_file), str(back)]) == 0  # images found beside it
    again = [read_record(p) for p in list_records(back)]
    assert [[a["segmentation"]["counts"] for a in r.annotations] for r in again] == \
        [[a["segmentation"]["counts"] for a in r.annotations] for r in originals]


@needs_data
@pytest.mark.parametrize("source", ["coco", "cvppp"])
def test_polygon_round_trip(real, tmp_path, source):
    out = tmp_path / "poly"
    summary = export_folder(real / source, out, "polygons", progress=False)
    ann_file = out / "annotations" / "instances_default.json"
    coco = _load_coco(ann_file)
    originals = _masks(real / source)
    from_coco = [[coco.annToMask(a).astype(bool) for a in coco.loadAnns(coco.getAnnIds(imgIds=i))]
                 for i in sorted(coco.getImgIds())]
    assert all(isinstance(a["segmentation"], list) for a in coco.dataset["annotations"])
    with contextlib.redirect_stderr(io.StringIO()):
        write_folder(iter_coco(ann_file, out / "images" / "default"), tmp_path / "back")
    ious = _ious(originals, _masks(tmp_path / "back")) + _ious(originals, from_coco)
    print(f"{source}: SA-1B -> polygons -> SA-1B, {len(ious) // 2} masks, min IoU {min(ious):.4f}")
    assert min(ious) >= 0.98
    assert min(ious) == pytest.approx(summary["min_outline_iou"])
    assert min(ious) == 1.0  # the quarter-pixel-inset outlines are exact (docs/datasets.md says so)


@needs_data
def test_yolo_round_trip(real, tmp_path):
    out = tmp_path / "yolo"
    summary = export_folder(real / "coco", out, "yolo", progress=False)
    assert "names:\n  0: \"object\"" in (out / "data.yaml").read_text()
    label = out / "labels" / "train" / "sa_1.txt"
    lines = label.read_text().splitlines()
    assert len(lines) == len(read_record(real / "coco" / "sa_1.json").annotations)
    assert all(line.startswith("0 ") for line in lines)
    values = np.array([float(v) for line in lines for v in line.split()[1:]])
    assert values.min() >= 0 and values.max() <= 1
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["data", "convert", "yolo", str(out), str(tmp_path / "back")]) == 0
    ious = _ious(_masks(real / "coco"), _masks(tmp_path / "back"))
    print(f"SA-1B -> YOLO-seg -> SA-1B, {len(ious)} masks, min IoU {min(ious):.4f}")
    assert min(ious) >= 0.98 and summary["min_outline_iou"] >= 0.98


@needs_data
def test_png_round_trip(real, tmp_path):
    # cvppp is a label map: no overlaps, so the round trip is exact
    export_folder(real / "cvppp", tmp_path / "png_cvppp", "png", progress=False)
    with contextlib.redirect_stderr(io.StringIO()):
        write_folder(iter_label_png_folder(tmp_path / "png_cvppp"), tmp_path / "back_cvppp")
    assert min(_ious(_masks(real / "cvppp"), _masks(tmp_path / "back_cvppp"))) == 1.0
    # coco masks overlap: each comes back as what the label image shows of it (smaller on top)
    summary = export_folder(real / "coco", tmp_path / "png_coco", "png", progress=False)
    assert summary["masks_hidden"] == 0
    originals = _masks(real / "coco")
    for path, masks in zip(sorted((tmp_path / "png_coco" / "labels").glob("*.png")), originals, strict=True):
        labels = np.asarray(Image.open(path))
        assert labels.dtype == np.uint8
        assert np.array_equal(labels, paint_labels(masks, masks[0].shape))
        # painted largest first (ties in record order): a mask loses what later, smaller ones cover
        order = sorted(range(len(masks)), key=lambda k: -int(masks[k].sum()))
        for i, k in enumerate(order):
            covered = np.zeros_like(masks[k])
            for j in order[i + 1 :]:
                covered |= masks[j]
            assert np.array_equal(labels == k + 1, masks[k] & ~covered)


def test_png_is_16_bit_over_255_masks_and_round_trips(tmp_path):
    h, w = 20, 20
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "img.png")
    masks = [np.zeros((h, w), bool) for _ in range(300)]
    for k, m in enumerate(masks):
        m.flat[k] = True
    write_record(tmp_path / "sa", 1, tmp_path / "img.png", masks, (h, w))
    export_folder(tmp_path / "sa", tmp_path / "png", "png", progress=False)
    with Image.open(tmp_path / "png" / "labels" / "sa_1.png") as im:
        labels = np.asarray(im)
    assert labels.max() == 300 and labels.dtype.itemsize == 2
    with contextlib.redirect_stderr(io.StringIO()):
        write_folder(iter_label_png_folder(tmp_path / "png"), tmp_path / "back")
    assert all(np.array_equal(a, b) for a, b in zip(masks, _masks(tmp_path / "back")[0], strict=True))


def test_nested_masks_keep_the_smaller_on_top():
    big = np.zeros((10, 10), bool)
    big[1:9, 1:9] = True
    small = np.zeros((10, 10), bool)
    small[3:5, 3:5] = True
    labels = paint_labels([small, big], (10, 10))  # order in the record does not matter
    assert (labels[small] == 1).all() and (labels[big & ~small] == 2).all()


def test_categories_carried_when_records_have_them(tmp_path):
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "img.png")
    a = np.zeros((10, 10), bool)
    a[1:3, 1:3] = True
    b = np.zeros((10, 10), bool)
    b[5:9, 5:9] = True
    jp = write_record(tmp_path / "sa", 1, tmp_path / "img.png", [a, b], (10, 10))
    rec = json.loads(jp.read_text())
    rec["annotations"][0].update(category_id=3, category_name="leaf")
    rec["annotations"][1].update(category_id=5)
    jp.write_text(json.dumps(rec))
    export_folder(tmp_path / "sa", tmp_path / "coco", "coco", copy_images=False, progress=False)
    data = json.loads((tmp_path / "coco" / "annotations" / "instances_default.json").read_text())
    assert [c["name"] for c in data["categories"]] == ["leaf", "category_5"]
    assert [a["category_id"] for a in data["annotations"]] == [3, 5]
    assert not (tmp_path / "coco" / "images").exists()
    export_folder(tmp_path / "sa", tmp_path / "yolo", "yolo", copy_images=False, progress=False)
    assert [line.split()[0] for line in (tmp_path / "yolo/labels/train/sa_1.txt").read_text().splitlines()] == ["0", "1"]


# --------------------------------------------------------------------------- bad input


def _yolo_folder(tmp_path, text):
    (tmp_path / "y/images/train").mkdir(parents=True)
    (tmp_path / "y/labels/train").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "y/images/train/a.png")
    (tmp_path / "y/labels/train/a.txt").write_text(text)
    return tmp_path / "y"


def test_yolo_import_errors_name_file_and_line(tmp_path):
    root = _yolo_folder(tmp_path, "0 0.1 0.1 0.5 0.1 0.5 0.5\n0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(FormatError, match=r"a\.txt:2: 4 coordinates \(a detection box"):
        list(iter_yolo(root))
    (root / "labels/train/a.txt").write_text("0 0.1 0.1 1.5 0.1 0.5 0.5\n")
    with pytest.raises(FormatError, match=r"a\.txt:1: coordinates outside \[0, 1\]"):
        list(iter_yolo(root))
    (root / "labels/train/a.txt").write_text("")
    ((image, masks, size),) = list(iter_yolo(root))  # an empty file: a background image
    assert masks == [] and size == (8, 8)


def test_png_import_needs_matching_labels(tmp_path, capsys):
    (tmp_path / "p/images").mkdir(parents=True)
    (tmp_path / "p/labels").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "p/images/a.png")
    assert main(["data", "convert", "png", str(tmp_path / "p"), str(tmp_path / "out")]) == 2
    assert "label image" in capsys.readouterr().err
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "p/labels/a.png")
    with pytest.raises(FormatError, match="is 8x9, its image"):
        list(iter_label_png_folder(tmp_path / "p"))


def test_export_cli_reports_and_rejects(tmp_path, capsys):
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "img.png")
    m = np.zeros((10, 10), bool)
    m[2:6, 2:6] = True
    write_record(tmp_path / "sa", 1, tmp_path / "img.png", [m], (10, 10))
    assert main(["data", "export", str(tmp_path / "sa"), "--format", "polygons", "--out", str(tmp_path / "o")]) == 0
    assert "1 images, 1 masks exported as polygons" in capsys.readouterr().out
    data = json.loads((tmp_path / "o/annotations/instances_default.json").read_text())
    assert data["annotations"][0]["segmentation"] == [[2.25, 2.25, 2.25, 5.75, 5.75, 5.75, 5.75, 2.25]]
    assert main(["data", "export", str(tmp_path / "nothing"), "--format", "coco", "--out", str(tmp_path / "o2")]) == 2
    assert "SA-1B folder not found" in capsys.readouterr().err
