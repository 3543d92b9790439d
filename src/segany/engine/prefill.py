"""Semi-automatic stage (paper section 4): pre-fill the confident masks, the annotator adds the rest.

The automatic mask generator runs with *high* confidence thresholds, so what it proposes
is usually right; the masks are stored as accepted with source ``prefilled`` and shown in
the page as editable (an edited one replaces the original in one transaction), which
lets annotators spend their time on the less prominent objects, as in the paper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..image_io import load_image
from ..masks import masks_to_coco_rle
from .store import ImageRow, Store

# High-confidence settings: fewer, surer masks than the fully automatic stage's defaults.
PREFILL_SETTINGS: dict[str, Any] = {
    "points_per_side": 16,
    "pred_iou_thresh": 0.92,
    "stability_score_thresh": 0.97,
    "min_mask_region_area": 100,
}


class PrefillUnavailable(RuntimeError):
    """The automatic mask generator is not part of this installation."""


def make_generator(model: Any, **overrides: Any) -> Any:
    try:
        from ..automatic import SamAutomaticMaskGenerator
    except ImportError as exc:
        raise PrefillUnavailable(
            "pre-fill needs segany.automatic.SamAutomaticMaskGenerator, which this installation lacks"
        ) from exc
    return SamAutomaticMaskGenerator(model, **{**PREFILL_SETTINGS, **overrides})


def prefill_image(
    store: Store,
    image: ImageRow,
    path: str | Path,
    model: Any,
    *,
    annotator: str,
    model_version: str,
    generator: Any = None,
    source: str = "prefilled",
    max_pixels: int | None = None,
) -> list[int]:
    """Run the generator on one image and store its masks; returns the new mask ids.

    Masks already prefilled for this image are not added twice (the stage is idempotent).
    The generator runs on the model's own device. ``max_pixels`` refuses (``ImageError``)
    an image whose header announces more pixels, before decoding it.
    """
    existing = [m for m in store.masks(image.id) if m.source == source]
    if existing:
        return []
    generator = generator or make_generator(model)
    image_array = load_image(path) if max_pixels is None else load_image(path, max_pixels)
    records = generator.generate(image_array)
    ids = []
    for rec in records:
        seg = rec["segmentation"]
        if isinstance(seg, dict):
            rle = {"size": [int(v) for v in seg["size"]], "counts": seg["counts"]}
            if not isinstance(rle["counts"], str):
                from ..masks import coco_encode_rle

                rle = coco_encode_rle(rle)
        else:
            rle = masks_to_coco_rle(np.asarray(seg, dtype=bool)[None])[0]
        ids.append(
            store.save_mask(
                image.id,
                rle,
                source=source,
                annotator=annotator,
                model_version=model_version,
                seconds=0.0,
                score=float(rec.get("predicted_iou", 0.0)),
            )
        )
    return ids
