"""Building models: from a config, by registered name, and the official registry.

``sam_model_registry`` is the official plain-dict registry (``"default"``, ``"vit_h"``,
``"vit_l"``, ``"vit_b"``) plus segany's own models. Builders take ``checkpoint=`` exactly as
the official ones do; reading and checking the file is ``checkpoint.py``'s job, so a
checkpoint that does not fit says which model it looks like and where it differs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from torch import nn

from .checkpoint import config_from_state, load_into, read_checkpoint
from .cnn_encoder import ImageEncoderCNN
from .config import EMBEDDING_GRID, MODEL_CONFIGS, PROMPT_EMBED_DIM, SamConfig
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .transformer import TwoWayTransformer


def build_from_config(config: SamConfig) -> Sam:
    """Build an (uninitialised-weights) Sam in eval mode from a config."""
    if config.img_size // config.patch_size != EMBEDDING_GRID:
        raise ValueError(
            f"img_size/patch_size must be {EMBEDDING_GRID} (got {config.img_size}/{config.patch_size})"
        )
    if config.encoder_type == "cnn":
        encoder: nn.Module = ImageEncoderCNN(
            img_size=config.img_size,
            widths=tuple(config.cnn_widths),
            depths=tuple(config.cnn_depths),
            global_blocks=config.cnn_global_blocks,
            out_chans=PROMPT_EMBED_DIM,
        )
    elif config.encoder_type != "vit":
        raise ValueError(f"unknown encoder_type {config.encoder_type!r} (expected 'vit' or 'cnn')")
    else:
        encoder = _build_vit(config)
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(EMBEDDING_GRID, EMBEDDING_GRID),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=16,
            text_embed_dim=config.text_embed_dim,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=PROMPT_EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )
    sam.config = config  # type: ignore[assignment]
    sam.eval()
    return sam


def _build_vit(config: SamConfig) -> ImageEncoderViT:
    return ImageEncoderViT(
        depth=config.encoder_depth,
        embed_dim=config.encoder_embed_dim,
        img_size=config.img_size,
        mlp_ratio=config.mlp_ratio,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=config.encoder_num_heads,
        patch_size=config.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=tuple(config.encoder_global_attn_indexes),
        window_size=config.window_size,
        out_chans=PROMPT_EMBED_DIM,
        drop_path_rate=config.drop_path_rate,
    )


def build_model(
    model_type: str = "vit_h", checkpoint: str | os.PathLike | None = None, **overrides: Any
) -> Sam:
    """Build a registered model type, optionally overriding config fields (e.g.
    ``encoder_depth=2`` for tests, ``text_embed_dim=768``) and loading a checkpoint.

    ``model_type="auto"`` takes the type from the checkpoint itself.
    """
    if model_type == "auto":
        if checkpoint is None:
            raise ValueError("model_type='auto' needs a checkpoint")
        state, meta = read_checkpoint(checkpoint)
        config = config_from_state(state, meta, describe=str(checkpoint))
        if overrides:
            config = replace(config, **overrides)
        sam = build_from_config(config)
        load_into(sam, state, describe=str(checkpoint))
        return sam
    if model_type == "default":
        model_type = "vit_h"
    if model_type not in MODEL_CONFIGS:
        raise ValueError(f"unknown model type {model_type!r}; choose from {sorted(MODEL_CONFIGS)}")
    config = MODEL_CONFIGS[model_type]
    if overrides:
        config = replace(config, **overrides)
    sam = build_from_config(config)
    if checkpoint is not None:
        state, _ = read_checkpoint(checkpoint)
        load_into(sam, state, describe=str(checkpoint), expected_type=model_type)
    return sam


def build_sam_vit_h(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_model("vit_h", checkpoint)


def build_sam_vit_l(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_model("vit_l", checkpoint)


def build_sam_vit_b(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_model("vit_b", checkpoint)


def build_segany_tiny(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_model("segany_tiny", checkpoint)


def build_segany_cnn(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_model("segany_cnn", checkpoint)


build_sam = build_sam_vit_h

sam_model_registry: dict[str, Callable[..., Sam]] = {
    "default": build_sam_vit_h,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "segany_tiny": build_segany_tiny,
    "segany_cnn": build_segany_cnn,
}
