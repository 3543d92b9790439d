"""`segany eval prompts` and its classical baselines: synthetic scenes with known answers, then end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segany import SamPredictor
from segany.cli import main
from segany.default_model import load_default_model
from segany.eval import classical, clicks, points, prompts, summary
from segany.eval.datasets import EvalImage, EvalObjects, default_data_root

DATA = default_data_root()
needs_data = pytest.mark.skipif(not (DATA / "grabcut").is_dir(), reason="shared eval data not available")

H, W = 120, 160


def _disk(cx: float, cy: float, r: float, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 < r**2


def _scene(*masks: np.ndarray, seed: int = 0, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """Bright objects (grey ~200) on a dark noisy background (~40), both with sigma-10 noise."""
    rng = np.random.default_rng(seed)
    img = rng.normal(40, 10, (*shape, 3))
    for m in masks:
        img[m] = rng.normal(200, 10, (int(m.sum()), 3))
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def disk_scene() -> tuple[np.ndarray, np.ndarray]:
    gt = _disk(80, 60, 30)
    return _scene(gt), gt


# --------------------------------------------------------------------------- boxes
def test_box_pixels_follow_sams_inclusive_convention():
    assert classical.box_pixels([2, 3, 5, 7], (10, 10)) == (2, 3, 5, 7)  # x1/y1 are the last column/row
    assert classical.box_pixels([5, 7, 2, 3], (10, 10)) == (2, 3, 5, 7)  # swapped corners are sorted
    assert classical.box_pixels([-4, -4, 20, 20], (10, 12)) == (0, 0, 11, 9)  # clipped to the image
    assert classical.box_pixels([1.2, 1.7, 3.2, 3.0], (10, 10)) == (1, 1, 4, 3)  # floor / ceil
    assert classical.box_pixels([20, 20, 30, 30], (10, 10)) is None  # misses the image
    with pytest.raises(ValueError, match="finite"):
        classical.box_pixels([0, 0, np.nan, 4], (10, 10))
    with pytest.raises(ValueError, match="4 finite"):
        classical.box_pixels([0, 0, 4], (10, 10))
    fill = classical.box_fill(np.zeros((10, 10, 3), np.uint8), [2, 3, 5, 7])
    assert fill.sum() == 4 * 5 and fill[3:8, 2:6].all()


def test_tight_box_is_the_masks_extent():
    m = np.zeros((20, 30), bool)
    m[4:9, 10:21] = True
    assert prompts.tight_box(m).tolist() == [10, 4, 20, 8]
    assert classical.box_fill(m, prompts.tight_box(m)).sum() == m.sum()
    with pytest.raises(ValueError, match="empty"):
        prompts.tight_box(np.zeros((3, 3), bool))


@pytest.mark.parametrize("context", [None, 1.0])
def test_grabcut_box_finds_a_bright_disk(disk_scene, context):
    img, gt = disk_scene
    m = classical.grabcut_box(img, prompts.tight_box(gt), context=context)
    assert m.dtype == bool and m.shape == gt.shape
    assert clicks.iou(m, gt) > 0.9
    # the box itself is a much worse answer: GrabCut did the work
    assert clicks.iou(classical.box_fill(img, prompts.tight_box(gt)), gt) < 0.85


def test_grabcut_box_with_objects_touching_the_border():
    gt = _disk(0, 60, 35)  # a half disk on the left border
    img = _scene(gt, seed=1)
    assert clicks.iou(classical.grabcut_box(img, prompts.tight_box(gt)), gt) > 0.9


def test_grabcut_box_is_reproducible(disk_scene):
    img, gt = disk_scene
    a = classical.grabcut_box(img, [40, 20, 125, 100])
    classical.grabcut_box(img, [0, 0, 60, 60])  # another call in between must not change the next result
    assert np.array_equal(a, classical.grabcut_box(img, [40, 20, 125, 100]))


@pytest.mark.parametrize(
    "box",
    [
        [50, 50, 50, 50],  # a single pixel
        [50, 10, 50, 90],  # a one-pixel-wide line
        [52, 52, 54, 54],  # 3x3: too few pixels for the colour models
        [200, 200, 300, 300],  # outside the image
        [120, 90, 40, 20],  # swapped corners
        [0, 0, W - 1, H - 1],  # the whole image: no background outside
        [-1e4, -1e4, 1e4, 1e4],  # far beyond the whole image
        [-30, -30, 2, 2],  # a corner sliver
    ],
)
def test_grabcut_box_degenerate_boxes_do_not_crash(disk_scene, box):
    img, _ = disk_scene
    m = classical.grabcut_box(img, box)
    assert m.dtype == bool and m.shape == (H, W)
    bounds = classical.box_pixels(box, (H, W))
    if bounds is None:
        assert not m.any()
    else:
        assert not (m & ~classical.box_fill(img, box)).any()  # never outside the box


def test_grabcut_box_whole_image_still_segments(disk_scene):
    img, gt = disk_scene
    m = classical.grabcut_box(img, [0, 0, W - 1, H - 1])
    assert not m[0].any() and not m[:, 0].any()  # the 1-px border served as background
    assert m.sum() < 0.9 * H * W  # it did separate something rather than return the box


def test_grabcut_box_falls_back_to_the_box_on_opencv_errors(disk_scene, monkeypatch):
    img, gt = disk_scene

    def boom(*args, **kwargs):
        raise classical.cv2.error("no fg samples")

    monkeypatch.setattr(classical.cv2, "grabCut", boom)
    box = prompts.tight_box(gt)
    assert np.array_equal(classical.grabcut_box(img, box), classical.box_fill(img, box))


def test_grabcut_needs_uint8_images(disk_scene):
    img, gt = disk_scene
    with pytest.raises(ValueError, match="uint8"):
        classical.grabcut_box(img.astype(np.float32), [0, 0, 10, 10])
    grey = classical.grabcut_box(img[..., 0], prompts.tight_box(gt))  # grey images are accepted
    assert clicks.iou(grey, gt) > 0.9


# --------------------------------------------------------------------------- clicks
def test_grabcut_first_click_finds_the_disk(disk_scene):
    img, gt = disk_scene
    m = classical.grabcut_clicks(img, [clicks.center_click(gt)], [1])
    assert m.dtype == bool and m.shape == gt.shape and clicks.iou(m, gt) > 0.9


def test_negative_click_removes_a_false_positive():
    a, b = _disk(60, 60, 20), _disk(105, 60, 12)  # two objects of the same colour
    img = _scene(a, b, seed=2)
    prev = a | b  # a previous mask that wrongly took in the second object
    m = classical.grabcut_clicks(img, [clicks.center_click(a), clicks.center_click(b)], [1, 0], prev)
    assert clicks.iou(m, a) >= clicks.iou(prev, a)
    assert clicks.iou(m, a) > 0.9 and not (m & b).any()


def test_positive_click_adds_a_missed_part():
    a, b = _disk(60, 60, 20), _disk(105, 60, 12)
    img = _scene(a, b, seed=3)
    gt = a | b  # one object in two parts: the first click's result misses the second
    pts, labs = [clicks.center_click(a)], [1]
    m1 = classical.grabcut_clicks(img, pts, labs)
    nxt = clicks.next_click(m1, gt)
    assert nxt is not None and nxt[2]  # the deepest error is the missed part: a positive click
    m2 = classical.grabcut_clicks(img, [*pts, nxt[:2]], [1, 1], m1)
    assert clicks.iou(m2, gt) > clicks.iou(m1, gt) and clicks.iou(m2, gt) > 0.9


def test_grabcut_clicks_edge_cases(disk_scene):
    img, gt = disk_scene
    assert not classical.grabcut_clicks(img, [(80, 60)], [0]).any()  # no foreground seed at all
    out = classical.grabcut_clicks(img, [(500, 500)], [1])  # a click outside the image
    assert out.shape == (H, W) and not out.any()
    corner = classical.grabcut_clicks(img, [(0, 0)], [1])  # a click in the corner, on background
    assert corner.shape == (H, W) and corner[0, 0]  # the sure-foreground disk stays foreground
    with pytest.raises(ValueError, match="one label per click"):
        classical.grabcut_clicks(img, [(1, 1), (2, 2)], [1])
    with pytest.raises(ValueError, match="prev_mask"):
        classical.grabcut_clicks(img, [(1, 1)], [1], prev_mask=np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="iterations"):
        classical.grabcut_clicks(img, [(1, 1)], [1], iters=0)


def test_grabcut_click_trace_follows_the_protocol():
    a, b = _disk(60, 60, 20), _disk(105, 60, 12)
    img = _scene(a, b, seed=3)
    trace = prompts.grabcut_click_trace(img, a | b, None, n_clicks=5)
    assert 1 <= len(trace) <= 5 and all(0.0 <= v <= 1.0 for v in trace)
    assert trace[-1] > trace[0]  # the corrective clicks helped
    perfect = prompts.grabcut_click_trace(*_perfect_scene(), None, n_clicks=5)
    assert perfect == [1.0]  # no error left after one click: the trace stops, as in `eval points`


def _perfect_scene() -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((H, W), bool)
    gt[40:80, 60:100] = True
    img = np.full((H, W, 3), 20, np.uint8)
    img[gt] = 230
    return img, gt


# --------------------------------------------------------------------------- the runner
@pytest.fixture(scope="module")
def default_predictor() -> SamPredictor:
    return SamPredictor(load_default_model(warn=False))


def test_shared_embedding_gives_the_points_simulation_unchanged(default_predictor):
    """The runner reuses one embedding for clicks and boxes; the click numbers must not move."""
    a, b = _disk(60, 60, 20), _disk(105, 60, 12)
    img = _scene(a, b, seed=4)
    objs = EvalObjects([a, b], None, [{"i": 0}, {"i": 1}])
    ref, _ = points.simulate_image(default_predictor, img, objs, "center", max_clicks=5)
    res, ex = prompts.evaluate_image(default_predictor, img, objs, baselines=(), keep_example=True)
    assert [r.model_clicks for r in res] == [t.ious["top"] for t in ref]
    assert [r.model_oracle_1pt for r in res] == [t.ious["oracle"][0] for t in ref]
    assert all(r.grabcut_box is None and r.grabcut_clicks is None and r.box_fill is None for r in res)
    assert ex is not None and ex["meta"] == {"i": 0}  # the largest object
    assert not default_predictor.is_image_set  # the runner leaves the predictor clean


def _synthetic_set(tmp_path: Path) -> list[EvalImage]:
    a, b = _disk(60, 60, 20), _disk(105, 60, 12)
    Image.fromarray(_scene(a, b, seed=5)).save(tmp_path / "scene.png")
    ignore = np.zeros((H, W), bool)
    ignore[:, :45] = True  # the left part of object a is ignored

    def load() -> EvalObjects:
        return EvalObjects([a, b], ignore, [{"image": "scene", "k": 0}, {"image": "scene", "k": 1}])

    return [EvalImage("synthetic", "scene", tmp_path / "scene.png", load)]


def test_run_writes_the_report_with_ignore_regions(tmp_path: Path, default_predictor):
    images = _synthetic_set(tmp_path)
    info = {"checkpoint": "test", "model_type": "segany_tiny", "trained": False, "parameters": 1}
    res = prompts.run(default_predictor, {"synthetic": images}, tmp_path / "out", info, "test", baselines=("box_fill",),
                      show_progress=False)
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["datasets"]["synthetic"]["objects"] == 2
    miou = rep["datasets"]["synthetic"]["mIoU"]
    assert miou["grabcut_box"] is None and miou["grabcut_1pt"] is None and 0 <= miou["box_fill"] <= 1
    objs = images[0].objects()
    expect = [clicks.iou(classical.box_fill(np.zeros((H, W)), prompts.tight_box(g)), g, objs.ignore) for g in objs.masks]
    assert [o["box_fill"] for o in rep["per_object"]["synthetic"]] == pytest.approx(expect)
    assert expect[0] != pytest.approx(clicks.iou(classical.box_fill(np.zeros((H, W)), prompts.tight_box(objs.masks[0])), objs.masks[0]))
    assert res["mean"]["mIoU"]["box_fill"] == pytest.approx(np.mean(expect))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| synthetic | 1 | 2 |" in md and "| mean |" in md and " - |" in md  # GrabCut columns shown as '-'
    assert (tmp_path / "out" / "miou_by_prompt.png").stat().st_size > 1000
    assert (tmp_path / "out" / "example_synthetic.png").is_file()
    with pytest.raises(ValueError, match="unknown baseline"):
        prompts.run(default_predictor, {"synthetic": images}, tmp_path / "x", info, "t", baselines=("snake",))


def test_click_columns_read_from_eval_points_records_are_the_simulated_ones(tmp_path: Path, default_predictor):
    """--clicks-from: the model's click columns come from an `eval points` run; every number stays the same."""
    images = _synthetic_set(tmp_path)
    info = {"checkpoint": "test", "model_type": "segany_tiny", "trained": False, "parameters": 1}
    points.run(default_predictor, {"synthetic": images}, tmp_path / "pts", info, "t", max_clicks=9, show_progress=False)
    ref = prompts.run(default_predictor, {"synthetic": images}, tmp_path / "a", info, "t", baselines=(),
                      show_progress=False)
    got = prompts.run(default_predictor, {"synthetic": images}, tmp_path / "b", info, "t", baselines=(),
                      show_progress=False, clicks_from=tmp_path / "pts")
    assert got["per_object"] == ref["per_object"]  # box IoUs too: skipping the simulation changes nothing
    assert all(len(o["model_clicks"]) <= prompts.N_CLICKS for o in got["per_object"]["synthetic"])
    assert got["datasets"] == ref["datasets"]
    assert got["clicks_from"] == {"dir": str(tmp_path / "pts"), "images": 1}
    assert ref["clicks_from"] == {"dir": None, "images": 0}
    assert "read from `segany eval points` records" in (tmp_path / "b" / "report.md").read_text()
    # resumed later without --clicks-from (the first image is redone for the example figure, the
    # second loaded), the report still counts the stored image whose click columns were read
    two = [images[0], EvalImage("synthetic", "scene2", images[0].path, images[0].objects)]
    points.run(default_predictor, {"synthetic": two}, tmp_path / "pts2", info, "t", max_clicks=9, show_progress=False)
    prompts.run(default_predictor, {"synthetic": two}, tmp_path / "c", info, "t", baselines=(), show_progress=False,
                clicks_from=tmp_path / "pts2")
    again = prompts.run(default_predictor, {"synthetic": two}, tmp_path / "c", info, "t", baselines=(),
                        show_progress=False)
    assert again["images_resumed"] == 1 and again["clicks_from"] == {"dir": None, "images": 1}


def test_clicks_from_refuses_records_of_another_simulation(tmp_path: Path, default_predictor):
    images = _synthetic_set(tmp_path)
    info = {"checkpoint": "test", "model_type": "segany_tiny", "trained": False, "parameters": 1}

    def prompts_from(folder: Path) -> None:
        prompts.run(default_predictor, {"synthetic": images}, tmp_path / "out", info, "t", baselines=(),
                    show_progress=False, clicks_from=folder)

    with pytest.raises(ValueError, match="no `segany eval points` records"):
        prompts_from(tmp_path / "nothing")
    points.run(default_predictor, {"synthetic": images}, tmp_path / "rand", info, "t", first="random", max_clicks=9,
               show_progress=False)
    with pytest.raises(ValueError, match="first='random'"):
        prompts_from(tmp_path / "rand")
    sig = tmp_path / "rand" / ".resume" / "points" / "signature.json"
    sig.write_text(json.dumps({**json.loads(sig.read_text()), "first": "center", "model": "another"}))
    with pytest.raises(ValueError, match="model='another'"):
        prompts_from(tmp_path / "rand")
    # a record whose object count no longer matches the data set is an error, not a silent mix-up
    points.run(default_predictor, {"synthetic": images}, tmp_path / "pts", info, "t", max_clicks=9, show_progress=False)
    store = points.open_for_reuse(tmp_path / "pts", default_predictor, prompts.N_CLICKS)
    with pytest.raises(ValueError, match="has 2 objects, the data set now has 3"):
        points.stored_traces(store, 0, images[0], 3)
    assert points.stored_traces(store, 1, images[0], 2) is None  # another position in the list: not this image


def test_cli_rejects_bad_baseline_combinations(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["eval", "prompts", "--baselines", "none", "grabcut", "--out", str(tmp_path)]) == 2
    assert "none" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "prompts", "--grabcut-click-context", "-1", "--out", str(tmp_path)])


@needs_data
def test_eval_prompts_end_to_end_matches_eval_points(tmp_path: Path):
    out = tmp_path / "prompts"
    # 2 GrabCut iterations instead of 5 keep the test fast; everything else runs as in a full evaluation
    assert main(["eval", "prompts", "--datasets", "grabcut", "--limit", "1", "--threads", "1", "--grabcut-iters", "2",
                 "--out", str(out), "--no-progress"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert (out / "report.md").read_text().startswith("# ")
    assert {"experiment", "model", "settings", "columns", "datasets", "mean", "seconds", "timing_seconds",
            "per_object"} <= set(rep)
    assert rep["settings"]["grabcut_iters"] == 2 and rep["settings"]["grabcut_box_context"] == "whole image"
    g = rep["datasets"]["grabcut"]
    assert g["images"] == 1 and g["objects"] == 1
    keys = {"model_box", "grabcut_box", "box_fill", "model_1pt", "grabcut_1pt", "model_5clicks", "grabcut_5clicks"}
    assert set(g["mIoU"]) == keys and set(rep["mean"]["mIoU"]) == keys
    assert all(0.0 <= v <= 1.0 for v in g["mIoU"].values())
    obj = rep["per_object"]["grabcut"][0]
    assert len(obj["box_xyxy"]) == 4 and 1 <= len(obj["grabcut_clicks"]) <= 5 and 1 <= len(obj["model_clicks"]) <= 5
    assert (out / "miou_by_prompt.png").is_file() and (out / "example_grabcut.png").is_file()

    # the model's 1-point / 5-click numbers are those of `segany eval points` on the same image
    pts_out = tmp_path / "points"
    assert main(["eval", "points", "--datasets", "grabcut", "--limit", "1", "--max-clicks", "9", "--threads", "1",
                 "--out", str(pts_out), "--no-progress"]) == 0
    pts = json.loads((pts_out / "report.json").read_text())
    assert pts["per_object"]["grabcut"][0]["meta"] == obj["meta"]
    assert g["mIoU"]["model_1pt"] == pytest.approx(pts["datasets"]["grabcut"]["top"]["mIoU"]["1"], abs=1e-9)
    assert g["mIoU"]["model_5clicks"] == pytest.approx(pts["datasets"]["grabcut"]["top"]["mIoU"]["5"], abs=1e-9)

    # --clicks-from reads those records instead of simulating again: the same numbers
    out2 = tmp_path / "prompts_from_points"
    assert main(["eval", "prompts", "--datasets", "grabcut", "--limit", "1", "--threads", "1", "--baselines", "none",
                 "--clicks-from", str(pts_out), "--out", str(out2), "--no-progress"]) == 0
    rep2 = json.loads((out2 / "report.json").read_text())
    assert rep2["clicks_from"]["images"] == 1
    obj2 = rep2["per_object"]["grabcut"][0]
    assert (obj2["model_box"], obj2["model_clicks"], obj2["model_oracle_1pt"]) == (
        obj["model_box"], obj["model_clicks"], obj["model_oracle_1pt"])

    # the suite summary: two prompts runs in one folder are refused; one points + one prompts run are tabled
    with pytest.raises(ValueError, match="two prompts reports"):
        summary.summarize(tmp_path)
    (out / "report.json").unlink()
    assert main(["eval", "summary", str(tmp_path)]) == 0
    md = (tmp_path / "summary.md").read_text()
    assert "| model box | model 1 pt | model 5 clicks |" in md and "## Point-to-mask mIoU" in md
    assert f"{100 * rep2['mean']['mIoU']['model_box']:.1f}" in md
    assert json.loads((tmp_path / "summary.json").read_text())["missing"] == ["edges", "proposals", "instances", "fairness"]


def test_zoomed_boxes_and_clicks_in_eval_prompts(tmp_path: Path, default_predictor):
    """--zoom-box answers each box on its crop (exactly ZoomIn.box); --zoom-in zooms the click columns,
    which then equal `eval points --zoom-in`; records of either kind are never mixed with plain ones."""
    from segany.zoom_in import BOX_ZOOM, ZoomIn, ZoomInConfig

    images = _synthetic_set(tmp_path)
    objs = images[0].objects()
    img = images[0].image()
    info = {"checkpoint": "test", "model_type": "segany_cnn", "trained": True, "parameters": 1}
    cfg = ZoomInConfig(min_crop=40)
    got = prompts.run(default_predictor, {"synthetic": images}, tmp_path / "z", info, "t", baselines=(),
                      show_progress=False, zoom_box=BOX_ZOOM, zoom_clicks=cfg)
    default_predictor.set_image(img)
    zoom = ZoomIn(default_predictor, BOX_ZOOM)
    want_box = [clicks.iou(zoom.box(img, prompts.tight_box(g))[0], g, objs.ignore) for g in objs.masks]
    default_predictor.reset_image()
    assert [o["model_box"] for o in got["per_object"]["synthetic"]] == pytest.approx(want_box)
    pts = points.run(default_predictor, {"synthetic": images}, tmp_path / "pts", info, "t", max_clicks=9,
                     show_progress=False, zoom_in=cfg)
    want_clicks = [o["iou_top"][: prompts.N_CLICKS] for o in pts["per_object"]["synthetic"]]
    assert [o["model_clicks"] for o in got["per_object"]["synthetic"]] == want_clicks
    assert got["settings"]["zoom_box"]["expansion"] == BOX_ZOOM.expansion
    assert "Model box on crops" in (tmp_path / "z" / "report.md").read_text()
    assert f"**Zoom-in** from click {cfg.skip_clicks + 1}" in (tmp_path / "pts" / "report.md").read_text()
    # the zoomed points run serves a zoomed prompts run, and refuses a plain one
    points.open_for_reuse(tmp_path / "pts", default_predictor, prompts.N_CLICKS, cfg)
    with pytest.raises(ValueError, match="zoom_in="):
        points.open_for_reuse(tmp_path / "pts", default_predictor, prompts.N_CLICKS)
    points.run(default_predictor, {"synthetic": images}, tmp_path / "plain", info, "t", max_clicks=9,
               show_progress=False)
    with pytest.raises(ValueError, match="zoom_in="):
        points.open_for_reuse(tmp_path / "plain", default_predictor, prompts.N_CLICKS, cfg)
