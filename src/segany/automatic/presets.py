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
"""

from __future__ import annotations

from typing import Any

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


def preset(name: str, **overrides: Any) -> dict[str, Any]:
    """Generator keyword arguments of preset ``name``, with ``overrides`` applied on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return {**PRESETS[name], **overrides}
