"""The embedded default model's calibrated thresholds: the shipped preset file, when
``segany auto`` picks it, and ``scripts/calibrate_auto.py`` (run on a tiny SA-1B folder, and
its setting simulation checked against the generator itself)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segany import SamAutomaticMaskGenerator
from segany.automatic.presets import (
    DEFAULT_MODEL_PRESET,
    DEFAULT_MODEL_THRESHOLDS_FILE,
    PRESETS,
    THRESHOLD_KEYS,
    calibrated_for,
    load_thresholds,
    preset,
)
from segany.cli import build_parser, main
from segany.commands.auto import generator_kwargs, preset_name, preset_note
from segany.data.sa1b import write_record
from segany.default_model import default_weights_path, load_default_model
from segany.masks import mask_iou, rle_to_mask

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "calibrate_auto.py"
OFFICIAL = {"pred_iou_thresh": 0.88, "stability_score_offset": 1.0, "stability_score_thresh": 0.95}


def _script():
    """scripts/calibrate_auto.py as a module (registered first: its dataclasses need that)."""
    if "calibrate_auto" not in sys.modules:
        spec = importlib.util.spec_from_file_location("calibrate_auto", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["calibrate_auto"] = module
        spec.loader.exec_module(module)
    return sys.modules["calibrate_auto"]


def _auto_args(*extra: str):
    return build_parser().parse_args(["auto", "photo.jpg", "--out", "out", *extra])


def _scene(seed: int, h: int = 64, w: int = 80) -> tuple[np.ndarray, list[np.ndarray]]:
    """A flat background with three coloured rectangles, and the rectangles as masks."""
    rng = np.random.RandomState(seed)
    img = np.full((h, w, 3), 40, dtype=np.uint8)
    masks = []
    for _ in range(3):
        y0, x0 = rng.randint(0, h // 2), rng.randint(0, w // 2)
        y1, x1 = y0 + rng.randint(12, h // 2), x0 + rng.randint(12, w // 2)
        img[y0:y1, x0:x1] = rng.randint(80, 255, 3)
        m = np.zeros((h, w), dtype=bool)
        m[y0:y1, x0:x1] = True
        masks.append(m)
    for k in range(3):  # later rectangles cover earlier ones: masks are what stays visible
        for j in range(k + 1, 3):
            masks[k] &= ~masks[j]
    return img, masks


@pytest.fixture(scope="module")
def default_model():
    if default_weights_path() is None:
        pytest.skip("no trained default weights shipped")
    return load_default_model(warn=False)


# ------------------------------------------------------------------ the shipped preset


def test_shipped_calibration_is_valid_and_current():
    data = load_thresholds()
    assert data is not None, f"{DEFAULT_MODEL_THRESHOLDS_FILE} is missing: run scripts/calibrate_auto.py"
    assert PRESETS[DEFAULT_MODEL_PRESET] == {key: data[key] for key in THRESHOLD_KEYS}
    assert data["pred_iou_thresh"] < OFFICIAL["pred_iou_thresh"]  # the point: the official one keeps nothing
    cal = data["calibration"]
    assert cal["chosen"]["f1"] > 0 and cal["images"] > 0
    assert cal["official"] is None or cal["official"]["f1"] <= cal["chosen"]["f1"]
    weights = default_weights_path()
    assert weights is not None
    assert calibrated_for(weights), (
        "the shipped thresholds were calibrated on other default weights: rerun "
        "`.venv/bin/python scripts/calibrate_auto.py runs/sa1b_train/*`"
    )


def test_thresholds_file_errors(tmp_path):
    assert load_thresholds(tmp_path / "none.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"pred_iou_thresh": 0.3, "stability_score_offset": 0.5}))
    with pytest.raises(ValueError, match="stability_score_thresh"):
        load_thresholds(bad)
    bad.write_text(json.dumps({"pred_iou_thresh": 0.3, "stability_score_offset": 0.0, "stability_score_thresh": 0}))
    with pytest.raises(ValueError, match="out of range"):
        load_thresholds(bad)
    other = tmp_path / "w.safetensors"
    other.write_bytes(b"not the shipped weights")
    assert not calibrated_for(other)


# ------------------------------------------------------------------ when segany auto uses it


def test_default_model_without_thresholds_gets_the_calibrated_preset():
    args = _auto_args("--points-per-side", "8")  # a non-threshold knob does not opt out
    assert preset_name(args) == DEFAULT_MODEL_PRESET
    kwargs = generator_kwargs(args)
    assert kwargs == {**PRESETS[DEFAULT_MODEL_PRESET], "points_per_side": 8}
    note = preset_note(args)
    assert note is not None and "--preset default" in note and DEFAULT_MODEL_PRESET in note
    assert preset_name(_auto_args("--model-type", "default_segany")) == DEFAULT_MODEL_PRESET


@pytest.mark.parametrize(
    "extra",
    [
        ["--preset", "default"],
        ["--pred-iou-thresh", "0.5"],
        ["--stability-score-thresh", "0.5"],
        ["--stability-score-offset", "0.5"],
        ["--checkpoint", "other.safetensors"],
        ["--model-type", "vit_b"],
    ],
)
def test_official_thresholds_when_asked_for_or_another_model(extra):
    args = _auto_args(*extra)
    assert preset_name(args) == "default"
    assert preset_note(args) is None
    kwargs = generator_kwargs(args)
    for key in THRESHOLD_KEYS:  # given on the command line, or left to the generator's official default
        flag = "--" + key.replace("_", "-")
        assert kwargs.get(key) == (float(extra[1]) if extra[0] == flag else None)


def test_explicit_preset_is_kept():
    args = _auto_args("--preset", "edges")
    assert preset_name(args) == "edges" and preset_note(args) is None
    assert generator_kwargs(args) == preset("edges")


def test_cli_run_records_the_calibrated_thresholds(tmp_path, capsys, default_model):
    img, _ = _scene(0)
    Image.fromarray(img).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["auto", str(tmp_path / "a.png"), "--out", str(out), "--points-per-side", "2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"--preset {DEFAULT_MODEL_PRESET}" in err and "--preset default" in err
    record = json.loads((out / "a.json").read_text())["segany"]
    for key in THRESHOLD_KEYS:  # the run key holds the effective settings, so resuming stays correct
        assert record["settings"][key] == PRESETS[DEFAULT_MODEL_PRESET][key]
    # the official thresholds are other settings: the same --out refuses to mix them
    args = ["auto", str(tmp_path / "a.png"), "--out", str(out), "--points-per-side", "2", "--preset", "default"]
    assert main(args) == 2
    assert "pred_iou_thresh" in capsys.readouterr().err


# ------------------------------------------------------------------ scripts/calibrate_auto.py


def test_simulated_settings_match_the_generator(default_model):
    cal = _script()
    img, masks = _scene(1)
    gt = np.stack(masks)
    offsets = [0.25, 1.0]
    cands = cal.image_candidates(
        default_model, img, gt, points_per_side=3, offsets=offsets, box_nms_thresh=0.7, match_iou=0.5
    )
    iou_grid = sorted({0.0, *np.quantile(cands.iou_pred, [0.3, 0.7]).round(3).tolist()})
    settings = [(0.25, 0.0)] + [(o, float(np.quantile(cands.stability[o], 0.6).round(3))) for o in offsets]
    for offset, stab in settings:
        counts = cal.sweep(cands, offset, stab, iou_grid)
        for k, t in enumerate(iou_grid):
            gen = SamAutomaticMaskGenerator(
                default_model,
                points_per_side=3,
                pred_iou_thresh=t,
                stability_score_thresh=stab,
                stability_score_offset=offset,
                output_mode="uncompressed_rle",
            )
            recs = gen.generate(img)
            kept = np.stack([rle_to_mask(r["segmentation"]) for r in recs]) if recs else np.zeros((0, *gt.shape[1:]))
            hits = (mask_iou(kept, gt) >= 0.5).numpy() if recs else np.zeros((0, len(gt)), bool)
            # the same masks kept, matching the same ground truth: counts of kept, matched, recalled
            assert counts[k].tolist() == [len(recs), int(hits.any(1).sum()), int(hits.any(0).sum())]


def test_calibrate_script_on_a_tiny_sa1b_folder(tmp_path, default_model, capsys):
    folder = tmp_path / "sa1b"
    for i in (1, 2):
        img, masks = _scene(10 + i)
        Image.fromarray(img).save(tmp_path / f"src{i}.png")
        write_record(folder, i, tmp_path / f"src{i}.png", masks, img.shape[:2])
    out, png = tmp_path / "thresholds.json", tmp_path / "plot.png"
    argv = [str(folder), "--holdout-every", "1", "--limit", "2", "--points-per-side", "3", "--offsets", "0.5,1"]
    argv += ["--out", str(out), "--plot", str(png), "--nice", "0", "--no-progress"]
    assert _script().main(argv) == 0
    data = load_thresholds(out)  # the same reader presets.py uses
    assert data is not None
    cal = data["calibration"]
    assert cal["images"] == 2 and cal["ground_truth_masks"] == 6 and cal["holdout_every"] == 1
    assert data["stability_score_offset"] in (0.5, 1.0)
    assert cal["official"]["masks_per_image"] >= 0 and cal["chosen"]["f1"] >= cal["official"]["f1"]
    assert png.stat().st_size > 0 and png.read_bytes()[:4] == b"\x89PNG"
    assert "(official)" in capsys.readouterr().out
    # with holdout_every 25 these two records are training images, never held out: refused
    assert _script().main([str(folder), "--out", str(tmp_path / "x.json"), "--plot", "", "--nice", "0"]) == 2
    assert not (tmp_path / "x.json").exists()
