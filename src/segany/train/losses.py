"""Losses of appendix A: focal + dice (20:1) on masks, MSE on the IoU head, and the
minimum over the multimask outputs.

The mask loss is a linear combination of focal loss (mean over pixels) and dice loss in a
20:1 ratio. With several outputs for an ambiguous prompt only the lowest mask loss is
backpropagated, so each output is free to specialise (whole / part / subpart). The IoU
head regresses, with mean squared error and weight 1, the IoU between each predicted
mask (logits > 0) and the ground truth; the target carries no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..masks import mask_iou as binary_mask_iou


@dataclass(frozen=True)
class LossConfig:
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.) averaged over the last two (pixel) dims.

    ``alpha`` weights positives (1 - alpha negatives); a negative ``alpha`` disables it.
    """
    target = target.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice loss ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)`` over the pixel dims."""
    target = target.to(logits.dtype)
    p = torch.sigmoid(logits).flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + smooth) / (p.sum(-1) + t.sum(-1) + smooth)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with ``target`` over the pixel dims (1 when both are empty).

    The training metric and the IoU head's regression target: :func:`segany.masks.mask_iou`
    mask against mask, in float32, on the logits' device.
    """
    return binary_mask_iou(logits > 0, target, pairwise=False)


def downsample_targets(masks: torch.Tensor, size: int) -> torch.Tensor:
    """MxSxS bool masks -> Mxsizexsize bool (area average >= 0.5), the low-res logit frame."""
    if masks.shape[-1] == size:
        return masks.bool()
    return F.adaptive_avg_pool2d(masks[:, None].float(), size)[:, 0] >= 0.5


def sam_loss(
    low_res: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, config: LossConfig = LossConfig()
) -> dict[str, torch.Tensor]:
    """Loss of one iteration.

    Args:
        low_res: MxCxHxW logits (C = 3 multimask outputs or 1).
        iou_pred: MxC predicted IoUs.
        target: MxHxW bool ground truth in the same frame as ``low_res``.
    Returns:
        ``loss`` (scalar to backpropagate), its parts ``focal``, ``dice``, ``iou_mse`` (means
        over masks of the chosen output), ``iou`` (actual IoU of the chosen output, the
        quality metric) and ``chosen`` (M indices of the lowest-loss output).
    """
    logits = low_res.float()
    tgt = target[:, None].expand_as(logits)
    focal = focal_loss(logits, tgt, config.focal_alpha, config.focal_gamma)
    dice = dice_loss(logits, tgt)
    per_output = config.focal_weight * focal + config.dice_weight * dice  # MxC
    chosen = per_output.detach().argmin(dim=1)
    rows = torch.arange(len(logits), device=logits.device)
    mask_loss = per_output[rows, chosen].mean()
    with torch.no_grad():
        actual = mask_iou(logits, tgt)
    iou_mse = F.mse_loss(iou_pred.float(), actual, reduction="mean")
    return {
        "loss": mask_loss + config.iou_weight * iou_mse,
        "focal": focal[rows, chosen].mean().detach(),
        "dice": dice[rows, chosen].mean().detach(),
        "iou_mse": iou_mse.detach(),
        "iou": actual[rows, chosen].mean(),
        "chosen": chosen,
    }
