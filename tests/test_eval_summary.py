"""`segany eval summary`: the suite's headline tables read back from report.json files (hand-made here).

The writers' real output is read back by the end-to-end tests of every experiment
(tests/test_eval_commands.py, tests/test_eval_prompts.py); these cases pin the tables' numbers,
the run states and the refusals.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segany.cli import main
from segany.eval import summary

MODEL = {"checkpoint": "default (segany_default)", "model_type": "ViT 192-d x 6, 512 px input", "trained": True,
         "parameters": 8245616}


def _write(folder: Path, rep: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(rep))


def _proposals(finished: int = 80, model: dict = MODEL) -> dict:
    return {"experiment": "proposals", "model": model, "settings": {"dataset": "coco_tiny", "images": finished},
            "AR@1000": {"100": 0.01, "300": 0.02, "all": 0.125, "small": 0.0, "medium": 0.25, "large": 0.5},
            "seconds": 3.0, "compute_seconds": 1234.4,
            "partial": {"images_finished": finished, "images_total": 80}}


def _instances() -> dict:
    return {"experiment": "instances", "model": MODEL, "settings": {"dataset": "coco_tiny", "images": 80, "boxes": "ground truth"},
            "AP": {"AP": 0.035, "AP50": 0.143, "AP75": 0.006, "AP_S": 0.001, "AP_M": 0.013, "AP_L": 0.09}, "seconds": 453.0}


def _edges() -> dict:
    m = {"ODS": 0.378, "OIS": 0.389, "AP": 0.263, "R50": 0.096}
    return {"experiment": "edges", "model": MODEL, "settings": {"split": "test", "images": 200},
            "methods": {"segany": m, "canny": {"ODS": 0.554, "OIS": 0.596, "AP": 0.523, "R50": 0.616}},
            "paper_table3": {"Sobel (paper)": {"ODS": 0.539, "OIS": None, "AP": None, "R50": None}},
            "compute_seconds": 21792.0, "partial": None}


def _fairness() -> dict:
    row = {"objects": 3, "mIoU@1": {"mean": 0.2, "ci95": [0.1, 0.3]}, "mIoU@3": {"mean": 0.4, "ci95": [0.35, 0.45]}}
    return {"experiment": "fairness", "model": MODEL, "settings": {"first_click": "random"}, "objects": 3,
            "groups": {"size": {"small": row, "tiny": {"objects": 1, "mIoU@1": {"mean": None, "ci95": [None, None]},
                                                     "mIoU@3": {"mean": 0.5, "ci95": None}}}},
            "compute_seconds": 10.0}


def _points() -> dict:
    track = {"mIoU": {"1": 0.15, "2": 0.289, "3": 0.378, "5": 0.479, "9": 0.563}, "NoC@85": 19.48, "NoC@90": 19.88}
    return {"experiment": "points", "model": MODEL, "settings": {"click_counts": [1, 2, 3, 5, 9]},
            "datasets": {"grabcut": {"images": 50, "objects": 50, "top": track, "oracle": {"mIoU": {"1": 0.352}}}},
            "mean": {"top": track, "oracle": {"mIoU": {"1": 0.352}}}, "compute_seconds": 873.0}


def test_summary_tables_states_and_links(tmp_path: Path):
    runs = tmp_path / "runs"
    for name, rep in [("points", _points()), ("edges", _edges()), ("proposals", _proposals(finished=31)),
                      ("instances", _instances()), ("fairness", _fairness())]:
        _write(runs / name, rep)
    res = summary.write(runs)
    md = (runs / "summary.md").read_text()
    assert json.loads((runs / "summary.json").read_text()) == json.loads(json.dumps(res))
    assert res["missing"] == ["prompts"]
    assert res["experiments"]["proposals"]["state"] == "partial: 31 of 80 images"
    assert res["experiments"]["edges"]["state"] == "complete"
    assert res["experiments"]["instances"]["compute_seconds"] == 453.0  # no compute_seconds: the wall time
    assert "| proposals | [proposals](proposals/report.md) | partial: 31 of 80 images | 1234 |" in md
    assert "**Not final:** proposals" in md and "No report yet: prompts." in md
    assert "| grabcut | 50 | 15.0 | 28.9 | 37.8 | 47.9 | 56.3 | 35.2 | 19.5 | 19.9 |" in md
    assert "| segany | 0.378 | 0.389 | 0.263 | 0.096 |" in md and "| Sobel (paper) | 0.539 | - | - | - |" in md
    assert "| this model | 1.0 | 2.0 | 12.5 | 0.0 | 25.0 | 50.0 |" in md
    assert "| this model | 3.5 | 14.3 | 0.6 | 0.1 | 1.3 | 9.0 |" in md
    assert "| small | 3 | 20.0 [10.0, 30.0] | 40.0 [35.0, 45.0] |" in md
    assert "| tiny | 1 | - | 50.0 |" in md  # NaN scores (null in JSON) and a missing CI do not break the table
    # sections follow the paper's order whatever the folder names
    assert md.index("## Point-to-mask") < md.index("## Edge detection") < md.index("## Object proposals")

    # written elsewhere, the links still lead to the reports
    summary.write(runs, tmp_path / "elsewhere")
    assert "[proposals](../runs/proposals/report.md)" in (tmp_path / "elsewhere" / "summary.md").read_text()


def test_finished_partial_report_counts_as_complete(tmp_path: Path):
    _write(tmp_path / "p", _proposals(finished=80))
    res, md = summary.summarize(tmp_path)
    assert res["experiments"]["proposals"]["state"] == "complete" and "Not final" not in md


def test_untrained_model_is_flagged(tmp_path: Path):
    _write(tmp_path / "p", _proposals(model={**MODEL, "trained": False}))
    assert "randomly initialised" in summary.summarize(tmp_path)[1]


def test_summary_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        summary.summarize(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no report.json"):
        summary.summarize(tmp_path)
    _write(tmp_path / "a", _proposals())
    _write(tmp_path / "b", _proposals())
    with pytest.raises(ValueError, match="two proposals reports"):
        summary.summarize(tmp_path)
    (tmp_path / "b" / "report.json").write_text(json.dumps(_instances() | {"model": {**MODEL, "checkpoint": "sam_vit_b.pth"}}))
    with pytest.raises(ValueError, match="different models.*sam_vit_b.pth"):
        summary.summarize(tmp_path)
    (tmp_path / "b" / "report.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON report"):
        summary.summarize(tmp_path)
    (tmp_path / "b" / "report.json").write_text(json.dumps({"experiment": "points", "model": MODEL}))
    with pytest.raises(ValueError, match=r"b/report.json: not a complete points report \(KeyError: 'settings'\)"):
        summary.summarize(tmp_path)
    (tmp_path / "b" / "report.json").write_text(json.dumps({"experiment": "something"}))
    with pytest.raises(ValueError, match="not a segany eval report"):
        summary.summarize(tmp_path)
    assert main(["eval", "summary", str(tmp_path)]) == 2  # the CLI names the problem instead of a traceback
    assert "not a segany eval report" in capsys.readouterr().err
    assert not (tmp_path / "summary.md").exists()
