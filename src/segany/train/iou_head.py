"""Refit the IoU head on whole-image decodes of the train splits, everything else frozen.

Why: for a single click the predictor returns three masks, and callers (and every eval's
"top" track) keep the one the IoU head scores highest. The default model's head ranks them
poorly: on the held-out train images its pick scores 0.39 IoU where the best of the three
scores 0.48, and on GrabCut the gap is 20 points (mIoU@1 36.7 against 56.4 for the oracle).
Training sees the head only on 256 px crops (a 32x32 grid), next to a mask loss 21 times
its weight; at inference it reads whole 512 px squares (64x64). Refitting the head alone, on
the features the frozen model produces at inference, costs forward passes only (no
backward through the decoder): the whole decoder, encoder and prompt encoder keep their
weights, so every mask stays exactly what it was and only the scores (and so the pick and
the automatic generator's IoU filter) change.

The samples: whole images of the training folders (no augmentation, longest side = the
input size), up to :data:`SAMPLE_MASKS` masks each, and three first prompts per mask: a point
uniform in the mask (the training prompt), the mask's centre (the eval protocol's first
click) and a noisy box. Each decode returns all four outputs (the single-mask one and the
three multimask ones); each output's actual IoU with the mask, counted inside the image
(the padding of the square is never shown), is the regression target of its score.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.crops import CropDataset
from ..eval.clicks import center_click
from ..masks import mask_iou as binary_mask_iou
from ..modeling.sam import Sam
from .losses import downsample_targets
from .prompts import PromptConfig, embed_prompt_tokens, first_prompts

PROMPT_KINDS = ("point", "centre", "box")
SAMPLE_MASKS = 8  # masks per image in the samples (:func:`whole_images` ``max_masks``)


@dataclass
class IoUSamples:
    """``features`` NxC (the IoU token after the decoder), ``actual`` NxM (each output's IoU
    with its mask), ``kind`` N (index into :data:`PROMPT_KINDS`), ``image`` N (dataset index)."""

    features: torch.Tensor
    actual: torch.Tensor
    kind: torch.Tensor
    image: torch.Tensor

    def __len__(self) -> int:
        return len(self.features)

    def subset(self, keep: torch.Tensor) -> IoUSamples:
        return IoUSamples(self.features[keep], self.actual[keep], self.kind[keep], self.image[keep])

    def state(self) -> dict[str, torch.Tensor]:
        return {"features": self.features, "actual": self.actual, "kind": self.kind, "image": self.image}

    @classmethod
    def cat(cls, parts: list[IoUSamples]) -> IoUSamples:
        return cls(**{name: torch.cat([p.state()[name] for p in parts]) for name in parts[0].state()})


def decode_all_outputs(sam: Sam, embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoder's four outputs for M prompts on one embedding (1xCxhxw), no mask prompt:
    (low-res logits Mx4xHxW, predicted IoUs Mx4, the IoU head's input features MxC).

    :meth:`MaskDecoder.predict_masks` with every mask token selected, its transformer
    outputs kept so the IoU head's input can be returned."""
    decoder = sam.mask_decoder
    sparse = embed_prompt_tokens(sam.prompt_encoder, coords, labels)
    dense = sam.prompt_encoder.no_mask_dense(1, tuple(embedding.shape[-2:]))
    hs, image = decoder.run_transformer(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense)
    features = hs[:, 0, :]
    return decoder.mask_logits(hs, image), decoder.iou_prediction_head(features), features


@torch.no_grad()
def collect_samples(
    sam: Sam,
    dataset: CropDataset,
    indices: list[int] | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> IoUSamples:
    """IoU-head training samples from the images ``indices`` of ``dataset`` (default: all),
    three prompt kinds per mask (:data:`PROMPT_KINDS`). Seeded per image, so any subset or
    order of images gives the same samples for each image."""
    was_training = sam.training
    sam.eval()
    parts: list[IoUSamples] = []
    try:
        for k in range(len(dataset)) if indices is None else indices:
            sample = dataset.load(k, np.random.default_rng([seed, k]))
            if len(sample.masks) > 0:
                parts.append(_image_samples(sam, sample, k, torch.Generator().manual_seed(seed * 100_003 + k)))
            if progress is not None:
                progress(1)
    finally:
        sam.train(was_training)
    if not parts:
        raise ValueError("no masks in the chosen images: nothing to fit the IoU head on")
    return IoUSamples.cat(parts)


def _image_samples(sam: Sam, sample, index: int, gen: torch.Generator) -> IoUSamples:
    device = sam.device
    gt = sample.masks
    m, side = len(gt), gt.shape[-1]
    embedding = sam.image_encoder(sample.normalised(sam.pixel_mean, sam.pixel_std, device)[None])
    sizes = torch.full((m, 2), side, dtype=torch.long)
    point_c, point_l = first_prompts(gt, sizes, PromptConfig(box_prob=0.0), gen, sam.img_size)
    box_c, box_l = first_prompts(gt, sizes, PromptConfig(box_prob=1.0), gen, sam.img_size)
    valid = sample.valid.numpy()
    centre_c = torch.zeros_like(point_c)
    centre_c[:, 0] = torch.tensor([center_click(g.numpy() & valid) for g in gt], dtype=centre_c.dtype)
    prompts = {"point": (point_c, point_l), "centre": (centre_c, point_l), "box": (box_c, box_l)}
    parts = []
    target = inside = None
    for kind, (coords, labels) in prompts.items():
        logits, _, features = decode_all_outputs(sam, embedding, coords.to(device), labels.to(device))
        if target is None:
            size = logits.shape[-1]
            target = downsample_targets(gt, size).to(device)
            inside = downsample_targets(sample.valid[None], size)[0].to(device)
        actual = binary_mask_iou(logits > sam.mask_threshold, target[:, None], ignore=~inside, pairwise=False)
        parts.append(IoUSamples(features.float().cpu(), actual.float().cpu(),
                                torch.full((m,), PROMPT_KINDS.index(kind)), torch.full((m,), index)))
    return IoUSamples.cat(parts)


def top_pick_iou(scores: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """Per sample, the actual IoU of the multimask output (outputs 1-3) with the best score:
    what a caller keeping the predictor's top mask gets."""
    pick = scores[:, 1:].argmax(dim=1) + 1
    return actual.gather(1, pick[:, None])[:, 0]


def head_report(head: torch.nn.Module, samples: IoUSamples) -> dict[str, float]:
    """Mean top-pick IoU per prompt kind, the oracle (best of the three), and the scores' MSE."""
    with torch.no_grad():
        scores = head(samples.features)
    top = top_pick_iou(scores, samples.actual)
    out: dict[str, float] = {"mse": float(F.mse_loss(scores, samples.actual))}
    for i, kind in enumerate(PROMPT_KINDS):
        sel = samples.kind == i
        if sel.any():
            out[f"top_{kind}"] = float(top[sel].mean())
            out[f"oracle_{kind}"] = float(samples.actual[sel, 1:].amax(dim=1).mean())
    return out


def fit_head(
    head: torch.nn.Module,
    samples: IoUSamples,
    epochs: int = 40,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    batch: int = 256,
    seed: int = 0,
) -> torch.nn.Module:
    """A copy of ``head`` fitted to ``samples`` by the training's IoU loss (MSE of every
    output's score against its actual IoU), starting from ``head``'s weights."""
    fitted = copy.deepcopy(head).float()
    fitted.train()
    opt = torch.optim.AdamW(fitted.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(samples)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, batch):
            i = order[s : s + batch]
            loss = F.mse_loss(fitted(samples.features[i]), samples.actual[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    fitted.eval()
    return fitted
