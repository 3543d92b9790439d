"""Conformance with the official segment-anything package (test oracle) on identical weights.

Every stage is compared: image embeddings, sparse/dense prompt embeddings, decoder outputs,
and SamPredictor results for each kind of prompt, on wide and tall real photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reference import import_reference, max_abs_diff
from segany import SamPredictor

TOL = 1e-4
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _photo(name: str, fallback_shape: tuple[int, int]) -> np.ndarray:
    """A real photo from ../shared/data when present (CI has it), else a smooth synthetic one."""
    path = DATA / "coco_tiny" / "train2017" / name
    if path.is_file():
        return np.asarray(Image.open(path).convert("RGB"))
    h, w = fallback_shape
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) % 256)], -1).astype(np.uint8)


def _wide_and_tall() -> list[np.ndarray]:
    files = sorted((DATA / "coco_tiny" / "train2017").glob("*.jpg"))[:40] if DATA.is_dir() else []
    wide = tall = None
    for f in files:
        im = Image.open(f)
        if im.width > im.height and wide is None:
            wide = f.name
        if im.height > im.width and tall is None:
            tall = f.name
    return [_photo(wide or "", (300, 450)), _photo(tall or "", (450, 300))]


@pytest.fixture(scope="module", params=[0, 1], ids=["wide", "tall"])
def twin_predictors(request, twin_models):
    ours, ref, _ = twin_models
    ref_pkg = import_reference()
    image = _wide_and_tall()[request.param]
    if request.param == 0:
        assert image.shape[1] > image.shape[0]
    else:
        assert image.shape[0] > image.shape[1]
    rp = ref_pkg.SamPredictor(ref)
    op = SamPredictor(ours)
    rp.set_image(image)
    op.set_image(image)
    return op, rp, image




def test_image_embedding_matches(twin_predictors):
    op, rp, _ = twin_predictors
    assert op.input_size == rp.input_size
    assert tuple(op.original_size) == tuple(rp.original_size)
    assert max_abs_diff(op.get_image_embedding(), rp.get_image_embedding()) <= TOL


def _prompt_cases(h: int, w: int) -> dict[str, dict]:
    fg = np.array([[w * 0.5, h * 0.45]])
    bg = np.array([[w * 0.2, h * 0.8]])
    box = np.array([w * 0.2, h * 0.15, w * 0.75, h * 0.9])
    return {
        "one_fg_point": dict(point_coords=fg, point_labels=np.array([1])),
        "fg_bg_points": dict(point_coords=np.concatenate([fg, bg]), point_labels=np.array([1, 0])),
        "box": dict(box=box),
        "box_and_point": dict(box=box, point_coords=fg, point_labels=np.array([1])),
    }


@pytest.mark.parametrize("case", ["one_fg_point", "fg_bg_points", "box", "box_and_point"])
@pytest.mark.parametrize("multimask", [True, False])
def test_predict_matches(twin_predictors, case, multimask):
    op, rp, image = twin_predictors
    kw = _prompt_cases(*image.shape[:2])[case]
    r_logits, r_iou, r_low = rp.predict(**kw, multimask_output=multimask, return_logits=True)
    o_logits, o_iou, o_low = op.predict(**kw, multimask_output=multimask, return_logits=True)
    assert o_logits.shape == r_logits.shape and o_logits.dtype == r_logits.dtype
    assert max_abs_diff(o_logits, r_logits) <= TOL
    assert max_abs_diff(o_iou, r_iou) <= TOL
    assert max_abs_diff(o_low, r_low) <= TOL
    r_masks, _, _ = rp.predict(**kw, multimask_output=multimask)
    o_masks, _, _ = op.predict(**kw, multimask_output=multimask)
    assert o_masks.dtype == r_masks.dtype == np.bool_
    differ = o_masks != r_masks
    # Booleans may only differ where the logit is within the tolerance of the threshold.
    assert np.all(np.abs(r_logits[differ]) <= TOL)

    # Feeding the previous low-res logits back as mask_input.
    best = int(np.argmax(r_iou))
    mask_input = r_low[best : best + 1]
    r2 = rp.predict(**kw, mask_input=mask_input, multimask_output=multimask, return_logits=True)
    o2 = op.predict(**kw, mask_input=mask_input, multimask_output=multimask, return_logits=True)
    for a, b in zip(o2, r2):
        assert max_abs_diff(a, b) <= TOL


def test_prompt_embeddings_match(twin_models):
    ours, ref, _ = twin_models
    g = torch.Generator().manual_seed(3)
    coords = torch.rand(2, 3, 2, generator=g) * 1000
    labels = torch.tensor([[1, 0, -1], [1, 1, 0]])
    boxes = torch.tensor([[10.0, 20.0, 500.0, 600.0], [100.0, 50.0, 900.0, 1000.0]])
    masks = torch.randn(2, 1, 256, 256, generator=g)
    for points, bx, mk in [((coords, labels), None, None), (None, boxes, None), ((coords, labels), boxes, masks),
                           (None, None, masks)]:
        o_sparse, o_dense = ours.prompt_encoder(points=points, boxes=bx, masks=mk)
        r_sparse, r_dense = ref.prompt_encoder(points=points, boxes=bx, masks=mk)
        assert max_abs_diff(o_sparse, r_sparse) <= TOL
        assert max_abs_diff(o_dense, r_dense) <= TOL
    assert max_abs_diff(ours.prompt_encoder.get_dense_pe(), ref.prompt_encoder.get_dense_pe()) <= TOL


def test_mask_decoder_matches(twin_models):
    ours, ref, _ = twin_models
    g = torch.Generator().manual_seed(4)
    emb = torch.randn(1, 256, 64, 64, generator=g)
    sparse = torch.randn(3, 4, 256, generator=g)
    dense = torch.randn(3, 256, 64, 64, generator=g)
    pe = ref.prompt_encoder.get_dense_pe()
    with torch.no_grad():
        for multimask in (True, False):
            o = ours.mask_decoder(emb, pe, sparse, dense, multimask)
            r = ref.mask_decoder(emb, pe, sparse, dense, multimask)
            assert max_abs_diff(o[0], r[0]) <= TOL
            assert max_abs_diff(o[1], r[1]) <= TOL


def test_batched_model_forward_matches(twin_models):
    """The official Sam.forward(batched_input) contract."""
    ours, ref, _ = twin_models
    g = torch.Generator().manual_seed(5)
    batch = [
        {
            "image": (torch.rand(3, 1024, 768, generator=g) * 255),
            "original_size": (400, 300),
            "point_coords": torch.tensor([[[500.0, 400.0]]]),
            "point_labels": torch.tensor([[1]]),
        },
        {"image": (torch.rand(3, 683, 1024, generator=g) * 255), "original_size": (200, 300),
         "boxes": torch.tensor([[100.0, 100.0, 600.0, 500.0], [0.0, 0.0, 300.0, 300.0]])},
    ]
    o = ours(batch, multimask_output=True)
    r = ref(batch, multimask_output=True)
    for a, b in zip(o, r):
        assert set(a) == set(b)
        assert max_abs_diff(a["low_res_logits"], b["low_res_logits"]) <= TOL
        assert max_abs_diff(a["iou_predictions"], b["iou_predictions"]) <= TOL
        assert a["masks"].shape == b["masks"].shape


@pytest.mark.slow
def test_full_vit_b_matches():
    """One full-size ViT-B comparison (12 blocks, 4 global) on a real photo."""
    from reference import random_state_dict, reference_sam
    from segany import build_model

    ref, ref_pkg = reference_sam(depth=12, global_attn=(2, 5, 8, 11))
    state = random_state_dict(ref, seed=1)
    ref.load_state_dict(state)
    ours = build_model("vit_b")
    ours.load_state_dict(state)
    image = _wide_and_tall()[0]
    rp, op = ref_pkg.SamPredictor(ref), SamPredictor(ours)
    rp.set_image(image)
    op.set_image(image)
    assert max_abs_diff(op.features, rp.features) <= TOL
    kw = _prompt_cases(*image.shape[:2])["box_and_point"]
    for a, b in zip(op.predict(**kw, return_logits=True), rp.predict(**kw, return_logits=True)):
        assert max_abs_diff(a, b) <= TOL
