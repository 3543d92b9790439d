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


# ---------------------------------------------------------------------- the one mask IoU


def _direct_iou(p: np.ndarray, g: np.ndarray) -> float:
    union = int((p | g).sum())
    return 1.0 if union == 0 else int((p & g).sum()) / union


def test_mask_iou_elementwise_broadcasts_and_counts_two_empty_masks_as_one():
    a = torch.from_numpy(_random_masks(8, 13, 11, seed=21))
    b = torch.from_numpy(_random_masks(8, 13, 11, seed=22))
    out = mask_iou(a, b, pairwise=False)
    assert out.shape == (8,) and out.dtype == torch.float32
    for i in range(8):
        assert out[i].item() == pytest.approx(_direct_iou(a[i].numpy(), b[i].numpy()), abs=1e-6)
    # kind 3 of _random_masks is empty: empty vs empty is a perfect match, empty vs not is 0
    assert out[3].item() == 1.0 and mask_iou(a[3], a[0], pairwise=False).item() == 0.0
    # one target against a stack of predictions (MxCxHxW vs Mx1xHxW), as training scores outputs
    stack = torch.stack([a, b], dim=1)
    assert torch.equal(mask_iou(stack, a[:, None], pairwise=False)[:, 1], out)
    assert torch.equal(mask_iou(stack, a[:, None], pairwise=False)[:, 0], torch.ones(8))
    # pairwise NxM agrees with the elementwise diagonal
    assert torch.equal(torch.diagonal(mask_iou(a, b)), out)
    assert mask_iou(a[:0], b).shape == (0, 8)


def test_mask_iou_ignore_and_float64_equal_python_division():
    rng = np.random.RandomState(5)
    pred, gt, ignore = rng.rand(3, 37, 41) > 0.5
    inter, union = int((pred & gt & ~ignore).sum()), int(((pred | gt) & ~ignore).sum())
    got = mask_iou(pred, gt, ignore, pairwise=False, dtype=torch.float64)
    assert got.dtype == torch.float64 and got.item() == inter / union  # bit-identical, not approx
    # float32 is the correctly rounded float32 of the same quotient
    assert mask_iou(pred, gt, ignore, pairwise=False).item() == float(np.float32(inter) / np.float32(union))
    # everything ignored: both masks empty -> 1
    assert mask_iou(pred, gt, np.ones_like(ignore), pairwise=False).item() == 1.0
    # the ignore region applies to every pair in the pairwise form too
    pw = mask_iou(np.stack([pred, gt]), np.stack([gt]), ignore, dtype=torch.float64)
    assert pw.shape == (2, 1) and pw[0, 0].item() == inter / union and pw[1, 0].item() == 1.0


def test_mask_iou_accepts_any_numpy_view():
    rng = np.random.RandomState(6)
    pred, gt = rng.rand(2, 1, 9, 12) > 0.5
    flipped = pred[:, ::-1, ::-1]  # negative strides, which torch.from_numpy refuses
    read_only = gt.copy()
    read_only.setflags(write=False)
    expect = _direct_iou(flipped.copy(), read_only)
    assert mask_iou(flipped, read_only, pairwise=False, dtype=torch.float64).item() == expect
    # non-bool masks count their nonzero pixels, as np.asarray(x, dtype=bool) does
    assert mask_iou(flipped.astype(np.uint8) * 255, read_only.astype(np.float32), pairwise=False, dtype=torch.float64).item() == expect


def test_callers_of_the_one_iou_keep_their_conventions():
    from segany.eval.clicks import iou
    from segany.train.losses import mask_iou as logits_iou

    rng = np.random.RandomState(7)
    pred, gt, ignore = rng.rand(3, 20, 30) > 0.5
    # evaluation: a Python float, exactly intersection / union of the counts outside `ignore`
    got = iou(pred, gt, ignore)
    assert type(got) is float and got == int((pred & gt & ~ignore).sum()) / int(((pred | gt) & ~ignore).sum())
    assert iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0
    # training: logits > 0 against the target, float32, one value per mask
    logits = torch.from_numpy(rng.randn(4, 20, 30).astype(np.float32))
    target = torch.from_numpy(rng.rand(4, 20, 30) > 0.5)
    assert torch.equal(logits_iou(logits, target), mask_iou(logits > 0, target, pairwise=False))


# ---------------------------------------------------------------------- the one box from a mask


def test_batched_mask_to_box_takes_numpy_views():
    m = np.zeros((6, 7), bool)
    m[1:4, 2:6] = True
    assert batched_mask_to_box(m).tolist() == [2, 1, 5, 3]
    assert batched_mask_to_box(m[::-1, ::-1]).tolist() == [1, 2, 4, 4]
    assert batched_mask_to_box(m.astype(np.uint8)).tolist() == [2, 1, 5, 3]
    one = np.zeros((5, 5), bool)
    one[2, 3] = True
    assert batched_mask_to_box(one).tolist() == [3, 2, 3, 2]  # pixel indices: width 0


def test_callers_of_the_one_box_keep_their_conventions():
    from segany.eval.prompts import tight_box
    from segany.train.prompts import mask_boxes

    masks = _random_masks(12, 19, 23, seed=8)
    masks = masks[masks.reshape(len(masks), -1).any(1)]
    official = batched_mask_to_box(masks)
    # training box prompts: the same indices as float32
    boxes = mask_boxes(torch.from_numpy(masks))
    assert boxes.dtype == torch.float32 and torch.equal(boxes, official.float())
    # evaluation box prompts: int64 numpy, and an empty ground truth has no box
    for m, b in zip(masks, official):
        t = tight_box(m)
        assert t.dtype == np.int64 and t.tolist() == b.tolist()
    with pytest.raises(ValueError, match="empty"):
        tight_box(np.zeros((3, 3), bool))


def test_coco_boxes_agree_with_pycocotools_and_window_crops():
    """``coco_bbox`` (mask) == ``coco_rle_bbox`` (RLE) == pycocotools ``toBbox``; ``mask_window``
    is ``batched_mask_to_box`` with exclusive ends, None when empty."""
    from pycocotools import mask as mask_utils

    from segany.masks import coco_bbox, coco_rle_bbox, mask_window, masks_to_coco_rle

    m = np.zeros((9, 12), dtype=bool)
    m[2:7, 3] = True
    m[6, 3:10] = True  # an L: rows 2..6, cols 3..9
    rle = masks_to_coco_rle(m[None])[0]
    expected = [3, 2, 7, 5]
    assert coco_bbox(m) == expected
    assert coco_rle_bbox(rle) == [float(v) for v in expected]
    assert [int(v) for v in mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()})] == expected
    assert mask_window(m) == (slice(2, 7), slice(3, 10))
    assert m[mask_window(m)].sum() == m.sum()
    empty = np.zeros((4, 5), dtype=bool)
    assert coco_bbox(empty) == [0, 0, 0, 0] and mask_window(empty) is None
    assert coco_rle_bbox(masks_to_coco_rle(empty[None])[0]) == [0.0, 0.0, 0.0, 0.0]


def test_rasterize_polygons_matches_pycocotools_union():
    from pycocotools import mask as mask_utils

    from segany.masks import rasterize_polygons

    polys = [[1.0, 1.0, 8.0, 1.0, 8.0, 6.0, 1.0, 6.0], [5.0, 4.0, 11.0, 4.0, 11.0, 9.0]]
    got = rasterize_polygons(polys, 10, 12)
    ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, 10, 12))).astype(bool)
    assert got.dtype == bool and got.shape == (10, 12) and np.array_equal(got, ref) and got.any()
    assert not rasterize_polygons([], 3, 4).any()
