"""Point batches decoded side by side (``batch_threads``) change no result.

The generator with several batches at once, each on one intra-op thread, must return the
records and stage counts of the one-batch-at-a-time run, on a real photo with the shipped
default model; the helper must keep results in order, restore the caller's thread count,
carry grad mode into its workers and raise their errors.
"""

from __future__ import annotations

import threading

import pytest
import torch

from segany import SamAutomaticMaskGenerator
from segany.automatic.batch_threads import map_in_threads, resolve_workers


@pytest.mark.parametrize("crop_n_layers", [0, 1], ids=["whole-image", "crops"])
def test_records_identical_with_batches_side_by_side(trained_default_model, coco_val_photos, crop_n_layers):
    model, photo = trained_default_model, coco_val_photos[1]
    kwargs = dict(
        points_per_side=8,
        points_per_batch=16,  # several batches per crop, so several run at once
        crop_n_layers=crop_n_layers,
        crop_n_points_downscale_factor=2,
        pred_iou_thresh=0.2,
        stability_score_thresh=0.05,
        output_mode="uncompressed_rle",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        serial = SamAutomaticMaskGenerator(model, batch_threads=1, **kwargs)
        side = SamAutomaticMaskGenerator(model, batch_threads=3, **kwargs)
        auto = SamAutomaticMaskGenerator(model, **kwargs)  # None: one batch per intra-op thread
        want = serial.generate(photo)
        got = side.generate(photo)
        assert torch.get_num_threads() == 2, "the caller's thread count was not restored"
        got_auto = auto.generate(photo)
    finally:
        torch.set_num_threads(threads)
    assert len(want) > 0, "thresholds too strict: no mask kept"
    assert serial.stage_counts["candidates"] > 16 * 3, "one batch only: the test proves nothing"
    for records in (got, got_auto):
        assert len(records) == len(want)
        for g, w in zip(records, want):
            assert g["segmentation"] == w["segmentation"] and g["bbox"] == w["bbox"]
            assert g["point_coords"] == w["point_coords"] and g["crop_box"] == w["crop_box"]
            # one intra-op thread vs two may round a matmul differently in the last bit
            assert g["predicted_iou"] == pytest.approx(w["predicted_iou"], abs=1e-5)
            # the stability score is a ratio of pixel counts at logit +-offset: a last-bit change
            # of a logit sitting on either threshold moves one pixel, i.e. the score by at most
            # 1 / (pixels above -offset) <= 1 / area. Two such pixels are allowed, not more.
            assert g["stability_score"] == pytest.approx(w["stability_score"], abs=2.0 / w["area"] + 1e-6)
    assert side.stage_counts == serial.stage_counts == auto.stage_counts


def test_map_in_threads_keeps_order_and_uses_one_thread_per_worker():
    seen: dict[int, int] = {}

    def work(x: int) -> int:
        seen[threading.get_ident()] = torch.get_num_threads()
        return x * x

    before = torch.get_num_threads()
    assert map_in_threads(work, range(20), workers=2) == [x * x for x in range(20)]
    assert torch.get_num_threads() == before
    assert set(seen.values()) == {1}
    assert threading.get_ident() not in seen  # the caller's thread only waits


def test_map_in_threads_carries_grad_mode_and_raises():
    with torch.no_grad():
        modes = map_in_threads(lambda _: torch.is_grad_enabled(), range(4), workers=2)
    assert modes == [False] * 4

    def fail(x: int) -> int:
        if x == 3:
            raise RuntimeError("batch 3 failed")
        return x

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="batch 3 failed"):
        map_in_threads(fail, range(6), workers=2)
    assert torch.get_num_threads() == before


def test_serial_below_two_workers_or_items():
    ident = threading.get_ident()
    assert map_in_threads(lambda x: threading.get_ident() == ident, range(3), workers=1) == [True] * 3
    assert map_in_threads(lambda x: threading.get_ident() == ident, [0], workers=4) == [True]


def test_resolve_workers():
    assert resolve_workers(3) == 3
    assert resolve_workers(None) == max(1, torch.get_num_threads())
    for bad in (0, -2):
        with pytest.raises(ValueError, match="batch_threads"):
            resolve_workers(bad)
    with pytest.raises(ValueError, match="batch_threads"):
        SamAutomaticMaskGenerator(torch.nn.Module(), batch_threads=0)  # type: ignore[arg-type]
