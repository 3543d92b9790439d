"""Evaluation building blocks against hand-computed cases: clicks, IoU/NoC, bootstrap, COCO recall, loaders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segany.eval import clicks, datasets, fairness, points, report
from segany.eval.edges import combine_edge_responses, mask_edge_response


def test_center_click_is_the_deepest_pixel():
    m = np.zeros((20, 30), bool)
    m[5:16, 3:14] = True  # 11x11 square: centre (8, 10) in (x, y)
    assert clicks.center_click(m) == (8, 10)
    with pytest.raises(ValueError, match="empty"):
        clicks.center_click(np.zeros((4, 4), bool))


def test_center_click_treats_the_image_border_as_boundary():
    m = np.zeros((10, 40), bool)
    m[:, :20] = True  # touches the top, bottom and left borders
    x, y = clicks.center_click(m)
    # the depth is capped at 5 by the top/bottom borders; the first pixel that deep is x = 4
    # (5 px from the padded left border), not x = 0 as it would be if borders did not count
    assert x == 4 and y in (4, 5)


def test_random_click_is_inside_and_reproducible():
    m = np.zeros((50, 50), bool)
    m[10:20, 30:40] = True
    a = clicks.random_click(m, np.random.default_rng(3))
    b = clicks.random_click(m, np.random.default_rng(3))
    assert a == b and m[a[1], a[0]]
    ign = np.zeros_like(m)
    ign[10:20, 30:39] = True  # only column 39 left
    for s in range(5):
        assert clicks.random_click(m, np.random.default_rng(s), ign)[0] == 39
    ign[:] = True  # an object entirely inside an ignore region still gets a click
    assert m[clicks.center_click(m, ign)[1], clicks.center_click(m, ign)[0]]


def test_next_click_goes_to_the_deeper_error():
    gt = np.zeros((40, 40), bool)
    gt[5:35, 5:35] = True
    pred = np.zeros_like(gt)
    pred[5:35, 5:15] = True  # misses a 30x20 block: positive click in its middle
    x, y, pos = clicks.next_click(pred, gt)
    assert pos and 24 <= x <= 25 and 14 <= y <= 25  # 10 px deep anywhere along the middle column
    pred2 = gt.copy()
    pred2[0:4, :] = True  # only a thin false alarm strip: negative click in it
    x, y, pos = clicks.next_click(pred2, gt)
    assert not pos and 0 <= y <= 3
    assert clicks.next_click(gt, gt) is None


def test_click_distances_are_exact_and_independent_of_opencv_threads():
    """The click simulator's distances are exact squared distances whatever cv2's (process-wide)
    thread count: OpenCV's float32 transform differs in the last bits between 1 and 2 threads,
    which used to move clicks and change a run's numbers depending on what ran before it."""
    import cv2

    rng = np.random.default_rng(0)
    m = np.zeros((120, 160), np.uint8)
    for _ in range(4):
        cv2.circle(m, (int(rng.integers(0, 160)), int(rng.integers(0, 120))), int(rng.integers(5, 60)), 1, -1)
    region = m.astype(bool)
    # brute force: squared distance to the nearest pixel outside the region (border = outside)
    padded = np.pad(region, 1)
    oy, ox = np.nonzero(~padded)
    ys, xs = np.nonzero(padded)
    brute = np.zeros(padded.shape, np.int64)
    for y, x in zip(ys, xs):
        brute[y, x] = int(((oy - y) ** 2 + (ox - x) ** 2).min())
    brute = brute[1:-1, 1:-1]
    before = cv2.getNumThreads()
    try:
        seen = []
        for threads in (1, 2, 4):
            cv2.setNumThreads(threads)
            d = clicks._inner_distance(region)
            assert d.dtype == np.int64 and np.array_equal(d, brute)
            gt = np.zeros_like(region)
            gt[20:100, 30:130] = True
            seen.append((clicks.center_click(region), clicks.next_click(region, gt)))
        assert seen[0] == seen[1] == seen[2]
    finally:
        cv2.setNumThreads(before)


def test_ignore_band_is_neither_clicked_nor_counted():
    gt = np.zeros((20, 20), bool)
    gt[5:15, 5:15] = True
    ignore = np.zeros_like(gt)
    ignore[4:16, 4:16] = True
    ignore[6:14, 6:14] = False  # a 2-pixel band around the inner 8x8 core
    pred = np.zeros_like(gt)
    pred[6:14, 6:14] = True
    assert clicks.iou(pred, gt, ignore) == 1.0
    assert clicks.next_click(pred, gt, ignore) is None
    assert clicks.iou(pred, gt) == pytest.approx(64 / 100)


def test_iou_and_noc():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert clicks.iou(a, b) == pytest.approx(4 / 12)
    assert clicks.iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
    ious = np.array([0.5, 0.8, 0.86, 0.91, 0.95])
    assert clicks.number_of_clicks(ious, 0.85, 20) == 3
    assert clicks.number_of_clicks(ious, 0.90, 20) == 4
    assert clicks.number_of_clicks(ious, 0.99, 20) == 20


def test_points_summary_uses_last_iou_after_an_early_stop():
    tr = points.ObjectTrace(meta={}, ious={"top": [0.5, 1.0], "oracle": [0.7, 1.0]})
    s = points.summarize([tr], max_clicks=20)
    assert s["top"]["mIoU"]["1"] == 0.5 and s["top"]["mIoU"]["9"] == 1.0
    assert s["top"]["NoC@85"] == 2 and s["oracle"]["mIoU"]["1"] == 0.7
    assert "NoC@85" not in s["oracle"]  # NoC is the top track's protocol; the oracle stops after 9 clicks


def test_bootstrap_ci():
    mean, lo, hi = fairness.bootstrap_ci([1.0] * 10, 100)
    assert mean == lo == hi == 1.0
    vals = np.r_[np.zeros(50), np.ones(50)]
    mean, lo, hi = fairness.bootstrap_ci(vals, 2000, seed=1)
    assert mean == 0.5 and 0.38 < lo < 0.45 and 0.55 < hi < 0.62  # +-1.96 * sqrt(.25/100) = +-0.098
    assert fairness.bootstrap_ci(vals, 500, seed=1) == fairness.bootstrap_ci(vals, 500, seed=1)


def test_group_table_groups_by_metadata():
    trs = [points.ObjectTrace(meta={"g": "a"}, ious={"top": [0.2, 0.4, 0.6], "oracle": [0.2] * 3}),
           points.ObjectTrace(meta={"g": "b"}, ious={"top": [0.8, 0.8, 1.0], "oracle": [0.8] * 3})]
    t = fairness.group_table(trs, "g", n_boot=50)
    assert t["a"]["mIoU@1"]["mean"] == pytest.approx(0.2) and t["b"]["mIoU@3"]["mean"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no object"):
        fairness.group_table(trs, "missing")


def test_coco_recall_of_ground_truth_is_one(tmp_path: Path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from segany.eval.proposals import coco_recall

    h, w = 64, 80
    anns, results = [], []
    for i, (y0, x0, s) in enumerate([(2, 2, 10), (20, 30, 40)]):
        m = np.zeros((h, w), np.uint8, order="F")
        m[y0 : y0 + s, x0 : x0 + s] = 1
        rle = mask_utils.encode(m)
        rle["counts"] = rle["counts"].decode()
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": rle, "area": float(s * s),
                     "bbox": [x0, y0, s, s], "iscrowd": 0})
        results.append({"image_id": 1, "category_id": 1, "segmentation": rle, "score": 0.9})
    gt_json = {"images": [{"id": 1, "height": h, "width": w, "file_name": "a.png"}], "annotations": anns,
               "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    gt = COCO(str(tmp_path / "gt.json"))
    ar = coco_recall(gt, results, [1], use_cats=False)
    assert ar["all"] == pytest.approx(1.0) and ar["small"] == pytest.approx(1.0) and ar["large"] == 0.0
    ar_half = coco_recall(gt, results[:1], [1], use_cats=False)
    assert ar_half["all"] == pytest.approx(0.5)


def test_mask_edge_response_is_kept_only_at_the_outer_boundary():
    prob = np.zeros((40, 40), np.float32)
    prob[10:30, 10:30] = 1.0
    prob[18:22, 18:22] = 0.0  # a hole: inner boundary, not outer
    mask = prob > 0.5
    r = mask_edge_response(prob, mask)
    assert r[10, 20] > 0 and r[20, 10] > 0
    assert r[18:22, 18:22].max() == 0 and r[0:5].max() == 0
    e = combine_edge_responses([r], r.shape)
    assert e.max() == pytest.approx(1.0, abs=1e-6) and e.min() == 0.0


def test_grabcut_loader_reads_ignore_band():
    root = datasets.default_data_root() / "grabcut"
    if not root.is_dir():
        pytest.skip("grabcut data not available")
    ims = datasets.grabcut(root)
    assert len(ims) == 50
    banded = [im for im in ims if im.image_id == "banana1"]
    assert banded, "expected GrabCut image banana1"
    objs = banded[0].objects()
    assert len(objs.masks) == 1 and objs.ignore is not None and objs.ignore.any()
    assert not (objs.masks[0] & objs.ignore).any()


def test_eval_split_loaders_respect_the_split():
    root = datasets.default_data_root()
    if not (root / "dsb2018").is_dir():
        pytest.skip("data not available")
    dsb = datasets.dsb2018(root / "dsb2018")
    assert len(dsb) == 159 and all(im.image_id[0] in "cdef" for im in dsb)
    cv = datasets.cvppp_a1(root / "cvppp_a1")
    assert len(cv) == 28 and all(int(im.image_id[5:8]) > 124 for im in cv)
    objs = cv[0].objects()
    assert len(objs.masks) >= 2 and objs.meta[0]["dataset"] == "cvppp_a1"
    name, coco = datasets.resolve("coco_tiny", root)
    assert name == "coco_tiny" and "val2017" in str(coco[0].path)
    with pytest.raises(ValueError, match="unknown data set"):
        datasets.resolve("nope", root)


def test_sa1b_folder_loader(tmp_path: Path):
    from pycocotools import mask as mask_utils

    img = np.zeros((30, 40, 3), np.uint8)
    report.save_image(tmp_path / "sa_1.png", img)
    m = np.zeros((30, 40), np.uint8, order="F")
    m[5:15, 5:25] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode()
    (tmp_path / "sa_1.json").write_text(json.dumps({
        "image": {"image_id": 1, "file_name": "sa_1.png", "height": 30, "width": 40, "region": "north"},
        "annotations": [{"id": 7, "segmentation": rle, "area": 200}],
    }))
    ims = datasets.sa1b_folder(tmp_path)
    objs = ims[0].objects()
    assert objs.masks[0].sum() == 200 and objs.meta[0]["region"] == "north" and objs.meta[0]["size"] == "small"
    assert ims[0].image().shape == (30, 40, 3)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an SA-1B"):
        datasets.sa1b_folder(tmp_path)


def test_report_writes_atomically(tmp_path: Path):
    report.write_json(tmp_path / "r.json", {"a": np.float32(0.5), "b": float("nan"), "c": np.arange(2)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 0.5, "b": None, "c": [0, 1]}
    assert not list(tmp_path.glob(".*tmp"))
    table = report.markdown_table(["x", "y"], [["a", 0.12345], ["b", None]])
    assert "| a | 0.123 |" in table and "| b | - |" in table


class _FakePredictor:
    """Stands in for SamPredictor: 3 masks (whole image, the object, a corner) ranked so that the
    model's top choice is wrong; any later (single-mask) call returns the object exactly."""

    def __init__(self, obj: np.ndarray):
        import torch

        from segany.transforms import ResizeLongestSide

        self.obj = torch.from_numpy(obj)
        self.transform = ResizeLongestSide(64)
        self.device = torch.device("cpu")
        self.calls: list[tuple[int, bool]] = []
        self.mask_inputs: list[bool] = []

    def set_image(self, image: np.ndarray) -> None:
        self.size = image.shape[:2]

    def reset_image(self) -> None:
        pass

    def predict_torch(self, pts, labels, mask_input=None, multimask_output=True, **_):
        import torch

        b = pts.shape[0]
        self.calls.append((pts.shape[1], multimask_output))
        self.mask_inputs.append(mask_input is not None)
        whole = torch.ones_like(self.obj)
        corner = torch.zeros_like(self.obj)
        corner[:2, :2] = True
        if multimask_output:
            masks = torch.stack([whole, self.obj, corner])[None].expand(b, -1, -1, -1)
            scores = torch.tensor([[0.9, 0.5, 0.1]]).expand(b, -1)
        else:
            masks = self.obj[None, None].expand(b, 1, -1, -1)
            scores = torch.ones(b, 1)
        return masks, scores, torch.zeros(b, masks.shape[1], 256, 256)


def test_simulate_image_tracks_top_and_oracle_and_feeds_clicks_back():
    from segany.eval.datasets import EvalObjects

    obj = np.zeros((40, 50), bool)
    obj[10:30, 10:30] = True
    fake = _FakePredictor(obj)
    traces, _ = points.simulate_image(fake, np.zeros((40, 50, 3), np.uint8), EvalObjects([obj], None, [{"k": 1}]),
                                      max_clicks=20)
    tr = traces[0]
    assert tr.ious["top"][0] == pytest.approx(400 / 2000)  # the confident "whole image" mask
    assert tr.ious["oracle"] == [1.0]  # the best of 3 is exact: no error left, no more clicks
    assert tr.ious["top"][1] == 1.0 and len(tr.ious["top"]) == 2  # the 2nd click fixes it, then stop
    assert tr.noc("top", 0.9, 20) == 2 and tr.noc("oracle", 0.9, 20) == 1
    # first call: 1 point, 3 masks; second: 2 points (centre + negative click), single mask,
    # with the first mask's logits fed back -- unless feed_mask is off
    assert fake.calls == [(1, True), (2, False)]
    assert fake.mask_inputs == [False, True]
    fake = _FakePredictor(obj)
    again, _ = points.simulate_image(fake, np.zeros((40, 50, 3), np.uint8), EvalObjects([obj], None, [{"k": 1}]),
                                     max_clicks=20, feed_mask=False)
    assert fake.calls == [(1, True), (2, False)] and fake.mask_inputs == [False, False]
    assert again[0].ious == tr.ious
    experiment = points.PointsExperiment(fake, feed_mask=False)
    assert experiment.feed_mask is False
