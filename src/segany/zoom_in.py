"""Zoom-in refinement of interactive clicks (RITM's inference trick, Sofiiuk et al. 2022).

Why: the decoder's low-resolution logits cover the whole (padded) image, so an object that
fills a fifth of a photo gets a few dozen logit cells across, and its edges are as coarse as
the embedding grid; a small object gets only a handful. After the first click the object's
extent is known, so later clicks can be answered on a crop around it: the crop is resized to
the encoder's full input, which gives the object several times the resolution, at the price
of one encoder pass on the crop. That pass is kept and reused while the object's box stays
put (box IoU with the crop's box >= ``recompute_iou``), so an object usually costs one or two
crop encodings over all its clicks.

Per object (see :class:`ZoomTrack`) the canonical state is the current mask's logits at full
image resolution. A click then:

1. takes the box of the current mask plus the positive clicks, expanded ``expansion`` times
   about its centre and at least ``min_crop`` pixels on each side, clipped to the image;
2. re-encodes that crop when the box has moved too far from the crop in use;
3. decodes the clicks that fall in the crop, with the current logits resampled into the
   crop's input frame as the mask prompt (the paper's protocol feeds the previous mask back);
4. pastes the crop's full-resolution logits into the image's, leaving the rest unchanged
   (outside the crop the current mask is empty by construction).

The first ``skip_clicks`` clicks are answered on the whole image as usual (``predict``'s
three ambiguity-aware masks need the whole context). This changes results, so it is opt-in:
``segany eval points --zoom-in`` and ``segany predict --zoom-in``; docs/training.md has its
measured effect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .modeling.mask_upsampling import upsample_low_res_banded
from .predictor import ImageState, SamPredictor

PAD_LOGIT = -10.0
"""Mask-prompt value in the padding of the crop's input frame: what the models predict there
themselves (about -8 to -11 on the GrabCut photos)."""


@dataclass(frozen=True)
class ZoomInConfig:
    """When and how far to zoom.

    RITM zooms from the second click on crops 1.4x the object's box, at least 200 px. With
    segany's default model that lost 5 points of mIoU at clicks 2 and 3 on held-out *train*
    photos (41 images, 229 objects; docs/evaluation.md): it segments less well when an object
    fills most of its input. These defaults were the best of the settings tried there: crops
    2.5x the box and at least a third of the image (so large objects are hardly zoomed), from
    the third click.
    """

    expansion: float = 2.5
    min_crop: int = 200
    skip_clicks: int = 2
    recompute_iou: float = 0.5
    min_crop_fraction: float = 0.33  # crop side at least this fraction of the image's longer side

    def __post_init__(self) -> None:
        if not self.expansion >= 1.0:
            raise ValueError(f"zoom-in expansion must be >= 1, got {self.expansion}")
        if self.min_crop < 1:
            raise ValueError(f"zoom-in min_crop must be >= 1 pixel, got {self.min_crop}")
        if self.skip_clicks < 0:
            raise ValueError(f"zoom-in skip_clicks must be >= 0, got {self.skip_clicks}")
        if not 0.0 <= self.recompute_iou <= 1.0:
            raise ValueError(f"zoom-in recompute_iou must be in [0, 1], got {self.recompute_iou}")
        if not 0.0 <= self.min_crop_fraction <= 1.0:
            raise ValueError(f"zoom-in min_crop_fraction must be in [0, 1], got {self.min_crop_fraction}")

    def min_side(self, height: int, width: int) -> float:
        """The smallest crop side for an image of this size, in pixels."""
        return max(float(self.min_crop), self.min_crop_fraction * max(height, width))


BOX_ZOOM = ZoomInConfig(expansion=2.5, min_crop=64, min_crop_fraction=0.33, skip_clicks=0)
"""Crops for box prompts, chosen on held-out *train* photos (229 objects, docs/training.md):
box mIoU 54.4 on the whole image, 57.6 on these crops (small objects 51.8 -> 59.7). Tighter
crops were worse (1.4x: 38.4): the default model segments less well when an object fills
most of its input."""


@dataclass
class ZoomTrack:
    """One object's zoom state: its current logits and the crop in use."""

    logits: torch.Tensor  # HxW float32 logits of the current mask, full image resolution
    box: tuple[int, int, int, int] | None = None  # crop in use, x0, y0, x1, y1 (exclusive ends)
    state: ImageState | None = None  # the crop's embedding
    encodes: int = 0  # crop encoder passes so far (cost accounting)


def object_box(
    mask: np.ndarray, points: np.ndarray, labels: np.ndarray, config: ZoomInConfig
) -> tuple[int, int, int, int]:
    """The crop for a mask and its clicks: bounding box of the mask and the positive clicks,
    expanded about its centre, at least :meth:`ZoomInConfig.min_side` a side, clipped to the image.

    Returns x0, y0, x1, y1 with exclusive ends.
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    pos = points[labels == 1] if len(points) else np.zeros((0, 2))
    xs = np.concatenate([xs.astype(np.float64), pos[:, 0]])
    ys = np.concatenate([ys.astype(np.float64), pos[:, 1]])
    if len(xs) == 0:  # nothing to zoom on: the whole image
        return 0, 0, w, h
    return expand_box((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), (h, w), config)


def expand_box(
    extent: tuple[float, float, float, float], size: tuple[int, int], config: ZoomInConfig
) -> tuple[int, int, int, int]:
    """An x0, y0, x1, y1 extent (exclusive ends) expanded about its centre, at least
    :meth:`ZoomInConfig.min_side` a side, clipped to an image of ``size`` (h, w)."""
    h, w = size
    x0, y0, x1, y1 = (float(v) for v in extent)
    least = config.min_side(h, w)
    cx0, cx1 = _span((x0 + x1) / 2, max((x1 - x0) * config.expansion, least), w)
    cy0, cy1 = _span((y0 + y1) / 2, max((y1 - y0) * config.expansion, least), h)
    return cx0, cy0, cx1, cy1


def _span(centre: float, size: float, limit: int) -> tuple[int, int]:
    """An interval of ``size`` about ``centre``, shifted (not shrunk) to stay inside [0, limit)."""
    size = min(size, limit)
    lo = centre - size / 2
    lo = min(max(lo, 0.0), limit - size)
    a, b = int(np.floor(lo)), int(np.ceil(lo + size))
    return max(a, 0), min(b, limit)


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two x0, y0, x1, y1 boxes (exclusive ends)."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class ZoomIn:
    """Answers an object's later clicks on a crop around it (see the module docstring).

    Args:
        predictor: a predictor whose current image is the whole image; it stays current
            (crops are encoded with :meth:`SamPredictor.embed`, beside it).
        config: the zoom settings.
    """

    def __init__(self, predictor: SamPredictor, config: ZoomInConfig | None = None) -> None:
        self.predictor = predictor
        self.config = config if config is not None else ZoomInConfig()

    def track(self, low_res: torch.Tensor) -> ZoomTrack:
        """A track from a whole-image prediction's 1x256x256 (or 256x256) low-res logits."""
        p = self.predictor
        low = low_res.reshape(1, 1, *low_res.shape[-2:]).float()
        full = upsample_low_res_banded(low, p.input_size, p.original_size, p.model.img_size)
        return ZoomTrack(logits=full[0, 0].cpu())

    def applies(self, clicks: int) -> bool:
        """Whether the ``clicks``-th click (1-based) is answered on a crop."""
        return clicks > self.config.skip_clicks

    @torch.no_grad()
    def click(
        self, image: np.ndarray, track: ZoomTrack, points: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """Decode all of an object's clicks so far on its crop and update ``track``.

        Args:
            image: the whole HxWx3 uint8 image (the predictor's current one).
            track: the object's state, updated in place.
            points: Kx2 (x, y) clicks in image pixels, all of them so far.
            labels: K labels, 1 foreground, 0 background.
        Returns:
            (HxW bool mask, the decoder's predicted IoU).
        """
        p = self.predictor
        cfg = self.config
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(labels).reshape(-1)
        current = (track.logits > p.model.mask_threshold).numpy()
        box = object_box(current, points, labels, cfg)
        if track.box is None or box_iou(box, track.box) < cfg.recompute_iou:
            x0, y0, x1, y1 = box
            track.state = p.embed(np.ascontiguousarray(image[y0:y1, x0:x1]))
            track.box = box
            track.encodes += 1
        assert track.state is not None
        x0, y0, x1, y1 = track.box
        state = track.state
        # clicks outside the crop are background clicks on what is background there anyway
        inside = (points[:, 0] >= x0) & (points[:, 0] < x1) & (points[:, 1] >= y0) & (points[:, 1] < y1)
        local = points[inside] - np.array([x0, y0], dtype=np.float64)
        coords = p.transform.apply_coords(local, state.original_size)
        dev = p.device
        pts = torch.as_tensor(coords[None], dtype=torch.float, device=dev)
        lab = torch.as_tensor(labels[inside][None], dtype=torch.int, device=dev)
        mask_in = self._mask_prompt(track.logits[y0:y1, x0:x1], state).to(dev)
        crop_logits, iou, _ = p.predict_torch_on(state, pts, lab, mask_input=mask_in, multimask_output=False,
                                                 return_logits=True)
        track.logits[y0:y1, x0:x1] = crop_logits[0, 0].float().cpu()
        return (track.logits > p.model.mask_threshold).numpy(), float(iou[0, 0])

    @torch.no_grad()
    def box(self, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float, ZoomTrack]:
        """A box prompt answered on a crop around the box (expanded like an object's box).

        Args:
            image: the whole HxWx3 uint8 image.
            box: x0, y0, x1, y1 in image pixels.
        Returns:
            (HxW bool mask, the decoder's predicted IoU, the object's track: later clicks on
            it go through :meth:`click`).
        """
        p = self.predictor
        h, w = image.shape[:2]
        b = np.asarray(box, dtype=np.float64).reshape(4)
        # (the box's last row and column are inclusive, as SAM's boxes from masks)
        crop = expand_box((b[0], b[1], b[2] + 1, b[3] + 1), (h, w), self.config)
        x0, y0, x1, y1 = crop
        state = p.embed(np.ascontiguousarray(image[y0:y1, x0:x1]))
        local = (b.reshape(2, 2) - np.array([x0, y0], dtype=np.float64)).reshape(1, 4)
        box_t = torch.as_tensor(p.transform.apply_boxes(local, state.original_size), dtype=torch.float,
                                device=p.device)
        crop_logits, iou, _ = p.predict_torch_on(state, None, None, boxes=box_t, multimask_output=False,
                                                 return_logits=True)
        full = torch.full((h, w), PAD_LOGIT, dtype=torch.float)
        full[y0:y1, x0:x1] = crop_logits[0, 0].float().cpu()
        track = ZoomTrack(logits=full, box=crop, state=state, encodes=1)
        return (full > p.model.mask_threshold).numpy(), float(iou[0, 0]), track

    def _mask_prompt(self, crop_logits: torch.Tensor, state: ImageState) -> torch.Tensor:
        """Crop logits -> the decoder's 1x1xLxL mask prompt in the crop's padded input frame."""
        p = self.predictor
        side = p.model.prompt_encoder.mask_input_size[0]
        scale = side / p.model.img_size
        ih, iw = state.input_size
        lh, lw = max(1, round(ih * scale)), max(1, round(iw * scale))
        # plain bilinear: the logits are smooth already (themselves upsampled), and on a whole-image
        # crop it returns the original low-res logits more closely than an antialiased shrink
        # (mean |difference| 0.040 vs 0.057 on a coco photo)
        low = F.interpolate(crop_logits[None, None].float(), size=(lh, lw), mode="bilinear", align_corners=False)
        out = torch.full((1, 1, side, side), PAD_LOGIT, dtype=torch.float)
        out[..., :lh, :lw] = low
        return out
