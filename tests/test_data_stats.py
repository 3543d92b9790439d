"""``segany data stats``: the paper's dataset statistics (figures 5-6) on hand-made folders
whose values are computed by hand, the CLI end to end, and bad inputs (one clear error
naming the file, no partial report)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from segany.cli import main
from segany.data.sa1b import write_record
from segany.data.stats import (
    COUNT_BINS,
    SIZE_EDGES,
    DataStatsError,
    collect,
    concavity,
    count_bin,
    measure_mask,
)
from segany.masks import masks_to_coco_rle


def _image(path, h, w):
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)
    return path


def _square(h, w, y0, x0, side):
    m = np.zeros((h, w), bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return m


def _ell(h, w, y0, x0, unit):
    """Three of the four unit squares of a 2x2 block: the top-right one is missing."""
    m = _square(h, w, y0, x0, 2 * unit)
    m[y0 : y0 + unit, x0 + unit : x0 + 2 * unit] = False
    return m


# --------------------------------------------------------------------------- measures


def test_filled_square_and_rectangle_have_concavity_zero():
    assert concavity(_square(30, 30, 5, 7, 10)) == 0.0
    assert concavity(_square(9, 9, 4, 4, 1)) == 0.0  # one pixel
    rect = np.zeros((20, 40), bool)
    rect[3:9, 2:37] = True
    assert concavity(rect) == 0.0


@pytest.mark.parametrize("unit", [1, 3, 10])
def test_l_shape_concavity_by_hand(unit):
    # Mask area 3 u^2. Hull of the pixel squares: the 2u x 2u block minus the triangle cut
    # off the missing corner, (2u)^2 - u^2/2 = 3.5 u^2.  1 - 3 / 3.5 = 1/7 at every scale.
    m = _ell(4 * unit + 4, 4 * unit + 4, 2, 2, unit)
    assert concavity(m) == pytest.approx(1 - 3 / 3.5, abs=1e-12)


def test_ring_concavity_ignores_the_hole():
    # a 10x10 square with a 4x4 hole: hull 100, area 84
    m = _square(20, 20, 5, 5, 10)
    m[8:12, 8:12] = False
    assert concavity(m) == pytest.approx(1 - 84 / 100)


def test_measure_mask_centre_and_area():
    m = _square(40, 60, 10, 20, 10)  # rows 10-19, cols 20-29
    got = measure_mask(m)
    assert got.area == 100
    assert got.centre_x == pytest.approx(25 / 60) and got.centre_y == pytest.approx(15 / 40)
    assert measure_mask(np.zeros((5, 5), bool)) is None
    with pytest.raises(ValueError):
        concavity(np.zeros((5, 5), bool))


def test_count_bins_are_figure_5s():
    assert [label for _, _, label in COUNT_BINS] == ["0", "1-10", "11-50", "51-100", "101-200", ">200"]
    assert [count_bin(n) for n in (0, 1, 10, 11, 50, 51, 100, 101, 200, 201, 5000)] == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


# --------------------------------------------------------------------------- folders


@pytest.fixture
def folders(tmp_path):
    """Two SA-1B folders with known contents (mixed image sizes in the first)."""
    a = tmp_path / "human"
    img1 = _image(tmp_path / "a1.png", 40, 40)
    img2 = _image(tmp_path / "a2.png", 20, 50)
    # image 1: a 20x20 square (relative size sqrt(400/1600) = 0.5) and an L of unit 5
    write_record(a, 1, img1, [_square(40, 40, 0, 0, 20), _ell(40, 40, 20, 20, 5)], (40, 40))
    # image 2: 12 one-pixel masks on a 20x50 image
    write_record(a, 2, img2, [_square(20, 50, 1, 2 * k, 1) for k in range(12)], (20, 50))
    b = tmp_path / "auto"
    write_record(b, 1, img1, [_square(40, 40, 10, 10, 8)], (40, 40))
    return a, b


def test_collect_known_values(folders):
    a, b = folders
    human, auto = collect([a, b], progress=False)
    assert (human.images, human.masks, auto.images, auto.masks) == (2, 14, 1, 1)
    assert dict(human.masks_per_image) == {2: 1, 12: 1}
    assert human.count_hist().tolist() == [0, 1, 1, 0, 0, 0]
    assert human.size_min == pytest.approx(1 / math.sqrt(1000))  # one pixel of 20x50
    assert human.size_max == pytest.approx(0.5)
    conc = human.to_dict()["concavity"]
    assert conc["mean"] == pytest.approx((1 - 3 / 3.5) / 14)  # only the L is concave
    assert sum(conc["masks"]) == 14 and conc["masks"][0] == 13 and conc["masks"][2] == 1  # 1/7 is in [0.1, 0.15)
    for s in (human, auto):
        assert s.centre_map().sum() == pytest.approx(1.0)
    # the auto square (rows/cols 10-17): centre (14 / 40, 14 / 40) -> bin 7 of 20 both ways
    assert auto.centre_map()[7, 7] == pytest.approx(1.0)
    d = human.to_dict()
    assert d["image_sizes"]["width"] == {"min": 40.0, "median": 45.0, "max": 50.0}
    assert d["relative_size"]["edges"][0] == pytest.approx(1e-4) and len(d["relative_size"]["masks"]) == len(SIZE_EDGES) - 1


def test_coco_input_is_detected_by_content(tmp_path):
    rle = masks_to_coco_rle(_square(20, 30, 2, 3, 4)[None])[0]
    coco = {
        "images": [{"id": 7, "file_name": "x.jpg", "width": 30, "height": 20},
                   {"id": 8, "file_name": "y.jpg", "width": 10, "height": 10}],
        "annotations": [
            {"id": 1, "image_id": 7, "segmentation": rle, "iscrowd": 0},
            {"id": 2, "image_id": 7, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]], "iscrowd": 0},
            {"id": 3, "image_id": 7, "segmentation": rle, "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    (s,) = collect([path], progress=False)
    assert (s.images, s.masks, s.crowd_skipped) == (2, 2, 1)
    assert dict(s.masks_per_image) == {2: 1, 0: 1}
    assert s.size_max == pytest.approx(math.sqrt(100 / 600))  # the 10x10 polygon square
    # the same file inside a folder works as well
    folder = tmp_path / "cocodir"
    folder.mkdir()
    (folder / "instances.json").write_text(json.dumps(coco))
    assert collect([folder], progress=False)[0].masks == 2


# --------------------------------------------------------------------------- the command


def test_cli_end_to_end(folders, tmp_path, capsys):
    a, b = folders
    out = tmp_path / "report"
    assert main(["data", "stats", str(a), str(b), "--out", str(out), "--names", "human,auto"]) == 0
    printed = capsys.readouterr().out
    assert "human: 2 images, 14 masks" in printed and "auto: 1 images, 1 masks" in printed
    names = {"report.json", "report.md", "masks_per_image.png", "relative_size.png", "concavity.png",
             "centres.png", "image_sizes.png"}
    assert names <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["sets"]] == ["human", "auto"]
    assert report["sets"][0]["masks_per_image"]["images"] == [0, 1, 1, 0, 0, 0]
    assert np.asarray(report["sets"][1]["centres"]["map"]).sum() == pytest.approx(1.0)
    md = (out / "report.md").read_text()
    assert "| masks | human | auto |" in md and "## Concavity" in md
    with Image.open(out / "concavity.png") as im:
        assert im.format == "PNG"
    # without --out it only prints (the old behaviour of `data stats FOLDER`)
    assert main(["data", "stats", str(a)]) == 0
    assert "human: 2 images" in capsys.readouterr().out


# --------------------------------------------------------------------------- bad input


def _fails(capsys, tmp_path, inputs, needle):
    out = tmp_path / "report_bad"
    assert main(["data", "stats", *map(str, inputs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert not out.exists() or not any(out.iterdir()), "a failed run left report files"
    return err


def test_corrupt_json_names_the_file(folders, tmp_path, capsys):
    a, b = folders
    bad = b / "sa_9.json"
    bad.write_text('{"image": {"width": 4,')
    err = _fails(capsys, tmp_path, [a, b], "sa_9.json")
    assert "cannot read" in err


def test_corrupt_rle_names_the_file(folders, tmp_path, capsys):
    _a, b = folders
    rec = json.loads((b / "sa_1.json").read_text())
    rec["annotations"][0]["segmentation"]["counts"] = "!!not rle~~"
    (b / "sa_1.json").write_text(json.dumps(rec))
    _fails(capsys, tmp_path, [b], "sa_1.json: annotation 0")


def test_rle_size_must_match_the_image(folders, tmp_path, capsys):
    _a, b = folders
    rec = json.loads((b / "sa_1.json").read_text())
    rec["image"]["width"] = 41  # the RLE says 40x40
    (b / "sa_1.json").write_text(json.dumps(rec))
    err = _fails(capsys, tmp_path, [b], "sa_1.json: annotation 0")
    assert "does not match the image" in err


def test_polygon_outside_the_image(tmp_path, capsys):
    coco = {"images": [{"id": 1, "file_name": "x.jpg", "width": 30, "height": 20}],
            "annotations": [{"id": 5, "image_id": 1, "segmentation": [[0, 0, 40, 0, 40, 10]], "iscrowd": 0}],
            "categories": []}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(coco))
    err = _fails(capsys, tmp_path, [path], "c.json: annotation id 5")
    assert "outside the 30x20 image" in err


def test_empty_folder_and_missing_input(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(capsys, tmp_path, [empty], f"no .json files (SA-1B records or COCO instances) under {empty}")
    _fails(capsys, tmp_path, [tmp_path / "nope"], "input not found")


def test_json_of_another_kind(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "x.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(DataStatsError, match="x.json is not an SA-1B record"):
        collect([folder], progress=False)
