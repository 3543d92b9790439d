"""Optimiser and schedule of appendix A ("Training recipe").

AdamW (beta1 0.9, beta2 0.999) with weight decay, a linear learning-rate warmup, then a
step decay (the paper: 250 warmup iterations, lr 8e-4, x0.1 at 60k and 86,666 of 90k
iterations, weight decay 0.1, layer-wise decay 0.8 for the MAE-initialised encoder).

Layer-wise decay multiplies the learning rate of encoder block ``i`` (of ``depth``) by
``decay ** (depth - i)``: the patch embedding and position embedding count as layer 0,
the neck as the top; the prompt encoder and mask decoder train at the full rate. Biases,
norms and position tables get no weight decay (decaying them only shrinks offsets).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 8e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.1
    warmup_steps: int = 250
    decay_steps: tuple[int, ...] = field(default_factory=tuple)
    decay_factor: float = 0.1
    layer_decay: float = 1.0
    # lr multiplier of the prompt encoder and mask decoder: < 1 keeps a pretrained decoder
    # (e.g. the synthetic stage's) from drifting while a from-scratch encoder catches up
    decoder_lr_scale: float = 1.0
    grad_clip: float | None = None


def encoder_layer_id(name: str, depth: int) -> int:
    """Layer index of an ``image_encoder.*`` parameter: 0 stem, 1..depth blocks, depth+1 neck."""
    rest = name.split("image_encoder.", 1)[1]
    if rest.startswith(("patch_embed", "pos_embed")):
        return 0
    if rest.startswith("blocks."):
        return int(rest.split(".")[1]) + 1
    return depth + 1


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or "pos_embed" in name or "rel_pos" in name


def param_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """AdamW parameter groups with per-group ``lr_scale`` (layer decay) and weight decay."""
    depth = len(getattr(getattr(model, "image_encoder", None), "blocks", []))
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = 1.0
        if "image_encoder." in name and config.layer_decay != 1.0:
            scale = config.layer_decay ** (depth + 1 - encoder_layer_id(name, depth))
        if name.startswith(("mask_decoder.", "prompt_encoder.")):
            scale *= config.decoder_lr_scale
        wd = 0.0 if _no_decay(name, param) else config.weight_decay
        groups.setdefault((scale, wd), []).append(param)
    return [
        {"params": params, "lr": config.lr * scale, "lr_scale": scale, "weight_decay": wd}
        for (scale, wd), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], -kv[0][1]))
    ]


def lr_factor(step: int, config: OptimConfig) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based): warmup then steps."""
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps > 0 else 1.0
    drops = sum(step >= s for s in config.decay_steps)
    return warm * config.decay_factor**drops


def build_optimizer(
    model: nn.Module, config: OptimConfig
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over :func:`param_groups` and a LambdaLR applying :func:`lr_factor`."""
    groups = param_groups(model, config)
    if not groups:
        raise ValueError("no trainable parameters (is everything frozen?)")
    opt = torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, config))
    return opt, sched
