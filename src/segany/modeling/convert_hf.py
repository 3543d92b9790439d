"""Convert Hugging Face ``transformers`` SamModel state dicts (``facebook/sam-vit-*``) to
the official/segany key layout.

The HF layout is the official one under a fixed set of renames; rather than keep a second,
hand-written inverse table, we apply the forward renames to every key of our own layout
and invert the resulting mapping, so the two can never drift apart.
"""

from __future__ import annotations

import re

import torch

# official substring -> HF substring, applied in this order (as the HF conversion does)
_OFFICIAL_TO_HF = (
    ("iou_prediction_head.layers.0", "iou_prediction_head.proj_in"),
    ("iou_prediction_head.layers.1", "iou_prediction_head.layers.0"),
    ("iou_prediction_head.layers.2", "iou_prediction_head.proj_out"),
    ("mask_decoder.output_upscaling.0", "mask_decoder.upscale_conv1"),
    ("mask_decoder.output_upscaling.1", "mask_decoder.upscale_layer_norm"),
    ("mask_decoder.output_upscaling.3", "mask_decoder.upscale_conv2"),
    ("mask_downscaling.0", "mask_embed.conv1"),
    ("mask_downscaling.1", "mask_embed.layer_norm1"),
    ("mask_downscaling.3", "mask_embed.conv2"),
    ("mask_downscaling.4", "mask_embed.layer_norm2"),
    ("mask_downscaling.6", "mask_embed.conv3"),
    ("point_embeddings", "point_embed"),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    ("image_encoder", "vision_encoder"),
    ("neck.0", "neck.conv1"),
    ("neck.1", "neck.layer_norm1"),
    ("neck.2", "neck.conv2"),
    ("neck.3", "neck.layer_norm2"),
    ("patch_embed.proj", "patch_embed.projection"),
    (".norm", ".layer_norm"),
    ("blocks", "layers"),
)
_HYPER = re.compile(r".*output_hypernetworks_mlps\.(\d+)\.layers\.(\d+).*")
_HYPER_LAYER = {0: "proj_in", 1: "layers.0", 2: "proj_out"}
# The prompt encoder's Fourier matrix lives in HF's SamModel under two tied names: the
# model's ``shared_image_embedding`` and the prompt encoder's reference to the same module.
# ``save_pretrained`` keeps one name of a tied pair, and the files on the Hub (and any
# re-saved model) hold only the top-level one, so either is accepted.
_GAUSSIAN_ALIAS = "prompt_encoder.shared_embedding.positional_embedding"
_GAUSSIAN_SHARED = "shared_image_embedding.positional_embedding"


def official_to_hf_key(key: str) -> str:
    """HF name of an official-layout parameter name."""
    for old, new in _OFFICIAL_TO_HF:
        if old in key:
            key = key.replace(old, new)
    m = _HYPER.match(key)
    if m:
        layer = int(m.group(2))
        key = key.replace(f"layers.{layer}", _HYPER_LAYER[layer], 1)
    return key


def _official_keys(depth: int) -> list[str]:
    """Every parameter name of a Sam with a ``depth``-block ViT encoder (no text head)."""
    from dataclasses import replace

    from .registry import MODEL_CONFIGS, build_from_config

    cfg = replace(MODEL_CONFIGS["vit_b"], encoder_depth=depth, encoder_embed_dim=12,
                  encoder_num_heads=1, encoder_global_attn_indexes=())
    return list(build_from_config(cfg).state_dict().keys())


def is_hf_layout(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("vision_encoder.") for k in state)


def convert_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``SamModel`` state dict -> official layout (same tensors, renamed).

    The positional Fourier matrix may come under either of its tied HF names (see
    ``_GAUSSIAN_ALIAS``); when both are present they must agree.
    """
    depth = 1 + max(
        (int(k.split(".")[2]) for k in state if k.startswith("vision_encoder.layers.")), default=-1
    )
    inverse = {official_to_hf_key(k): k for k in _official_keys(depth)}
    state = dict(state)
    shared = state.pop(_GAUSSIAN_SHARED, None)
    if shared is not None:
        alias = state.setdefault(_GAUSSIAN_ALIAS, shared)
        if alias.shape != shared.shape or not torch.equal(alias, shared.to(alias.dtype)):
            from .registry import CheckpointError

            raise CheckpointError(
                f"Hugging Face state dict has different tensors under the tied names {_GAUSSIAN_SHARED!r} "
                f"and {_GAUSSIAN_ALIAS!r}: the file is inconsistent"
            )
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for k, v in state.items():
        if k in inverse:
            out[inverse[k]] = v
        else:
            unknown.append(k)
    if unknown:
        from .registry import CheckpointError

        raise CheckpointError(f"Hugging Face state dict has keys with no SAM counterpart, first: {unknown[0]!r}")
    return out
