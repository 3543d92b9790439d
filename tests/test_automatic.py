"""Automatic mask generation: grid/crop geometry, stability score, NMS, cleanup, presets and
the generator's own behaviour (the reference comparison is in test_automatic_conformance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference import import_reference
from segany.automatic import PRESETS, SamAutomaticMaskGenerator, preset
from segany.automatic.filters import (
    clean_mask,
    crop_nms_scores,
    is_box_near_crop_edge,
    nms,
    proposal_rank,
    remove_small_regions,
    stability_score,
)
from segany.automatic.generator import MaskSet
from segany.automatic.grid import build_all_layer_point_grids, build_point_grid, generate_crop_boxes
from segany.masks import mask_to_rle


def _amg():
    import_reference()
    from segment_anything.utils import amg

    return amg


# ---------------------------------------------------------------------- geometry


def test_point_grid_is_cell_centres():
    g = build_point_grid(4)
    assert g.shape == (16, 2)
    np.testing.assert_allclose(g[:4, 0], [0.125, 0.375, 0.625, 0.875])  # x fastest
    np.testing.assert_allclose(g[::4, 1], [0.125, 0.375, 0.625, 0.875])
    grids = build_all_layer_point_grids(32, 2, 2)
    assert [len(x) for x in grids] == [32 * 32, 16 * 16, 8 * 8]
    np.testing.assert_array_equal(build_point_grid(7), _amg().build_point_grid(7))
    with pytest.raises(ValueError):
        build_point_grid(0)


@pytest.mark.parametrize("size", [(1200, 1800), (480, 640), (333, 101), (4000, 6000)])
@pytest.mark.parametrize("layers", [0, 1, 2, 3])
def test_crop_boxes_match_reference_and_cover_image(size, layers):
    boxes, idx = generate_crop_boxes(size, layers, 512 / 1500)
    assert (boxes, idx) == _amg().generate_crop_boxes(size, layers, 512 / 1500)
    h, w = size
    assert boxes[0] == [0, 0, w, h] and idx[0] == 0
    for k in range(1, layers + 1):
        layer = [b for b, i in zip(boxes, idx) if i == k]
        assert len(layer) == 4**k
        cover = np.zeros((h, w), dtype=bool)
        for x0, y0, x1, y1 in layer:
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            cover[y0:y1, x0:x1] = True
        assert cover.all(), "crops of a layer must cover the image"
        # neighbouring crops overlap
        xs = sorted({b[0] for b in layer})
        ends = sorted({b[2] for b in layer})
        assert all(ends[i] > xs[i + 1] for i in range(len(xs) - 1))


# ---------------------------------------------------------------------- scores and filters


def test_stability_score_is_iou_of_offset_thresholds():
    torch.manual_seed(0)
    logits = torch.randn(5, 20, 30) * 3
    s = stability_score(logits, 0.0, 1.0)
    for i in range(5):
        hi, lo = logits[i] > 1, logits[i] > -1
        assert torch.isclose(s[i], (hi & lo).sum() / (hi | lo).sum())
    assert torch.equal(s, _amg().calculate_stability_score(logits, 0.0, 1.0))
    # a mask with a sharp edge is perfectly stable
    sharp = torch.full((1, 8, 8), -10.0)
    sharp[0, 2:5, 2:5] = 10.0
    assert stability_score(sharp, 0.0, 1.0).item() == 1.0


def test_nms_matches_greedy_reference_with_stable_ties():
    import_reference()
    from torchvision.ops.boxes import batched_nms

    g = torch.Generator().manual_seed(3)
    xy = torch.rand(300, 2, generator=g) * 100
    wh = torch.rand(300, 2, generator=g) * 40 + 1
    boxes = torch.cat([xy, xy + wh], 1).round()
    scores = (torch.rand(300, generator=g) * 5).round() / 5  # many ties
    for thr in (0.3, 0.7, 0.9):
        got = nms(boxes, scores, thr)
        assert torch.equal(got, batched_nms(boxes, scores, torch.zeros(300), thr))
        kept = boxes[got]
        from segany.masks import box_iou

        iou = box_iou(kept, kept).fill_diagonal_(0)
        assert (iou <= thr).all()
        assert (scores[got][1:] <= scores[got][:-1]).all()


def test_nms_across_crops_prefers_the_most_zoomed_in_crop():
    """Two copies of one mask, from the whole image and from a crop: the crop's one wins,
    and among equal crops the earlier (stable order) wins."""
    boxes = torch.tensor([[10, 10, 50, 50], [11, 10, 50, 50], [10, 11, 50, 50], [200, 200, 220, 230]])
    crop_boxes = torch.tensor([[0, 0, 400, 300], [0, 0, 250, 180], [0, 0, 250, 180], [0, 0, 400, 300]])
    keep = nms(boxes.float(), crop_nms_scores(crop_boxes), 0.7)
    assert keep.tolist() == [1, 3]


def test_boxes_near_inner_crop_edges_are_dropped():
    crop = [100, 0, 300, 200]  # inner edge at x=100 and y=200, image edges at y=0 and x=300
    orig = [0, 0, 300, 400]
    boxes = torch.tensor(
        [
            [5, 50, 60, 90],  # touches the left crop edge (x=100 in the image): cut by the crop
            [50, 0, 120, 60],  # touches the top, which is the image edge: kept
            [60, 60, 199, 120],  # touches the right, image edge: kept
            [60, 60, 120, 195],  # near the bottom crop edge: dropped
            [60, 60, 120, 150],  # interior: kept
        ]
    )
    near = is_box_near_crop_edge(boxes, crop, orig)
    assert near.tolist() == [True, False, False, True, False]
    assert torch.equal(near, _amg().is_box_near_crop_edge(boxes, crop, orig))


def test_small_region_cleanup():
    m = np.zeros((40, 40), dtype=bool)
    m[5:30, 5:30] = True
    m[10:12, 10:12] = False  # 4 px hole
    m[35:37, 35:37] = True  # 4 px island
    filled, changed = remove_small_regions(m, 10, "holes")
    assert changed and filled[10:12, 10:12].all()
    no_island, changed = remove_small_regions(filled, 10, "islands")
    assert changed and not no_island[35:37, 35:37].any() and no_island[5:30, 5:30].all()
    cleaned, changed = clean_mask(m, 10)
    assert changed and np.array_equal(cleaned, no_island)
    same, changed = clean_mask(no_island, 10)
    assert not changed and np.array_equal(same, no_island)
    # all islands small: the largest survives, the mask never becomes empty
    tiny = np.zeros((20, 20), dtype=bool)
    tiny[1:3, 1:3] = True
    tiny[10:13, 10:13] = True
    kept, _ = remove_small_regions(tiny, 100, "islands")
    assert kept.sum() == 9 and kept[10:13, 10:13].all()
    ref = _amg()
    for mode in ("holes", "islands"):
        a, ca = remove_small_regions(m, 10, mode)
        b, cb = ref.remove_small_regions(m, 10, mode)
        assert ca == cb and np.array_equal(a, b)
    with pytest.raises(ValueError):
        remove_small_regions(m, 10, "edges")


def test_postprocess_small_regions_prefers_unchanged_masks():
    clean = np.zeros((30, 30), dtype=bool)
    clean[5:25, 5:25] = True
    holed = clean.copy()
    holed[10, 10] = False  # becomes a duplicate of `clean` once its hole is filled
    other = np.zeros((30, 30), dtype=bool)
    other[0:3, 27:30] = True
    masks = np.stack([holed, clean, other])
    data = MaskSet(
        mask_to_rle(masks),
        torch.tensor([[5, 5, 24, 24], [5, 5, 24, 24], [27, 0, 29, 2]]),
        torch.tensor([0.9, 0.8, 0.7]),
        torch.zeros(3, 2, dtype=torch.float64),
        torch.tensor([0.9, 0.9, 0.9]),
        torch.tensor([[0, 0, 30, 30]] * 3),
    )
    out = SamAutomaticMaskGenerator.postprocess_small_regions(data, 5, 0.7)
    # the changed (holed) mask now duplicates `clean` and loses to it; unchanged ones first
    assert out.iou_preds.tolist() == pytest.approx([0.8, 0.7])


# ---------------------------------------------------------------------- generator


def test_generator_validates_arguments(small_model):
    with pytest.raises(ValueError, match="exactly one"):
        SamAutomaticMaskGenerator(small_model, points_per_side=None)
    with pytest.raises(ValueError, match="output_mode"):
        SamAutomaticMaskGenerator(small_model, output_mode="polygons")
    with pytest.raises(ValueError, match="points_per_batch"):
        SamAutomaticMaskGenerator(small_model, points_per_batch=0)
    with pytest.raises(ValueError, match="no points"):
        SamAutomaticMaskGenerator(small_model, points_per_side=2, crop_n_layers=2, crop_n_points_downscale_factor=2)
    gen = SamAutomaticMaskGenerator(small_model, points_per_side=2)
    with pytest.raises(ValueError, match="HxWx3"):
        gen.generate(np.zeros((10, 10), dtype=np.uint8))


def test_generator_records_and_extra_options(small_model):
    img = np.random.RandomState(0).randint(0, 255, (60, 90, 3), dtype=np.uint8)
    kw = dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    recs = SamAutomaticMaskGenerator(small_model, output_mode="binary_mask", **kw).generate(img)
    assert recs, "with no filtering every grid point gives masks"
    for r in recs:
        assert r["segmentation"].shape == (60, 90) and r["segmentation"].dtype == bool
        assert r["area"] == int(r["segmentation"].sum())
        if r["area"]:
            ys, xs = np.nonzero(r["segmentation"])
            assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert r["crop_box"] == [0, 0, 90, 60]
    capped = SamAutomaticMaskGenerator(small_model, max_masks=2, **kw).generate(img)
    rank = sorted(((r["predicted_iou"] + r["stability_score"]) / 2 for r in recs), reverse=True)[:2]
    assert [(r["predicted_iou"] + r["stability_score"]) / 2 for r in capped] == pytest.approx(rank, abs=1e-6)
    small = SamAutomaticMaskGenerator(small_model, max_mask_fraction=0.5, **kw).generate(img)
    assert all(r["area"] <= 0.5 * 60 * 90 for r in small)
    assert len(small) == sum(r["area"] <= 0.5 * 60 * 90 for r in recs)


def test_proposal_rank_puts_empty_masks_last():
    # A mask empty at the low threshold has stability 0/0 = NaN; a top-k cut must not pick it first.
    stability = stability_score(torch.full((3, 4, 4), -5.0).index_fill_(0, torch.tensor([0, 2]), 5.0), 0.0, 1.0)
    assert stability[1].isnan() and stability[0] == 1.0
    rank = proposal_rank(torch.tensor([0.5, 0.99, 0.1]), stability)
    assert torch.argsort(rank, descending=True, stable=True).tolist() == [0, 2, 1]
    assert rank[1] == float("-inf")


def test_presets():
    assert set(PRESETS) >= {"default", "data-engine", "edges", "proposals"}
    de = preset("data-engine")
    grids = build_all_layer_point_grids(de["points_per_side"], de["crop_n_layers"], de["crop_n_points_downscale_factor"])
    assert [int(len(g) ** 0.5) for g in grids] == [32, 16, 8]  # 2x2 and 4x4 crops with 16x16 / 8x8 grids
    assert de["min_mask_region_area"] == 100
    assert preset("edges")["points_per_side"] == 16 and preset("edges")["pred_iou_thresh"] == 0.0
    p = preset("proposals", box_nms_thresh=0.8)
    assert p["points_per_side"] == 64 and p["max_masks"] == 1000 and p["box_nms_thresh"] == 0.8
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")
