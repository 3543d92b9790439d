"""Synthetic pretraining of the prompt encoder and mask decoder (no images, no encoder).

Why: trained from scratch on real images, SAM's decoder must learn two things at once
before any mask gets better than "the mask prior everywhere": *where* the prompt is
(aligning the positional encodings of prompt and image through cross-attention) and *what
belongs with it* (grouping image tokens whose embedding resembles the embedding at the
prompt). On a 2-core CPU neither emerged in a few hundred real steps (docs/training.md).
Both can be learned without images: a scene of random overlapping shapes, each with its own
random embedding vector (plus smooth shading and noise, normalised per position the way
the encoder's neck LayerNorm leaves real embeddings), and a point or box prompt on one
shape. The decoder is resolution-agnostic (continuous positional encoding, local
upscaling convs), so it is trained on a small grid (16x16 instead of 64x64, 16 times
cheaper) and copied back.

A decoder trained this way segments "the region whose embedding matches the prompt's";
real training then only has to teach the encoder embeddings that make that true.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..modeling.mask_decoder import MaskDecoder
from ..modeling.prompt_encoder import PromptEncoder
from ..modeling.sam import Sam
from ..modeling.transformer import TwoWayTransformer
from .losses import LossConfig, downsample_targets, sam_loss
from .optim import OptimConfig, lr_factor
from .prompts import BACKGROUND, FOREGROUND, PromptConfig, embed_prompt_tokens, first_prompts, sample_points


@dataclass(frozen=True)
class SyntheticConfig:
    steps: int = 0  # 0 = no synthetic stage
    grid: int = 16  # embedding grid of the synthetic scenes (the model's is 64)
    masks_per_step: int = 16
    lr: float = 3.0e-4
    weight_decay: float = 0.1
    min_shapes: int = 2
    max_shapes: int = 6
    noise: float = 0.5  # per-position noise std relative to the region vectors
    multi_prompt: bool = True  # also train the single-output token on prompt + 1 point
    seed: int = 0


def synthetic_scenes(
    n: int, grid: int, generator: torch.Generator, dim: int = 256, min_shapes: int = 2, max_shapes: int = 6,
    noise: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scenes: embeddings NxDxGxG and one target mask per scene NxSxS (S = 8G), bool.

    Each scene paints ``min..max`` random ellipses and rectangles (radii 5-25% of the side)
    over a background; later shapes cover earlier ones, so visible regions are often
    non-convex. Each region gets a random D-vector, a random linear shading and per-position
    noise; embeddings are normalised per position (mean 0, std 1 over channels). The target
    is one visible region covering at least 1% of the scene.
    """
    side = grid * 8
    yy, xx = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    gy, gx = torch.meshgrid(torch.linspace(-1, 1, grid), torch.linspace(-1, 1, grid), indexing="ij")
    embs, targets = [], []
    for _ in range(n):
        labels = torch.zeros(side, side, dtype=torch.long)
        k = int(torch.randint(min_shapes, max_shapes + 1, (1,), generator=generator))
        for j in range(1, k + 1):
            cx, cy = (torch.rand(2, generator=generator) * side).tolist()
            rx, ry = ((0.05 + 0.2 * torch.rand(2, generator=generator)) * side).tolist()
            if float(torch.rand(1, generator=generator)) < 0.5:
                inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
            else:
                inside = ((xx - cx).abs() <= rx) & ((yy - cy).abs() <= ry)
            labels[inside] = j
        areas = torch.bincount(labels.flatten(), minlength=k + 1)
        ok = [j for j in range(k + 1) if areas[j] >= 0.01 * side * side and areas[j] <= 0.9 * side * side]
        target = ok[int(torch.randint(len(ok), (1,), generator=generator))] if ok else int(areas.argmax())
        vectors = torch.randn(k + 1, dim, generator=generator)
        shading = torch.randn(k + 1, 2, dim, generator=generator) * 0.3
        small = F.interpolate(labels[None, None].float(), (grid, grid), mode="nearest")[0, 0].long()
        emb = vectors[small] + gx[..., None] * shading[small, 0] + gy[..., None] * shading[small, 1]
        emb = emb + noise * torch.randn(grid, grid, dim, generator=generator)
        emb = (emb - emb.mean(-1, keepdim=True)) / emb.std(-1, keepdim=True)
        embs.append(emb.permute(2, 0, 1))
        targets.append(labels == target)
    return torch.stack(embs), torch.stack(targets)


def _small_copies(sam: Sam, grid: int) -> tuple[PromptEncoder, MaskDecoder]:
    """A prompt encoder and decoder for a ``grid`` embedding holding copies of sam's weights."""
    pe = sam.prompt_encoder
    dec = sam.mask_decoder
    t = dec.transformer
    small_pe = PromptEncoder(
        embed_dim=pe.embed_dim, image_embedding_size=(grid, grid), input_image_size=(grid * 8, grid * 8),
        mask_in_chans=pe.mask_downscaling[0].out_channels * 4,
        text_embed_dim=getattr(pe, "text_embed_dim", None),
    )
    small_dec = MaskDecoder(
        transformer_dim=dec.transformer_dim,
        transformer=TwoWayTransformer(depth=t.depth, embedding_dim=t.embedding_dim, mlp_dim=t.mlp_dim, num_heads=t.num_heads),
        num_multimask_outputs=dec.num_multimask_outputs,
        iou_head_depth=len(dec.iou_prediction_head.layers),
        iou_head_hidden_dim=dec.iou_prediction_head.layers[0].out_features,
    )
    small_pe.load_state_dict(pe.state_dict())
    small_dec.load_state_dict(dec.state_dict())
    return small_pe, small_dec


def pretrain_decoder_synthetic(
    sam: Sam, config: SyntheticConfig, loss: LossConfig | None = None,
    prompts: PromptConfig | None = None, show_progress: bool = True, log: list[dict] | None = None,
) -> dict[str, float]:
    """Train ``sam``'s prompt encoder and mask decoder on synthetic scenes, in place.

    Returns the mean IoU (best of the 3 outputs) and loss over the last 100 steps.
    ``log``, if given, receives one dict per step.
    """
    if config.steps <= 0:
        return {}
    loss = LossConfig(focal_alpha=-1.0) if loss is None else loss
    prompts = PromptConfig() if prompts is None else prompts
    small_pe, small_dec = _small_copies(sam, config.grid)
    small_pe.train()
    small_dec.train()
    params = [p for p in [*small_pe.parameters(), *small_dec.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay)
    # the real stage's schedule: linear warmup over 5% of the steps, x0.1 for the last 15%
    schedule = OptimConfig(lr=config.lr, warmup_steps=max(1, config.steps // 20),
                           decay_steps=(int(0.85 * config.steps),), decay_factor=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, schedule))
    generator = torch.Generator().manual_seed(config.seed)
    m, grid, side = config.masks_per_step, config.grid, config.grid * 8
    sizes = torch.tensor([[side, side]] * m)
    recent: list[tuple[float, float]] = []
    bar = tqdm(range(config.steps), desc="synthetic decoder", disable=not show_progress)
    for step in bar:
        t0 = time.perf_counter()
        emb, target = synthetic_scenes(m, grid, generator, small_dec.transformer_dim, config.min_shapes,
                                       config.max_shapes, config.noise)
        coords, labels = first_prompts(target, sizes, prompts, generator)  # box noise scales with the frame
        sparse = embed_prompt_tokens(small_pe, coords, labels)
        dense = small_pe.no_mask_dense(m, (grid, grid))
        image_pe = small_pe.get_dense_pe()
        low, iou = small_dec(emb, image_pe, sparse, dense, multimask_output=True)
        tgt = downsample_targets(target, low.shape[-1])
        out = sam_loss(low, iou, tgt, loss)
        total = out["loss"]
        if config.multi_prompt:
            # the same prompt plus one more point (inside the region or outside it) decoded with
            # the single-output token, which the paper uses whenever prompts are several
            fg = torch.rand(m, generator=generator) < 0.5
            pts_in, _ = sample_points(target, generator)
            pts_out, ok_out = sample_points(~target, generator)
            extra = torch.where(fg[:, None] | ~ok_out[:, None], pts_in, pts_out)
            lab = torch.where(fg | ~ok_out, FOREGROUND, BACKGROUND)
            c2 = torch.cat([coords, extra[:, None].to(coords)], dim=1)
            l2 = torch.cat([labels, lab[:, None].to(labels)], dim=1)
            low1, iou1 = small_dec(emb, image_pe, embed_prompt_tokens(small_pe, c2, l2), dense, multimask_output=False)
            total = total + sam_loss(low1, iou1, tgt, loss)["loss"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        rec = {"step": step + 1, "loss": float(out["loss"].detach()), "iou": float(out["iou"]),
               "sec": time.perf_counter() - t0}
        recent = (recent + [(rec["loss"], rec["iou"])])[-100:]
        if log is not None:
            log.append(rec)
        bar.set_postfix(iou=f"{sum(r[1] for r in recent) / len(recent):.3f}")
        if not math.isfinite(rec["loss"]):
            raise FloatingPointError(f"synthetic pretraining loss became {rec['loss']} at step {step + 1}")
    bar.close()
    with torch.no_grad():
        sam.prompt_encoder.load_state_dict(small_pe.state_dict())
        sam.mask_decoder.load_state_dict(small_dec.state_dict())
    return {"loss": sum(r[0] for r in recent) / len(recent), "iou": sum(r[1] for r in recent) / len(recent)}
