"""Zoom-in refinement (segany.zoom_in): crop geometry, crop reuse, agreement with the whole-image
decode when the crop is the whole image, and its use in the click simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segany import SamPredictor
from segany.eval import points
from segany.eval.datasets import EvalObjects
from segany.zoom_in import ZoomIn, ZoomInConfig, box_iou, object_box

torch.set_num_threads(2)


def _disk(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2


def test_object_box_expands_about_the_centre_and_keeps_min_size() -> None:
    mask = np.zeros((400, 600), bool)
    mask[100:200, 200:400] = True  # 200 wide, 100 high
    cfg = ZoomInConfig(expansion=1.5, min_crop=180, min_crop_fraction=0.0)
    x0, y0, x1, y1 = object_box(mask, np.zeros((0, 2)), np.zeros(0), cfg)
    assert (x0, x1) == (150, 450)  # 300 wide about x = 300
    assert (y0, y1) == (60, 240)  # 150 high -> the 180 px minimum about y = 150
    # a positive click outside the mask widens the box; a negative one does not
    pts = np.array([[550.0, 150.0], [10.0, 10.0]])
    bx = object_box(mask, pts, np.array([1, 0]), cfg)
    assert bx[2] == 600 and bx[0] > 10  # shifted to stay inside the image, not past the click
    assert bx[2] - bx[0] == 527  # (550 - 200 + 1) x 1.5 = 526.5, shifted to [73.5, 600), rounded outwards


def test_object_box_is_shifted_inside_and_falls_back_to_the_image() -> None:
    mask = np.zeros((300, 300), bool)
    mask[:20, :20] = True
    x0, y0, x1, y1 = object_box(mask, np.zeros((0, 2)), np.zeros(0), ZoomInConfig(min_crop=100, min_crop_fraction=0.0))
    assert (x0, y0, x1, y1) == (0, 0, 100, 100)  # kept at its size, shifted into the image
    empty = np.zeros((50, 70), bool)
    assert object_box(empty, np.zeros((0, 2)), np.zeros(0), ZoomInConfig()) == (0, 0, 70, 50)
    big = ZoomInConfig(min_crop=10_000)  # larger than the image: clipped to it
    assert object_box(mask, np.zeros((0, 2)), np.zeros(0), big) == (0, 0, 300, 300)


def test_min_crop_fraction_keeps_large_objects_unzoomed() -> None:
    mask = np.zeros((300, 600), bool)
    mask[100:120, 100:130] = True  # 30 x 20
    cfg = ZoomInConfig(expansion=2.0, min_crop=10, min_crop_fraction=0.5)
    x0, y0, x1, y1 = object_box(mask, np.zeros((0, 2)), np.zeros(0), cfg)
    assert (x1 - x0, y1 - y0) == (300, 300)  # half the longer side, both ways (clipped to 300 rows)
    assert cfg.min_side(300, 600) == 300.0


def test_box_iou() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


@pytest.mark.parametrize("bad", [dict(expansion=0.9), dict(min_crop=0), dict(skip_clicks=-1),
                                 dict(recompute_iou=1.5)])
def test_config_rejects_bad_settings(bad: dict) -> None:
    with pytest.raises(ValueError, match="zoom-in"):
        ZoomInConfig(**bad)


def test_embed_and_predict_on_match_the_current_image_path(small_model) -> None:
    """The predictor's side entrance (embed / predict_torch_on) decodes exactly like set_image + predict_torch."""
    p = SamPredictor(small_model)
    image = np.random.RandomState(2).randint(0, 255, (90, 130, 3), dtype=np.uint8)
    state = p.embed(image)
    p.set_image(image)
    pts = torch.tensor([[[30.0, 40.0]]])
    lab = torch.tensor([[1]])
    a = p.predict_torch(pts, lab)
    b = p.predict_torch_on(state, pts, lab)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert p.original_size == state.original_size  # the current image was not replaced


@pytest.fixture(scope="module")
def photo_setup(trained_default_model, coco_val_photos):
    p = SamPredictor(trained_default_model)
    image = coco_val_photos[0]
    p.set_image(image)
    h, w = image.shape[:2]
    pt = np.array([[w / 2, h / 2]])
    masks, scores, low = p.predict(pt, np.array([1]))
    k = int(np.argmax(scores))
    return p, image, pt, masks[k], low[k : k + 1]


def test_whole_image_crop_agrees_with_the_unzoomed_decode(photo_setup) -> None:
    """With the crop forced to the whole image, a zoomed click is the ordinary click up to the
    resampling of the fed-back logits (upsampled, then shrunk again)."""
    p, image, pt, _, low = photo_setup
    zoom = ZoomIn(p, ZoomInConfig(min_crop=100_000))
    track = zoom.track(torch.as_tensor(low))
    # the fed-back logits land in the same frame: a shifted or scaled frame would differ by whole logits
    ih, iw = p.input_size
    side = low.shape[-1]
    lh, lw = round(ih * side / p.model.img_size), round(iw * side / p.model.img_size)
    prompt = zoom._mask_prompt(track.logits, p.embed(image))
    fed, orig = prompt[0, 0, :lh, :lw], torch.as_tensor(low[0, :lh, :lw])
    diff = (fed - orig).abs().mean()
    # relative to the logits' own scale and roughness (model-dependent: step 10,115's logits were
    # smooth, the GPU piece's are sharper, mean |logit| 14): the round trip stays well under
    # what a one-cell shift of the frame costs (measured 0.19 against 0.47)
    shifted = min((fed[1:] - orig[:-1]).abs().mean(), (fed[:, 1:] - orig[:, :-1]).abs().mean())
    assert diff < 0.5 * shifted and diff < 0.02 * orig.abs().mean()
    mask, score = zoom.click(image, track, pt, np.array([1]))
    ref, ref_score, _ = p.predict(pt, np.array([1]), mask_input=low, multimask_output=False)
    inter = np.logical_and(mask, ref[0]).sum()
    union = np.logical_or(mask, ref[0]).sum()
    # the decoder is sensitive to its mask prompt: that resampling alone moves 2-10% of this small
    # mask (IoU 0.98 on the step-10,115 weights, 0.942 on the GPU piece's, 0.898 on piece 9's) ...
    assert union > 0 and inter / union > 0.85
    # ... and it is all of the difference: fed the resampled prompt, the plain decode is the click
    same, same_score, _ = p.predict(pt, np.array([1]), mask_input=prompt[0].numpy(), multimask_output=False)
    np.testing.assert_array_equal(mask, same[0])
    assert score == pytest.approx(float(same_score[0]), abs=1e-5)
    assert score == pytest.approx(float(ref_score[0]), abs=0.02)
    assert track.box == (0, 0, image.shape[1], image.shape[0]) and track.encodes == 1


def test_zoomed_click_changes_only_the_crop_and_reuses_its_encoding(photo_setup) -> None:
    p, image, pt, mask0, low = photo_setup
    zoom = ZoomIn(p, ZoomInConfig(recompute_iou=0.5))
    track = zoom.track(torch.as_tensor(low))
    before = track.logits.clone()
    mask1, _ = zoom.click(image, track, pt, np.array([1]))
    x0, y0, x1, y1 = track.box
    assert track.encodes == 1 and mask1.shape == mask0.shape
    outside = torch.ones_like(before, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert torch.equal(track.logits[outside], before[outside])
    assert not torch.equal(track.logits[~outside], before[~outside])
    # a second click inside the same object: the box barely moves, the crop embedding is reused
    ys, xs = np.nonzero(mask1)
    pts = np.concatenate([pt, [[float(xs[len(xs) // 3]), float(ys[len(ys) // 3])]]])
    zoom.click(image, track, pts, np.array([1, 1]))
    if box_iou(object_box(mask1, pts, np.array([1, 1]), zoom.config), track.box) >= 0.5:
        assert track.encodes == 1
    # the whole image stays the predictor's current image
    assert p.original_size == image.shape[:2]


def test_click_simulation_with_zoom_in(photo_setup) -> None:
    """simulate_image with zoom-in: the first click is the whole-image one, later clicks zoom;
    IoUs stay valid and the simulation is deterministic."""
    p, image, pt, _, _ = photo_setup
    h, w = image.shape[:2]
    gt = _disk(h, w, w / 2, h / 2, min(h, w) / 5)
    objs = EvalObjects([gt], None, [{"id": 0}])
    plain, _ = points.simulate_image(p, image, objs, max_clicks=9)
    zoomed, _ = points.simulate_image(p, image, objs, max_clicks=9, zoom_in=ZoomInConfig())
    again, _ = points.simulate_image(p, image, objs, max_clicks=9, zoom_in=ZoomInConfig())
    for t in points.TRACKS:
        assert zoomed[0].ious[t][0] == plain[0].ious[t][0]  # click 1 is not zoomed
        assert all(0.0 <= v <= 1.0 for v in zoomed[0].ious[t])
        assert zoomed[0].ious[t] == again[0].ious[t]
    with pytest.raises(ValueError, match="zoom-in"):
        points.simulate_image(p, image, objs, max_clicks=9, zoom_in=ZoomInConfig(), feed_mask=False)
