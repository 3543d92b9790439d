"""masks.py: RLE round trips against pycocotools, boxes and IoU against direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from segany.masks import (
    area_from_rle,
    batched_mask_to_box,
    box_iou,
    box_xywh_to_xyxy,
    box_xyxy_to_xywh,
    coco_encode_rle,
    coco_rle_to_rle,
    mask_iou,
    mask_to_rle,
    masks_to_coco_rle,
    rle_to_mask,
)


def _random_masks(b: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    masks = np.zeros((b, h, w), dtype=bool)
    for i in range(b):
        kind = i % 4
        if kind == 0:
            masks[i] = rng.rand(h, w) > 0.5  # many runs
        elif kind == 1:
            y0, x0 = rng.randint(0, h), rng.randint(0, w)
            masks[i, y0 : y0 + rng.randint(1, h + 1), x0 : x0 + rng.randint(1, w + 1)] = True
        elif kind == 2:
            masks[i] = True  # first pixel set: counts start with a 0 run
        # kind 3: empty
    return masks


@pytest.mark.parametrize("shape", [(8, 13, 17), (4, 1, 9), (4, 9, 1), (5, 64, 48)])
def test_rle_round_trip_matches_pycocotools(shape):
    masks = _random_masks(*shape)
    rles = mask_to_rle(torch.from_numpy(masks))
    coco = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for m, rle, c in zip(masks, rles, coco):
        assert rle["size"] == list(m.shape)
        assert sum(rle["counts"]) == m.size
        np.testing.assert_array_equal(rle_to_mask(rle), m)
        # our uncompressed RLE compresses to exactly pycocotools' own encoding of the mask
        assert coco_encode_rle(rle)["counts"] == c["counts"].decode()
        assert area_from_rle(rle) == int(m.sum()) == int(mask_utils.area(c))
        np.testing.assert_array_equal(mask_utils.decode(mask_utils.frPyObjects(rle, *m.shape)), m)


def test_rle_starts_with_zero_run_when_first_pixel_set():
    m = np.zeros((1, 3, 2), dtype=bool)
    m[0, 0, 0] = True
    assert mask_to_rle(m)[0]["counts"] == [0, 1, 5]
    m[0] = True
    assert mask_to_rle(m)[0]["counts"] == [0, 6]
    assert mask_to_rle(np.zeros((1, 3, 2), bool))[0]["counts"] == [6]


def test_coco_rle_helpers_agree():
    masks = _random_masks(6, 21, 30, seed=3)
    direct = masks_to_coco_rle(masks)
    via_rle = [coco_encode_rle(r) for r in mask_to_rle(masks)]
    assert direct == via_rle
    for m, c in zip(masks, direct):
        assert isinstance(c["counts"], str)
        np.testing.assert_array_equal(rle_to_mask(c), m)
        assert area_from_rle(c) == int(m.sum())
        assert coco_rle_to_rle(c) == mask_to_rle(m[None])[0]


def test_rle_rejects_bad_input():
    with pytest.raises(ValueError, match="BxHxW"):
        mask_to_rle(np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="sum"):
        rle_to_mask({"size": [2, 2], "counts": [1, 1]})


def test_batched_mask_to_box_matches_direct_computation():
    masks = _random_masks(12, 19, 23, seed=5)
    boxes = batched_mask_to_box(torch.from_numpy(masks))
    assert boxes.dtype == torch.int64
    for m, b in zip(masks, boxes.tolist()):
        if not m.any():
            assert b == [0, 0, 0, 0]
            continue
        ys, xs = np.nonzero(m)
        assert b == [xs.min(), ys.min(), xs.max(), ys.max()]
    # leading dims kept
    assert batched_mask_to_box(torch.from_numpy(masks).reshape(3, 4, 19, 23)).shape == (3, 4, 4)
    assert batched_mask_to_box(torch.zeros(0, 5, 5, dtype=torch.bool)).shape == (0, 4)


def test_box_conversions_round_trip():
    xyxy = torch.tensor([[1.0, 2.0, 5.0, 9.0], [0.0, 0.0, 0.0, 0.0]])
    xywh = box_xyxy_to_xywh(xyxy)
    assert xywh.tolist() == [[1, 2, 4, 7], [0, 0, 0, 0]]
    assert torch.equal(box_xywh_to_xyxy(xywh), xyxy)
    assert box_xyxy_to_xywh([1, 2, 5, 9]) == [1, 2, 4, 7]
    assert box_xywh_to_xyxy([1, 2, 4, 7]) == [1, 2, 5, 9]
    assert box_xyxy_to_xywh(np.array([1, 2, 5, 9])).tolist() == [1, 2, 4, 7]
    assert xyxy[0].tolist() == [1, 2, 5, 9]  # inputs untouched


def test_box_and_mask_iou():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    np.testing.assert_allclose(box_iou(a, b).numpy(), [[50 / 150, 0.0]])
    masks = torch.from_numpy(_random_masks(5, 16, 16, seed=7))
    iou = mask_iou(masks, masks)
    for i in range(5):
        for j in range(5):
            inter = (masks[i] & masks[j]).sum().item()
            union = (masks[i] | masks[j]).sum().item()
            expect = 1.0 if union == 0 else inter / union
            assert abs(iou[i, j].item() - expect) < 1e-6


def test_same_as_reference_helpers():
    """The reference's own RLE/box helpers give identical results (test oracle)."""
    from reference import import_reference

    import_reference()
    from segment_anything.utils import amg

    masks = torch.from_numpy(_random_masks(9, 17, 11, seed=11))
    assert mask_to_rle(masks) == amg.mask_to_rle_pytorch(masks)
    assert torch.equal(batched_mask_to_box(masks), amg.batched_mask_to_box(masks))
    for rle in mask_to_rle(masks):
        assert coco_encode_rle(rle) == amg.coco_encode_rle(rle)
        np.testing.assert_array_equal(rle_to_mask(rle), amg.rle_to_mask(rle))
        assert area_from_rle(rle) == amg.area_from_rle(rle)


@pytest.mark.parametrize("window", [(0, 0, 7, 9), (3, 2, 5, 4), (0, 0, 12, 4), (2, 0, 6, 9), (0, 5, 12, 4)])
def test_rle_of_a_window_equals_rle_of_the_padded_mask(window):
    """RLEs made in the image frame from crop-frame masks equal those of the padded masks."""
    x0, y0, w, h = window
    img_h, img_w = 9, 12
    masks = _random_masks(12, h, w, seed=x0 + 7 * y0)
    padded = np.zeros((len(masks), img_h, img_w), dtype=bool)
    padded[:, y0 : y0 + h, x0 : x0 + w] = masks
    got = mask_to_rle(torch.from_numpy(masks), frame=(img_h, img_w), offset=(x0, y0))
    assert got == mask_to_rle(torch.from_numpy(padded))
    with pytest.raises(ValueError, match="does not fit"):
        mask_to_rle(masks, frame=(img_h, img_w), offset=(img_w - w + 1, 0))
