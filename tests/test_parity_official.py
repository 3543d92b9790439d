"""Drop-in parity at the edges: what the official SamPredictor accepts, segany accepts too,
with the same outputs (identical random weights, the official package as the oracle).

The official predictor encodes points and boxes outside the image as given and answers
``predict()`` with no prompt at all (the decoder's output tokens alone). segany used to
refuse these; it now returns the official outputs and warns for out-of-image prompts. What
the official cannot handle either (NaN, wrong shapes, unknown labels) and oversized prompt
sets still raise a ``ValueError``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reference import import_reference, max_abs_diff
from segany import SamPredictor
from segany.predictor import MAX_POINTS, MAX_PROMPTS, PromptOutsideImageWarning

TOL = 1e-4
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _image() -> np.ndarray:
    """A real wide photo when ../shared/data is present, else a smooth synthetic one."""
    files = sorted((DATA / "coco_tiny" / "train2017").glob("*.jpg"))[:20] if DATA.is_dir() else []
    for f in files:
        im = Image.open(f)
        if im.width > im.height:
            return np.asarray(im.convert("RGB"))
    yy, xx = np.mgrid[0:300, 0:450]
    return np.stack([xx * 255 // 450, yy * 255 // 300, (xx + yy) % 256], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def twins(twin_models):
    """(segany predictor, official predictor, image), both with the image set."""
    ours, ref, _ = twin_models
    ref_pkg = import_reference()
    image = _image()
    op, rp = SamPredictor(ours), ref_pkg.SamPredictor(ref)
    op.set_image(image)
    rp.set_image(image)
    return op, rp, image




def _edge_cases(h: int, w: int) -> dict[str, dict]:
    """Prompts the official predictor takes and segany used to refuse."""
    inside = np.array([[w * 0.5, h * 0.45]])
    return {
        "no_prompt": {},
        "point_left_of_image": dict(point_coords=np.array([[-40.0, h * 0.5]]), point_labels=np.array([1])),
        "point_below_right": dict(point_coords=np.array([[w + 25.0, h + 60.0]]), point_labels=np.array([1])),
        "points_in_and_out": dict(
            point_coords=np.concatenate([inside, [[w * 1.5, -h * 0.2]]]), point_labels=np.array([1, 0])
        ),
        "box_partly_outside": dict(box=np.array([-30.0, h * 0.2, w * 0.6, h + 45.0])),
        "box_entirely_outside": dict(box=np.array([w + 10.0, h + 10.0, w + 200.0, h + 90.0])),
        "box_outside_and_point": dict(
            box=np.array([w * 0.3, -20.0, w + 30.0, h * 0.8]), point_coords=inside, point_labels=np.array([1])
        ),
    }


CASES = list(_edge_cases(1, 1))


def _predict_both(op, rp, kw, **opts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptOutsideImageWarning)
        ours = op.predict(**kw, **opts)
    return ours, rp.predict(**kw, **opts)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("multimask", [True, False])
def test_predict_logits_match(twins, case, multimask):
    op, rp, image = twins
    kw = _edge_cases(*image.shape[:2])[case]
    ours, ref = _predict_both(op, rp, kw, multimask_output=multimask, return_logits=True)
    for o, r in zip(ours, ref):
        assert o.dtype == r.dtype
        assert max_abs_diff(o, r) <= TOL


@pytest.mark.parametrize("case", CASES)
def test_predict_masks_match(twins, case):
    """Boolean masks (return_logits=False) may differ only where the logit is at the threshold."""
    op, rp, image = twins
    kw = _edge_cases(*image.shape[:2])[case]
    (o_masks, o_iou, o_low), (r_masks, r_iou, r_low) = _predict_both(op, rp, kw)
    assert o_masks.dtype == r_masks.dtype == np.bool_ and o_masks.shape == r_masks.shape
    r_logits = rp.predict(**kw, return_logits=True)[0]
    assert np.all(np.abs(r_logits[o_masks != r_masks]) <= TOL)
    assert max_abs_diff(o_iou, r_iou) <= TOL
    assert max_abs_diff(o_low, r_low) <= TOL


@pytest.mark.parametrize("case", ["no_prompt", "point_below_right", "box_partly_outside"])
def test_mask_input_matches(twins, case):
    """The previous low-res logits fed back, alone (no_prompt) or with an edge prompt."""
    op, rp, image = twins
    kw = _edge_cases(*image.shape[:2])[case]
    _, r_iou, r_low = rp.predict(point_coords=np.array([[100.0, 80.0]]), point_labels=np.array([1]))
    mask_input = r_low[int(np.argmax(r_iou))][None]
    for multimask in (True, False):
        ours, ref = _predict_both(op, rp, kw, mask_input=mask_input, multimask_output=multimask, return_logits=True)
        for o, r in zip(ours, ref):
            assert max_abs_diff(o, r) <= TOL


def test_predict_torch_matches(twins):
    """predict_torch with input-frame prompts outside the image, no prompt and a mask input."""
    op, rp, _ = twins
    g = torch.Generator().manual_seed(7)
    coords = torch.tensor([[[-50.0, 300.0], [1200.0, 1100.0]], [[500.0, 400.0], [30.0, -9.0]]])
    labels = torch.tensor([[1, 0], [1, 1]])
    boxes = torch.tensor([[-100.0, 50.0, 700.0, 1300.0], [1100.0, 900.0, 1500.0, 1200.0]])
    masks = torch.randn(2, 1, 256, 256, generator=g)
    calls = [
        dict(point_coords=coords, point_labels=labels),
        dict(point_coords=None, point_labels=None, boxes=boxes),
        dict(point_coords=coords, point_labels=labels, boxes=boxes, mask_input=masks),
        dict(point_coords=None, point_labels=None),
        dict(point_coords=None, point_labels=None, mask_input=masks),
    ]
    for kw in calls:
        for multimask in (True, False):
            o = op.predict_torch(**kw, multimask_output=multimask, return_logits=True)
            r = rp.predict_torch(**kw, multimask_output=multimask, return_logits=True)
            for a, b in zip(o, r):
                assert a.dtype == b.dtype
                assert max_abs_diff(a, b) <= TOL
        o_masks = op.predict_torch(**kw)[0]
        r_masks = rp.predict_torch(**kw)[0]
        logits = rp.predict_torch(**kw, return_logits=True)[0]
        assert o_masks.dtype == r_masks.dtype == torch.bool
        assert torch.all(logits[o_masks != r_masks].abs() <= TOL)


def test_outside_prompts_warn_and_can_be_made_strict(twins):
    op, _, image = twins
    h, w = image.shape[:2]
    cases = _edge_cases(h, w)
    for case in ("point_left_of_image", "box_partly_outside"):
        with pytest.warns(PromptOutsideImageWarning, match="outside the"):
            op.predict(**cases[case])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in-image prompts and no prompt stay silent
        op.predict(point_coords=np.array([[w * 0.5, h * 0.5]]), point_labels=np.array([1]))
        op.predict(box=np.array([0.0, 0.0, w, h]))
        op.predict()
    # The warning is a ValueError: a caller who wants the old strict behaviour turns it
    # into an error and keeps catching ValueError.
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptOutsideImageWarning)
        with pytest.raises(ValueError, match="outside the"):
            op.predict(**cases["box_partly_outside"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(point_coords=np.array([[np.nan, 10.0]]), point_labels=np.array([1])), "NaN"),
        (dict(box=np.array([np.inf, 10.0, 20.0, 40.0])), "NaN or infinite"),
        (dict(point_coords=np.array([1.0, 2.0, 3.0]), point_labels=np.array([1])), "Kx2"),
        (dict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([1, 0])), "does not match"),
        (dict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([2])), "must be 1"),
        (dict(box=np.array([10.0, 10.0, 20.0])), "XYXY"),
        (dict(mask_input=np.zeros((1, 64, 64))), "mask_input must be 1x256x256"),
    ],
)
def test_what_the_official_cannot_handle_still_raises(twins, kwargs, message):
    op, _, _ = twins
    with pytest.raises(ValueError, match=message):
        op.predict(**kwargs)


def test_prompt_size_caps(twins):
    """Over-large prompt sets fail at once with a clear message instead of running for minutes."""
    op, _, image = twins
    h, w = image.shape[:2]
    rng = np.random.default_rng(0)
    many = rng.uniform(0, [w, h], size=(MAX_POINTS + 1, 2))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=f"at most {MAX_POINTS}"):
        op.predict(point_coords=many, point_labels=np.ones(len(many)))
    with pytest.raises(ValueError, match=f"at most {MAX_POINTS}"):
        op.predict(point_coords=rng.uniform(0, w, (100_000, 2)), point_labels=np.ones(100_000))
    boxes = np.tile([10.0, 10.0, 50.0, 60.0], (MAX_PROMPTS + 1, 1))
    with pytest.raises(ValueError, match=f"at most {MAX_PROMPTS}"):
        op.predict(box=boxes)
    sets = rng.uniform(0, h, size=(MAX_PROMPTS + 1, 1, 2))
    with pytest.raises(ValueError, match=f"at most {MAX_PROMPTS}"):
        op.predict(point_coords=sets, point_labels=np.ones(sets.shape[:2]))
    assert time.perf_counter() - t0 < 5.0
