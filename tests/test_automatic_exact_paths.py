"""The generator's exact fast paths give exactly what the plain computation gives.

- ``count_true`` (the stability score's pixel counts) equals ``sum(dtype=int32)``;
- the low-res stability bound is sound: for real decoder logits of the shipped default model
  upsampled to several frames (upscaling and downscaling, integer and fractional factors),
  its count bounds enclose the full-resolution counts, so it never rules out a mask the
  stability filter would keep;
- the generator returns identical records with the bound on and off, on a real photo with
  the default model, at thresholds where masks survive and the bound rules some out.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segany import SamAutomaticMaskGenerator, SamPredictor
from segany.automatic.filters import count_true, stability_score
from segany.automatic.generator import STAGES
from segany.automatic.grid import build_point_grid
from segany.automatic.stability_bound import crop_footprints, may_pass_stability, stability_count_bounds


@pytest.fixture(scope="module")
def model(trained_default_model):
    return trained_default_model


@pytest.fixture(scope="module")
def photo(coco_val_photos) -> np.ndarray:
    return coco_val_photos[0]


@pytest.mark.parametrize(
    "shape", [(5, 48, 64), (3, 7, 13), (2, 1, 1), (0, 4, 4), (4, 3, 0), (2, 3, 33, 77), (1, 300, 451)]
)
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_count_true_equals_sum(shape, density):
    g = torch.Generator().manual_seed(hash((shape, density)) % 2**31)
    mask = torch.rand(shape, generator=g) < density
    got = count_true(mask)
    want = mask.sum(dim=(-1, -2), dtype=torch.int32)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want)
    # non-contiguous input (the generator passes fresh comparisons, but any mask must work)
    if mask.ndim == 3 and mask.numel():
        assert torch.equal(count_true(mask.transpose(1, 2)), mask.transpose(1, 2).sum(dim=(-1, -2), dtype=torch.int32))


def test_count_true_many_groups():
    """More than 127 int64 words per mask (the grouped path) and a remainder group."""
    mask = torch.ones(2, 129, 1000, dtype=torch.bool)
    mask[1, ::3] = False
    assert count_true(mask).tolist() == mask.sum(dim=(-1, -2)).tolist()


@pytest.fixture(scope="module")
def low_res(model, photo) -> torch.Tensor:
    """Low-res logits (N x 256 x 256) of the default model for a 3x3 grid on the photo."""
    predictor = SamPredictor(model)
    predictor.set_image(photo)
    points = build_point_grid(3) * np.array([[photo.shape[1], photo.shape[0]]])
    coords = torch.as_tensor(predictor.transform.apply_coords(points, photo.shape[:2]))
    labels = torch.ones(len(coords), 1, dtype=torch.int)
    with torch.no_grad():
        _, _, low = predictor.predict_torch(coords[:, None], labels, multimask_output=True, return_logits=True)
    return low.flatten(0, 1)


# (input frame size, original size): landscape photo, SA-1B-sized (fractional upscaling),
# portrait, and a small crop (stage 2 downscales)
FRAMES = [((384, 512), (480, 640)), ((341, 512), (1500, 2250)), ((512, 299), (917, 536)), ((200, 512), (120, 307))]


@pytest.mark.parametrize("input_size,original_size", FRAMES)
@pytest.mark.parametrize("gain,offset", [(1.0, 1.0), (8.0, 1.0), (8.0, 0.25)])
def test_stability_bound_encloses_full_resolution_counts(model, low_res, input_size, original_size, gain, offset):
    low = low_res * gain  # the gain gives steep logits, where many masks pass the filter
    if original_size[0] * original_size[1] > 10**6:
        low = low[::4]  # keep the test fast on the big frame
    full = model.postprocess_masks(low[:, None], input_size, original_size)[:, 0]
    hi = (full > offset).sum(dim=(-1, -2)).double()
    lo = (full > -offset).sum(dim=(-1, -2)).double()
    fp = crop_footprints(input_size, original_size, tuple(low.shape[-2:]), model.img_size)
    hi_up, lo_low = stability_count_bounds(low, fp, model.mask_threshold, offset)
    assert (hi_up >= hi).all() and (lo_low <= lo).all()
    assert (lo_low > 0).any(), "bound uninformative: no mask has a positive lower count"
    score = stability_score(full, model.mask_threshold, offset)
    for thresh in (0.05, 0.5, 0.95):
        may = may_pass_stability(low, fp, model.mask_threshold, offset, thresh)
        assert may[score >= thresh].all(), "the bound ruled out a mask the stability filter keeps"


@pytest.mark.parametrize(
    "points_per_side,crop_n_layers,stability,offset",
    [(5, 0, 0.05, 1.0), (4, 1, 0.05, 1.0), (5, 0, 0.5, 0.25)],
    ids=["whole-image", "crops", "small-offset"],
)
def test_generator_records_identical_with_and_without_bound(
    model, photo, points_per_side, crop_n_layers, stability, offset
):
    kwargs = dict(
        points_per_side=points_per_side,
        crop_n_layers=crop_n_layers,
        crop_n_points_downscale_factor=2,
        pred_iou_thresh=0.2,
        stability_score_thresh=stability,
        stability_score_offset=offset,
        output_mode="uncompressed_rle",
    )
    fast = SamAutomaticMaskGenerator(model, **kwargs)
    plain = SamAutomaticMaskGenerator(model, **kwargs)
    plain.use_stability_bound = False
    got, want = fast.generate(photo), plain.generate(photo)
    assert len(want) > 0, "thresholds too strict: no mask kept"
    assert got == want
    c_fast, c_plain = fast.stage_counts, plain.stage_counts
    assert c_plain["upsampled"] == c_plain["iou"]
    assert c_fast["upsampled"] < c_fast["iou"], "the bound ruled nothing out: the test proves nothing"
    assert {k: v for k, v in c_fast.items() if k != "upsampled"} == {
        k: v for k, v in c_plain.items() if k != "upsampled"
    }
    counts = [c_fast[k] for k in STAGES]
    assert counts == sorted(counts, reverse=True) and c_fast["final"] == len(got)
