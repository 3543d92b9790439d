"""Named settings of the automatic generator for the paper's uses of it.

- ``default``: the official defaults (a 32x32 grid on the whole image).
- ``data-engine``: the fully automatic stage that made SA-1B (section 4, appendix B): a
  32x32 grid on the image plus 2x2 and 4x4 overlapping zoomed-in crops with 16x16 and 8x8
  grids, IoU 0.88 / stability 0.95 filters, NMS, masks covering >= 95% of the image dropped
  and 100 px holes/islands cleaned up.
- ``edges``: zero-shot edge detection (section 7.2, appendix D.2): a 16x16 grid, no IoU or
  stability filtering, only NMS removes redundant masks.
- ``proposals``: zero-shot object proposals (section 7.3, appendix D.3): a 64x64 grid, no
  IoU/stability filtering, NMS at 0.9, at most 1000 masks ranked by the mean of predicted
  IoU and stability.
- ``segany-default``: the official settings with the three filter thresholds
  (``pred_iou_thresh``, ``stability_score_offset``, ``stability_score_thresh``) calibrated
  for the embedded default model. Why: that small model predicts IoUs below ~0.35 and its
  logits rarely pass +1, so the official filters (0.88 / 0.95 at offset 1.0, tuned for
  SAM ViT-H) keep no mask at all. The values live in ``segany_default_thresholds.json``
  beside this module (with how they were measured), written by
  ``scripts/calibrate_auto.py runs/sa1b_train/*`` on held-out *training* images only (best
  F1 of masks matching ground truth at IoU >= 0.5); rerunning that command after retraining
  updates the preset. ``segany auto`` uses it for the embedded default model when no preset
  and no threshold is given; the generator's own defaults stay the official ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..file_hash import file_sha256

DEFAULT_MODEL_PRESET = "segany-default"
DEFAULT_MODEL_THRESHOLDS_FILE = Path(__file__).with_name("segany_default_thresholds.json")
THRESHOLD_KEYS = ("pred_iou_thresh", "stability_score_offset", "stability_score_thresh")

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "data-engine": {
        "points_per_side": 32,
        "crop_n_layers": 2,
        "crop_n_points_downscale_factor": 2,
        "pred_iou_thresh": 0.88,
        "stability_score_thresh": 0.95,
        "box_nms_thresh": 0.7,
        "crop_nms_thresh": 0.7,
        "min_mask_region_area": 100,
        "max_mask_fraction": 0.95,
    },
    "edges": {
        "points_per_side": 16,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 0.7,
        "crop_n_layers": 0,
    },
    "proposals": {
        "points_per_side": 64,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 0.9,
        "crop_n_layers": 0,
        "max_masks": 1000,
    },
}


def load_thresholds(path: str | Path = DEFAULT_MODEL_THRESHOLDS_FILE) -> dict[str, Any] | None:
    """The calibration file ``scripts/calibrate_auto.py`` writes: the three thresholds plus
    ``calibration`` (how they were measured); None when there is no such file.

    A file that exists but lacks a threshold, or holds a non-finite or out-of-range one, is
    an error naming it: silently falling back would bring back "no masks"."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        values = {key: float(data[key]) for key in THRESHOLD_KEYS}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a threshold calibration file ({exc!r})") from None
    if not (
        all(math.isfinite(v) for v in values.values())
        and values["pred_iou_thresh"] <= 1.0
        and values["stability_score_offset"] > 0.0
        and 0.0 <= values["stability_score_thresh"] <= 1.0
    ):
        raise ValueError(f"{path}: thresholds out of range: {values}")
    return {**data, **values}


def calibrated_for(weights: str | Path, path: str | Path = DEFAULT_MODEL_THRESHOLDS_FILE) -> bool:
    """Whether the calibration file was measured on exactly this weights file (its SHA-256).

    Why: the default weights are retrained from time to time, and thresholds measured on
    older weights may again keep nothing, or everything; callers say so and how to rerun."""
    data = load_thresholds(path)
    if data is None:
        return False
    return data.get("calibration", {}).get("weights_file_sha256") == file_sha256(weights)  # the file: checked without loading the model


def _default_model_preset() -> dict[str, Any] | None:
    data = load_thresholds()
    return None if data is None else {key: data[key] for key in THRESHOLD_KEYS}


if (_calibrated := _default_model_preset()) is not None:
    PRESETS[DEFAULT_MODEL_PRESET] = _calibrated


def preset(name: str, **overrides: Any) -> dict[str, Any]:
    """Generator keyword arguments of preset ``name``, with ``overrides`` applied on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return {**PRESETS[name], **overrides}
