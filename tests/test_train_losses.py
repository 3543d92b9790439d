"""Losses of appendix A against hand-computed values, min-over-outputs backprop, optimiser
groups and schedule."""

from __future__ import annotations

import math

import pytest
import torch

from segany.modeling.registry import build_model
from segany.train.losses import LossConfig, dice_loss, downsample_targets, focal_loss, mask_iou, sam_loss
from segany.train.optim import OptimConfig, build_optimizer, encoder_layer_id, lr_factor, param_groups

# two pixels: logits 0 and ln 3 (p = 0.5, 0.75), targets 1 and 0
LOGITS = torch.tensor([[[0.0, math.log(3.0)]]])
TARGET = torch.tensor([[[1.0, 0.0]]])


def test_focal_loss_hand_computed():
    # positive: ce = ln 2, (1 - 0.5)^2 = 0.25, alpha 0.25; negative: ce = ln 4, 0.75^2, 0.75
    expect = (0.25 * 0.25 * math.log(2) + 0.75 * 0.75**2 * math.log(4)) / 2
    assert focal_loss(LOGITS, TARGET).item() == pytest.approx(expect, rel=1e-6)
    no_alpha = (0.25 * math.log(2) + 0.75**2 * math.log(4)) / 2
    assert focal_loss(LOGITS, TARGET, alpha=-1).item() == pytest.approx(no_alpha, rel=1e-6)


def test_dice_loss_hand_computed():
    # 1 - (2 * 0.5 + 1) / (1.25 + 1 + 1)
    assert dice_loss(LOGITS, TARGET).item() == pytest.approx(1 - 2 / 3.25, rel=1e-6)


def test_mask_iou_and_downsample():
    logits = torch.tensor([[[1.0, 1.0], [-1.0, 1.0]]])
    target = torch.tensor([[[1, 0], [0, 1]]], dtype=torch.bool)
    assert mask_iou(logits, target).item() == pytest.approx(2 / 3)
    assert mask_iou(-torch.ones(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool)).item() == 1.0
    big = torch.zeros(1, 8, 8, dtype=torch.bool)
    big[0, :4, :6] = True
    small = downsample_targets(big, 4)
    assert small[0].int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_sam_loss_combines_20_to_1_plus_iou_mse():
    target = TARGET.bool()
    low = LOGITS[:, None]  # 1 mask, 1 output
    iou_pred = torch.tensor([[0.3]])
    out = sam_loss(low, iou_pred, target)
    focal = (0.25 * 0.25 * math.log(2) + 0.75 * 0.75**2 * math.log(4)) / 2
    dice = 1 - 2 / 3.25
    actual_iou = 0.0  # prediction (logit > 0) is pixel 2, target pixel 1
    expect = 20 * focal + dice + (0.3 - actual_iou) ** 2
    assert out["loss"].item() == pytest.approx(expect, rel=1e-6)
    custom = sam_loss(low, iou_pred, target, LossConfig(focal_weight=1, dice_weight=2, iou_weight=0))
    assert custom["loss"].item() == pytest.approx(focal + 2 * dice, rel=1e-6)


def test_min_over_outputs_backprops_only_the_best():
    target = torch.zeros(2, 8, 8, dtype=torch.bool)
    target[:, 2:6, 2:6] = True
    good = torch.where(target, 8.0, -8.0)
    low = torch.randn(2, 3, 8, 8)
    low[0, 1] = good[0]  # mask 0: output 1 is nearly perfect
    low[1, 2] = good[1]  # mask 1: output 2
    low.requires_grad_(True)
    iou_pred = torch.full((2, 3), 0.5, requires_grad=True)
    out = sam_loss(low, iou_pred, target)
    assert out["chosen"].tolist() == [1, 2]
    out["loss"].backward()
    grad_norm = low.grad.flatten(2).abs().sum(-1)
    assert grad_norm[0, 1] > 0 and grad_norm[1, 2] > 0
    assert grad_norm[0, 0] == 0 and grad_norm[0, 2] == 0 and grad_norm[1, 0] == 0 and grad_norm[1, 1] == 0
    assert (iou_pred.grad != 0).all()  # the IoU head is trained for every output
    per = 20 * focal_loss(low.detach(), target[:, None].expand(-1, 3, -1, -1)) + dice_loss(
        low.detach(), target[:, None].expand(-1, 3, -1, -1)
    )
    iou_true = mask_iou(low.detach(), target[:, None].expand(-1, 3, -1, -1))
    expect = per.min(dim=1).values.mean() + ((0.5 - iou_true) ** 2).mean()
    assert out["loss"].item() == pytest.approx(expect.item(), rel=1e-6)


def test_lr_schedule_warmup_and_steps():
    cfg = OptimConfig(lr=1.0, warmup_steps=4, decay_steps=(10, 20), decay_factor=0.1)
    assert [lr_factor(s, cfg) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(9, cfg) == 1.0 and lr_factor(10, cfg) == pytest.approx(0.1)
    assert lr_factor(25, cfg) == pytest.approx(0.01)


def test_layer_decay_groups():
    torch.manual_seed(0)
    sam = build_model(
        "segany_tiny", encoder_embed_dim=32, encoder_depth=3, encoder_num_heads=1,
        encoder_global_attn_indexes=(2,), img_size=128, patch_size=2, window_size=8,
    )
    assert encoder_layer_id("image_encoder.patch_embed.proj.weight", 3) == 0
    assert encoder_layer_id("image_encoder.blocks.2.attn.qkv.weight", 3) == 3
    assert encoder_layer_id("image_encoder.neck.0.weight", 3) == 4
    cfg = OptimConfig(lr=1e-3, layer_decay=0.5, weight_decay=0.1)
    groups = param_groups(sam, cfg)
    where = {}
    for g in groups:
        for p in g["params"]:
            where[id(p)] = g
    named = dict(sam.named_parameters())
    g = where[id(named["image_encoder.blocks.0.attn.qkv.weight"])]
    assert g["lr"] == pytest.approx(1e-3 * 0.5**3) and g["weight_decay"] == 0.1
    assert where[id(named["image_encoder.blocks.0.attn.qkv.bias"])]["weight_decay"] == 0.0
    assert where[id(named["image_encoder.pos_embed"])]["lr"] == pytest.approx(1e-3 * 0.5**4)
    assert where[id(named["mask_decoder.iou_token.weight"])]["lr"] == pytest.approx(1e-3)
    assert sum(len(g["params"]) for g in groups) == len(named)
    sam.image_encoder.requires_grad_(False)
    opt, sched = build_optimizer(sam, OptimConfig(lr=1e-3, warmup_steps=2))
    n = sum(len(g["params"]) for g in opt.param_groups)
    assert n == len([p for p in sam.parameters() if p.requires_grad])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5e-3)  # warmup step 0


def test_decoder_lr_scale_slows_only_prompt_encoder_and_decoder() -> None:
    from segany.modeling.registry import build_model
    from segany.train.optim import OptimConfig, param_groups

    sam = build_model("segany_tiny", encoder_depth=1)
    groups = param_groups(sam, OptimConfig(lr=1e-3, decoder_lr_scale=0.1))
    owner = {id(p): n for n, p in sam.named_parameters()}
    for g in groups:
        names = [owner[id(p)] for p in g["params"]]
        slow = [n.startswith(("mask_decoder.", "prompt_encoder.")) for n in names]
        assert all(slow) or not any(slow), "a group mixes decoder and encoder parameters"
        assert g["lr"] == pytest.approx(1e-4 if slow[0] else 1e-3)
