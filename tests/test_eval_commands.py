"""`segany eval ...` end to end on reduced sets with the default model (random-init tiny until trained weights ship)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segany.cli import main
from segany.eval import summary
from segany.eval.datasets import default_data_root

DATA = default_data_root()
needs_data = pytest.mark.skipif(not (DATA / "grabcut").is_dir(), reason="shared eval data not available")


def _report(out: Path) -> dict:
    assert (out / "report.md").is_file()
    assert (out / "report.md").read_text().startswith("# ")
    rep = json.loads((out / "report.json").read_text())
    # the suite summary reads every report this writer produces: its section has a table of the same run
    _, md = summary.summarize(out)
    assert f"## {summary.TITLES[rep['experiment']]}" in md and "| complete |" in md
    return rep


@needs_data
def test_eval_points(tmp_path: Path):
    out = tmp_path / "points"
    assert main(["eval", "points", "--datasets", "grabcut", "--limit", "1", "--max-clicks", "9",
                 "--out", str(out), "--no-progress"]) == 0
    rep = _report(out)
    g = rep["datasets"]["grabcut"]
    assert g["objects"] == 1 and set(g["top"]["mIoU"]) == {"1", "2", "3", "5", "9"}
    assert all(0.0 <= v <= 1.0 for v in g["top"]["mIoU"].values())
    assert g["oracle"]["mIoU"]["1"] >= g["top"]["mIoU"]["1"]  # the oracle picks the best of the same 3 masks
    assert 1 <= g["top"]["NoC@90"] <= 9
    assert len(rep["per_object"]["grabcut"][0]["iou_top"]) >= 1
    assert (out / "miou_vs_points.png").stat().st_size > 1000
    assert (out / "example_grabcut_0.png").is_file()


@needs_data
def test_eval_points_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["eval", "points", "--datasets", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown data set" in capsys.readouterr().err
    assert main(["eval", "points", "--datasets", "grabcut", "--limit", "1", "--max-clicks", "3",
                 "--out", str(tmp_path), "--no-progress"]) == 2
    assert "max-clicks" in capsys.readouterr().err


@needs_data
def test_eval_edges(tmp_path: Path):
    out = tmp_path / "edges"
    assert main(["eval", "edges", "--limit", "1", "--nthresh", "5", "--points-per-side", "4",
                 "--out", str(out), "--no-progress"]) == 0
    rep = _report(out)
    assert set(rep["methods"]) == {"segany", "canny", "sobel"}
    for m in rep["methods"].values():
        assert 0.0 <= m["ODS"] <= 1.0 and 0.0 <= m["AP"] <= 1.0 and len(m["curve"]["recall"]) == 5
    assert rep["settings"]["preset"]["points_per_side"] == 4
    assert (out / "pr_curve.png").is_file() and (out / "canny" / "eval_bdry.txt").is_file()


@needs_data
def test_eval_proposals(tmp_path: Path):
    out = tmp_path / "proposals"
    assert main(["eval", "proposals", "--limit", "1", "--points-per-side", "4", "--out", str(out), "--no-progress"]) == 0
    rep = _report(out)
    assert set(rep["AR@1000"]) == {"100", "300", "all", "small", "medium", "large"}
    assert all(0.0 <= v <= 1.0 for v in rep["AR@1000"].values())
    assert rep["settings"]["box_nms_thresh"] == 0.9 and rep["settings"]["max_masks"] == 1000


@needs_data
def test_eval_instances_with_gt_boxes_and_detections(tmp_path: Path):
    out = tmp_path / "inst"
    assert main(["eval", "instances", "--limit", "1", "--out", str(out), "--no-progress"]) == 0
    rep = _report(out)
    assert rep["prompted_boxes"] > 0 and 0.0 <= rep["AP"]["AP"] <= 1.0
    # the same boxes given as a detector's COCO results file
    gt = json.loads((DATA / "coco_tiny" / "annotations" / "instances_val2017.json").read_text())
    img_id = gt["annotations"][0]["image_id"]
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt["annotations"] if a["image_id"] == img_id and not a["iscrowd"]]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out2 = tmp_path / "inst2"
    assert main(["eval", "instances", "--limit", "80", "--detections", str(tmp_path / "dets.json"),
                 "--out", str(out2), "--no-progress"]) == 0
    assert _report(out2)["prompted_boxes"] == len(dets)


@needs_data
def test_eval_fairness(tmp_path: Path):
    out = tmp_path / "fair"
    assert main(["eval", "fairness", "--limit", "1", "--bootstrap", "100", "--group-by", "size", "dataset",
                 "--out", str(out), "--no-progress"]) == 0
    rep = _report(out)
    for table in rep["groups"].values():
        for row in table.values():
            lo, hi = row["mIoU@1"]["ci95"]
            assert lo <= row["mIoU@1"]["mean"] <= hi
    assert (out / "groups.png").is_file()


@pytest.mark.slow
@needs_data
def test_eval_points_all_datasets(tmp_path: Path):
    out = tmp_path / "points_all"
    assert main(["eval", "points", "--limit", "2", "--out", str(out), "--no-progress"]) == 0
    assert set(_report(out)["datasets"]) == {"grabcut", "coco_tiny", "dsb2018", "cvppp_a1"}
