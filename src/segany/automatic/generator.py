"""SamAutomaticMaskGenerator: "segment everything" (paper section 4, fully automatic stage,
and appendix B).

Same constructor, semantics and output records as the official generator; the official
package is the test oracle (``tests/test_automatic_conformance.py``). The work is organised
so that nothing is computed for a mask that the filters are going to drop, which is where
the speed comes from, while every kept mask is computed exactly as the reference does:

1. the decoder's transformer runs for every grid point (the predicted IoU needs it), but the
   4x output upscaling and the hypernetwork heads run only for points with at least one
   output above ``pred_iou_thresh`` -- the IoU head does not look at the upscaled features;
2. masks failing the predicted-IoU filter are never upsampled (the reference upsamples all
   of them to full resolution first);
3. of those, masks whose stability score is certainly below ``stability_score_thresh`` are
   dropped before upsampling, by a sound bound computed from the low-res logits
   (:mod:`segany.automatic.stability_bound`); the others get the exact full-resolution score;
4. the full-resolution logits of the survivors are made in memory-bounded chunks, and the
   stability counts, the binary mask, its box and its run-length encoding are taken from
   each chunk and the chunk is freed;
5. RLEs are made in the full-image frame directly from crop-frame masks (no padding of every
   mask to the whole image), vectorised over a batch.

``stage_counts`` tells how many masks each stage kept in the last :meth:`generate` call.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..masks import (
    area_from_rle,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    coco_encode_rle,
    mask_to_rle,
    rle_to_mask,
)
from ..modeling import Sam
from ..modeling.cached_decoder import DECODE_CHUNK, cached_masks, final_tokens, transformer_layers
from ..modeling.decoder_cache import DecoderImageCache
from ..modeling.mask_upsampling import low_res_extent
from ..predictor import SamPredictor
from .batch_threads import map_in_threads, resolve_workers
from .filters import clean_mask, crop_nms_scores, is_box_near_crop_edge, nms, proposal_rank, stability_score
from .grid import build_all_layer_point_grids, generate_crop_boxes, grid_points_for_crop
from .stability_bound import Footprints, crop_footprints, may_pass_stability

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")

# Full-resolution float logits held at once while upsampling (bytes); bounds peak memory on
# very large images without slowing small ones.
UPSAMPLE_BUDGET_BYTES = 192 * 2**20

STAGES = ("candidates", "iou", "upsampled", "stability", "edge", "box_nms", "crop_nms", "final")
"""Keys of :attr:`SamAutomaticMaskGenerator.stage_counts`, in pipeline order: every
(point, output) pair; kept by the predicted-IoU filter; upsampled to full resolution (not
ruled out by the low-res stability bound); kept by the stability filter; not cut by a crop
edge; kept by box NMS within crops; kept by NMS across crops; records returned."""


@dataclass
class MaskSet:
    """Masks of one crop or image, as parallel fields (full-image frame)."""

    rles: list[dict[str, Any]]
    boxes: torch.Tensor  # Nx4 int64 XYXY
    iou_preds: torch.Tensor  # N float32
    points: torch.Tensor  # Nx2 float64, (x, y) pixels
    stability: torch.Tensor  # N float32
    crop_boxes: torch.Tensor  # Nx4 int64 XYXY

    @staticmethod
    def empty() -> MaskSet:
        return MaskSet(
            [],
            torch.zeros(0, 4, dtype=torch.int64),
            torch.zeros(0),
            torch.zeros(0, 2, dtype=torch.float64),
            torch.zeros(0),
            torch.zeros(0, 4, dtype=torch.int64),
        )

    def __len__(self) -> int:
        return len(self.rles)

    def select(self, idx: torch.Tensor) -> MaskSet:
        """Keep (and order by) ``idx``: int64 indices or a bool mask."""
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        ii = idx.tolist()
        return MaskSet(
            [self.rles[i] for i in ii],
            self.boxes[idx],
            self.iou_preds[idx],
            self.points[idx],
            self.stability[idx],
            self.crop_boxes[idx],
        )

    @staticmethod
    def cat(parts: list[MaskSet]) -> MaskSet:
        parts = [p for p in parts if len(p)]
        if not parts:
            return MaskSet.empty()
        return MaskSet(
            [r for p in parts for r in p.rles],
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.iou_preds for p in parts]),
            torch.cat([p.points for p in parts]),
            torch.cat([p.stability for p in parts]),
            torch.cat([p.crop_boxes for p in parts]),
        )


class SamAutomaticMaskGenerator:
    """Generate masks for a whole image from a grid of point prompts.

    Arguments are the official ones (see the official docstring or ``docs/automatic.md``),
    plus two from the paper that the official code lacks, both off by default:

    - ``max_mask_fraction``: drop masks covering more than this fraction of the image (the
      data engine dropped masks covering >= 95% of it as uninteresting);
    - ``max_masks``: keep at most this many masks, ranked by the mean of predicted IoU and
      stability score (the object-proposal setting of appendix D.3).

    and one of its own: ``batch_threads``, how many point batches are decoded at once, each
    on one intra-op thread (default None: PyTorch's thread count; 1 = one batch at a time
    on all threads, as before). It changes no result (:mod:`segany.automatic.batch_threads`).

    ``stage_counts`` (a dict keyed by :data:`STAGES`) holds how many masks each stage kept
    in the last ``generate`` call, summed over crops.
    """

    use_stability_bound: bool = True
    """Rule masks out by the low-res stability bound before upsampling them. It changes no
    result (the bound is sound); switching it off is for checking exactly that."""

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        max_mask_fraction: float | None = None,
        max_masks: int | None = None,
        batch_threads: int | None = None,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("exactly one of points_per_side or point_grids must be given")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
        if crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be >= 0, got {crop_n_layers}")
        if crop_n_points_downscale_factor < 1:
            raise ValueError(f"crop_n_points_downscale_factor must be >= 1, got {crop_n_points_downscale_factor}")
        if points_per_side is not None:
            if points_per_side < 1:
                raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
            if int(points_per_side / crop_n_points_downscale_factor**crop_n_layers) < 1:
                raise ValueError(
                    f"points_per_side={points_per_side} downscaled by {crop_n_points_downscale_factor} "
                    f"per layer leaves no points in crop layer {crop_n_layers}"
                )
            self.point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            assert point_grids is not None
            if len(point_grids) < crop_n_layers + 1:
                raise ValueError(
                    f"point_grids has {len(point_grids)} grids; crop_n_layers={crop_n_layers} needs {crop_n_layers + 1}"
                )
            self.point_grids = [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in point_grids]
        for name, value in (
            ("pred_iou_thresh", pred_iou_thresh),
            ("stability_score_thresh", stability_score_thresh),
            ("stability_score_offset", stability_score_offset),
            ("box_nms_thresh", box_nms_thresh),
            ("crop_nms_thresh", crop_nms_thresh),
            ("crop_overlap_ratio", crop_overlap_ratio),
        ):
            # NaN compares false with everything: it would silently drop every mask (or turn a
            # filter off through the "> 0.0" shortcuts), so it is refused like a wrong type
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if max_mask_fraction is not None and not 0 < max_mask_fraction <= 1:
            raise ValueError(f"max_mask_fraction must be in (0, 1], got {max_mask_fraction}")
        if max_masks is not None and max_masks < 1:
            raise ValueError(f"max_masks must be >= 1, got {max_masks}")
        resolve_workers(batch_threads)  # refuses a bad value now, not at the first generate()
        self.predictor = SamPredictor(model)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.max_mask_fraction = max_mask_fraction
        self.max_masks = max_masks
        self.batch_threads = batch_threads
        self.stage_counts: dict[str, int] = dict.fromkeys(STAGES, 0)
        self._footprints: dict[tuple[tuple[int, int], ...], Footprints] = {}

    @property
    def model(self) -> Sam:
        return self.predictor.model

    # ------------------------------------------------------------------ public API

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Masks of an HxWx3 uint8 RGB image, one record per mask:

        ``segmentation`` (HxW bool, or uncompressed / COCO RLE per ``output_mode``), ``area``
        (pixels), ``bbox`` (XYWH, pixel indices), ``predicted_iou``, ``point_coords``
        ([[x, y]], the prompt), ``stability_score``, ``crop_box`` (XYWH of the crop that
        produced the mask).
        """
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be an HxWx3 array, got shape {getattr(image, 'shape', None)}")
        data = self.generate_mask_set(image)
        return self.records(data)

    def generate_mask_set(self, image: np.ndarray) -> MaskSet:
        """All masks after filtering, NMS and cleanup, before formatting into records."""
        self.stage_counts = dict.fromkeys(STAGES, 0)
        self._footprints = {}
        orig_size = (int(image.shape[0]), int(image.shape[1]))
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        parts = [self._process_crop(image, box, layer, orig_size) for box, layer in zip(crop_boxes, layer_idxs)]
        data = MaskSet.cat(parts)
        if len(crop_boxes) > 1 and len(data):
            # Across crops, prefer masks from the most zoomed-in crop (smallest crop area).
            keep = nms(data.boxes.float(), crop_nms_scores(data.crop_boxes), self.crop_nms_thresh)
            data = data.select(keep)
        self.stage_counts["crop_nms"] = len(data)
        if self.min_mask_region_area > 0 and len(data):
            data = self.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        if self.max_mask_fraction is not None and len(data):
            limit = self.max_mask_fraction * orig_size[0] * orig_size[1]
            keep = torch.tensor([area_from_rle(r) <= limit for r in data.rles], dtype=torch.bool)
            data = data.select(keep)
        if self.max_masks is not None and len(data) > self.max_masks:
            rank = proposal_rank(data.iou_preds, data.stability)
            data = data.select(torch.argsort(rank, descending=True, stable=True)[: self.max_masks])
        self.stage_counts["final"] = len(data)
        return data

    def records(self, data: MaskSet) -> list[dict[str, Any]]:
        """Format a :class:`MaskSet` as the official list of records."""
        out = []
        for i, rle in enumerate(data.rles):
            if self.output_mode == "coco_rle":
                seg: Any = coco_encode_rle(rle)
            elif self.output_mode == "binary_mask":
                seg = rle_to_mask(rle)
            else:
                seg = rle
            out.append(
                {
                    "segmentation": seg,
                    "area": area_from_rle(rle),
                    "bbox": box_xyxy_to_xywh(data.boxes[i]).tolist(),
                    "predicted_iou": data.iou_preds[i].item(),
                    "point_coords": [data.points[i].tolist()],
                    "stability_score": data.stability[i].item(),
                    "crop_box": box_xyxy_to_xywh(data.crop_boxes[i]).tolist(),
                }
            )
        return out

    # ------------------------------------------------------------------ one crop

    def _process_crop(
        self, image: np.ndarray, crop_box: list[int], layer_idx: int, orig_size: tuple[int, int]
    ) -> MaskSet:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1, :]
        self.predictor.set_image(crop)
        crop_size = (int(crop.shape[0]), int(crop.shape[1]))
        points = grid_points_for_crop(self.point_grids[layer_idx], crop_box)
        prompt_encoder = self.model.prompt_encoder
        features = self.predictor.features
        cache = DecoderImageCache.build(
            self.model.mask_decoder, features + prompt_encoder.no_mask_dense(1), prompt_encoder.get_dense_pe()
        )
        batches = [points[s : s + self.points_per_batch] for s in range(0, len(points), self.points_per_batch)]
        workers = resolve_workers(self.batch_threads)
        results = map_in_threads(
            lambda batch: self._process_batch(cache, batch, crop_size, crop_box, orig_size, workers), batches, workers
        )
        self.predictor.reset_image()
        for _, counts in results:  # merged here: the batches may have run side by side
            for key, n in counts.items():
                self.stage_counts[key] += n
        data = MaskSet.cat([part for part, _ in results])
        if len(data):
            keep = nms(data.boxes.float(), data.iou_preds, self.box_nms_thresh)
            data = data.select(keep)
        self.stage_counts["box_nms"] += len(data)
        data.boxes = data.boxes + torch.tensor([[x0, y0, x0, y0]])
        data.points = data.points + torch.tensor([[x0, y0]])
        data.crop_boxes = torch.tensor([crop_box] * len(data), dtype=torch.int64).reshape(-1, 4)
        return data

    def _decode(
        self, cache: DecoderImageCache, points: np.ndarray, crop_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decoder on single-point prompts, through the exact cached path. Returns (iou_preds
        Bx3, prompt indices K whose masks were computed, low-res logits Kx3x256x256).

        The work is split where the filters allow: predicted IoUs first (the final attention
        for the IoU token alone, :func:`~segany.modeling.cached_decoder.final_tokens`), then the 4x
        upscaling and hypernetwork heads only for the prompts with an output above
        ``pred_iou_thresh`` (the IoU head does not look at the masks), and only for the
        low-res rows/columns that upsampling to this crop reads."""
        decoder = self.model.mask_decoder
        multimask = decoder.output_slice(True)
        coords = torch.as_tensor(self.predictor.transform.apply_coords(points, crop_size), device=self.predictor.device)
        labels = torch.ones(coords.shape[0], dtype=torch.int, device=coords.device)
        sparse, _ = self.model.prompt_encoder(points=(coords[:, None, :], labels[:, None]), boxes=None, masks=None)
        low_size = (4 * cache.grid[0], 4 * cache.grid[1])
        rows, cols = low_res_extent(self.predictor.input_size, low_size, self.model.img_size)
        ious, needed, lows = [], [], []
        ws = self.predictor._workspace
        for s in range(0, len(sparse), DECODE_CHUNK):  # small groups stay in the CPU caches
            # the predictor's scratch buffers: ``layers.keys`` is read only in this iteration
            # (``select`` copies), before the next group overwrites it
            layers = transformer_layers(decoder, cache, sparse[s : s + DECODE_CHUNK], ws=ws)
            # the IoU head reads the IoU token alone: the final attention for it only, and for
            # the other tokens of the prompts that pass the filter
            iou_preds = decoder.predict_iou(final_tokens(decoder, cache, layers, slice(0, 1), ws=ws), multimask)
            if self.pred_iou_thresh > 0.0:
                need = (iou_preds > self.pred_iou_thresh).any(dim=1).nonzero().flatten()
            else:
                need = torch.arange(len(iou_preds))
            if len(need):
                kept = layers.select(need)
                hs = final_tokens(decoder, cache, kept)
                lows.append(cached_masks(decoder, cache, hs, kept.keys, multimask, rows, cols))
            ious.append(iou_preds)
            needed.append(need + s)
        iou_all = torch.cat(ious)
        if not lows:
            return iou_all, torch.zeros(0, dtype=torch.long), torch.zeros(0, iou_all.shape[1], *low_size)
        return iou_all, torch.cat(needed), torch.cat(lows)

    def _process_batch(
        self,
        cache: DecoderImageCache,
        points: np.ndarray,
        crop_size: tuple[int, int],
        crop_box: list[int],
        orig_size: tuple[int, int],
        workers: int = 1,
    ) -> tuple[MaskSet, dict[str, int]]:
        """One batch of grid points -> its masks after the per-mask filters, and how many
        each stage kept. ``workers``: batches running at once (they share the upsampling's
        memory budget)."""
        iou_all, needed, low_res = self._decode(cache, points, crop_size)
        n_out = iou_all.shape[1]
        counts = dict.fromkeys(STAGES[: STAGES.index("edge") + 1], 0)  # the per-batch stages
        counts["candidates"] += iou_all.numel()
        # Flatten to one row per (prompt, output), prompt-major as the reference does.
        iou = iou_all[needed].flatten()
        pts = torch.as_tensor(points[needed.numpy()].repeat(n_out, axis=0))
        low = low_res.flatten(0, 1)
        if self.pred_iou_thresh > 0.0:
            keep = iou > self.pred_iou_thresh
            iou, pts, low = iou[keep], pts[keep], low[keep]
        counts["iou"] += len(iou)
        thr = self.model.mask_threshold
        if self.use_stability_bound and self.stability_score_thresh > 0.0 and len(iou):
            keep = may_pass_stability(
                low,
                self._stability_footprints(crop_size, (int(low.shape[-2]), int(low.shape[-1]))),
                thr,
                self.stability_score_offset,
                self.stability_score_thresh,
            )
            iou, pts, low = iou[keep], pts[keep], low[keep]
        counts["upsampled"] += len(iou)
        if len(iou) == 0:
            return MaskSet.empty(), counts
        h, w = crop_size
        per_mask = 4 * (h * w + self.model.img_size**2)
        chunk = max(1, UPSAMPLE_BUDGET_BYTES // workers // per_mask)
        parts: list[MaskSet] = []
        orig_h, orig_w = orig_size
        for s in range(0, len(iou), chunk):
            logits = self.model.postprocess_masks(low[s : s + chunk, None], self.predictor.input_size, crop_size)[:, 0]
            stab = stability_score(logits, thr, self.stability_score_offset)
            c_iou, c_pts = iou[s : s + chunk], pts[s : s + chunk]
            if self.stability_score_thresh > 0.0:
                keep = stab >= self.stability_score_thresh
                logits, stab, c_iou, c_pts = logits[keep], stab[keep], c_iou[keep], c_pts[keep]
            counts["stability"] += len(stab)
            masks = logits > thr
            del logits
            boxes = batched_mask_to_box(masks)
            near = is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
            if bool(near.any()):
                keep = ~near
                masks, boxes, stab, c_iou, c_pts = masks[keep], boxes[keep], stab[keep], c_iou[keep], c_pts[keep]
            counts["edge"] += len(masks)
            if len(masks) == 0:
                continue
            rles = mask_to_rle(masks, frame=orig_size, offset=(crop_box[0], crop_box[1]))
            parts.append(MaskSet(rles, boxes, c_iou, c_pts, stab, torch.zeros(len(rles), 4, dtype=torch.int64)))
        return MaskSet.cat(parts), counts

    def _stability_footprints(self, crop_size: tuple[int, int], low_size: tuple[int, int]) -> Footprints:
        """Footprints of the stability bound for the current crop (crops of one size share them)."""
        input_size = (int(self.predictor.input_size[0]), int(self.predictor.input_size[1]))
        key = (input_size, crop_size, low_size)
        if key not in self._footprints:
            self._footprints[key] = crop_footprints(input_size, crop_size, low_size, self.model.img_size)
        return self._footprints[key]

    # ------------------------------------------------------------------ cleanup

    @staticmethod
    def postprocess_small_regions(mask_data: MaskSet, min_area: int, nms_thresh: float) -> MaskSet:
        """Fill small holes and drop small islands (< ``min_area`` px) of every mask, then
        rerun box NMS preferring unchanged masks (a cleaned mask may now duplicate another)."""
        if len(mask_data) == 0:
            return mask_data
        changed_masks: dict[int, np.ndarray] = {}
        boxes = []
        scores = []
        for i, rle in enumerate(mask_data.rles):
            mask, changed = clean_mask(rle_to_mask(rle), min_area)
            if changed:
                changed_masks[i] = mask
                boxes.append(batched_mask_to_box(torch.from_numpy(mask)))
            else:
                boxes.append(mask_data.boxes[i])
            scores.append(0.0 if changed else 1.0)
        box_t = torch.stack(boxes)
        keep = nms(box_t.float(), torch.tensor(scores), nms_thresh)
        rles = list(mask_data.rles)
        new_boxes = mask_data.boxes.clone()
        for i in keep.tolist():
            if i in changed_masks:
                rles[i] = mask_to_rle(torch.from_numpy(changed_masks[i])[None])[0]
                new_boxes[i] = box_t[i]
        updated = MaskSet(
            rles, new_boxes, mask_data.iou_preds, mask_data.points, mask_data.stability, mask_data.crop_boxes
        )
        return updated.select(keep)
