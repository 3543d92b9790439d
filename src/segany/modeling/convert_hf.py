"""Convert Hugging Face ``transformers`` SamModel state dicts (``facebook/sam-vit-*``) to
the official/segany key layout, and name official parameters the HF way.

The HF layout is the official one with some modules renamed, so one flat table of
``(HF prefix, official prefix)`` rules drives both directions; the tail of a key after
its prefix (``weight``, ``attn.qkv.bias``, ...) is the same in both layouts. ``{i}``
stands for a module index (a block, a point embedding, a hypernetwork MLP) and is carried
over unchanged. The one thing a table cannot say is HF's tied alias of the positional
matrix, handled in :func:`convert_hf_state_dict`.

This module is a leaf (torch and the standard library only), so that reading a checkpoint
can use it without the model. What it does not check, the strict load does: a renamed key
the model lacks is reported by ``checkpoint.load_into``.
"""

from __future__ import annotations

import re

import torch

# (HF prefix, official prefix). A prefix matches a whole key or a key continuing with ".".
HF_TO_OFFICIAL: tuple[tuple[str, str], ...] = (
    # image encoder (the ViT)
    ("vision_encoder.pos_embed", "image_encoder.pos_embed"),
    ("vision_encoder.patch_embed.projection", "image_encoder.patch_embed.proj"),
    ("vision_encoder.layers.{i}.layer_norm1", "image_encoder.blocks.{i}.norm1"),
    ("vision_encoder.layers.{i}.attn", "image_encoder.blocks.{i}.attn"),
    ("vision_encoder.layers.{i}.layer_norm2", "image_encoder.blocks.{i}.norm2"),
    ("vision_encoder.layers.{i}.mlp", "image_encoder.blocks.{i}.mlp"),
    ("vision_encoder.neck.conv1", "image_encoder.neck.0"),
    ("vision_encoder.neck.layer_norm1", "image_encoder.neck.1"),
    ("vision_encoder.neck.conv2", "image_encoder.neck.2"),
    ("vision_encoder.neck.layer_norm2", "image_encoder.neck.3"),
    # prompt encoder
    ("prompt_encoder.shared_embedding.positional_embedding", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    ("prompt_encoder.point_embed.{i}", "prompt_encoder.point_embeddings.{i}"),
    ("prompt_encoder.not_a_point_embed", "prompt_encoder.not_a_point_embed"),
    ("prompt_encoder.mask_embed.conv1", "prompt_encoder.mask_downscaling.0"),
    ("prompt_encoder.mask_embed.layer_norm1", "prompt_encoder.mask_downscaling.1"),
    ("prompt_encoder.mask_embed.conv2", "prompt_encoder.mask_downscaling.3"),
    ("prompt_encoder.mask_embed.layer_norm2", "prompt_encoder.mask_downscaling.4"),
    ("prompt_encoder.mask_embed.conv3", "prompt_encoder.mask_downscaling.6"),
    ("prompt_encoder.no_mask_embed", "prompt_encoder.no_mask_embed"),
    # mask decoder: the two-way transformer
    ("mask_decoder.transformer.layers.{i}.self_attn", "mask_decoder.transformer.layers.{i}.self_attn"),
    ("mask_decoder.transformer.layers.{i}.layer_norm1", "mask_decoder.transformer.layers.{i}.norm1"),
    ("mask_decoder.transformer.layers.{i}.cross_attn_token_to_image", "mask_decoder.transformer.layers.{i}.cross_attn_token_to_image"),
    ("mask_decoder.transformer.layers.{i}.layer_norm2", "mask_decoder.transformer.layers.{i}.norm2"),
    ("mask_decoder.transformer.layers.{i}.mlp", "mask_decoder.transformer.layers.{i}.mlp"),
    ("mask_decoder.transformer.layers.{i}.layer_norm3", "mask_decoder.transformer.layers.{i}.norm3"),
    ("mask_decoder.transformer.layers.{i}.layer_norm4", "mask_decoder.transformer.layers.{i}.norm4"),
    ("mask_decoder.transformer.layers.{i}.cross_attn_image_to_token", "mask_decoder.transformer.layers.{i}.cross_attn_image_to_token"),
    ("mask_decoder.transformer.final_attn_token_to_image", "mask_decoder.transformer.final_attn_token_to_image"),
    ("mask_decoder.transformer.layer_norm_final_attn", "mask_decoder.transformer.norm_final_attn"),
    # mask decoder: tokens, upscaling, hypernetwork MLPs and IoU head (HF names an MLP's
    # first and last layers proj_in/proj_out and numbers only the hidden ones)
    ("mask_decoder.iou_token", "mask_decoder.iou_token"),
    ("mask_decoder.mask_tokens", "mask_decoder.mask_tokens"),
    ("mask_decoder.upscale_conv1", "mask_decoder.output_upscaling.0"),
    ("mask_decoder.upscale_layer_norm", "mask_decoder.output_upscaling.1"),
    ("mask_decoder.upscale_conv2", "mask_decoder.output_upscaling.3"),
    ("mask_decoder.output_hypernetworks_mlps.{i}.proj_in", "mask_decoder.output_hypernetworks_mlps.{i}.layers.0"),
    ("mask_decoder.output_hypernetworks_mlps.{i}.layers.0", "mask_decoder.output_hypernetworks_mlps.{i}.layers.1"),
    ("mask_decoder.output_hypernetworks_mlps.{i}.proj_out", "mask_decoder.output_hypernetworks_mlps.{i}.layers.2"),
    ("mask_decoder.iou_prediction_head.proj_in", "mask_decoder.iou_prediction_head.layers.0"),
    ("mask_decoder.iou_prediction_head.layers.0", "mask_decoder.iou_prediction_head.layers.1"),
    ("mask_decoder.iou_prediction_head.proj_out", "mask_decoder.iou_prediction_head.layers.2"),
)

# The prompt encoder's Fourier matrix lives in HF's SamModel under two tied names: the
# model's ``shared_image_embedding`` and the prompt encoder's reference to the same module.
# ``save_pretrained`` keeps one name of a tied pair, and the files on the Hub (and any
# re-saved model) hold only the top-level one, so either is accepted.
GAUSSIAN_ALIAS = "prompt_encoder.shared_embedding.positional_embedding"
GAUSSIAN_SHARED = "shared_image_embedding.positional_embedding"


class HFLayoutError(ValueError):
    """A state dict in the HF layout that has no official counterpart.

    Its own class because this module is a leaf; ``checkpoint.read_checkpoint`` reports it
    as a ``CheckpointError`` with the same message.
    """


def _compile(prefix: str) -> re.Pattern[str]:
    """``prefix`` (with ``{i}`` for an index) as a regex matching a whole key or a key that
    continues with ``.``; the indices and the tail are the groups."""
    body = r"(\d+)".join(re.escape(part) for part in prefix.split("{i}"))
    return re.compile(body + r"(\..+)?")


def _fill(prefix: str, indices: tuple[str, ...]) -> str:
    for index in indices:
        prefix = prefix.replace("{i}", index, 1)
    return prefix


_FROM_HF = [(_compile(hf), official) for hf, official in HF_TO_OFFICIAL]
_TO_HF = [(_compile(official), hf) for hf, official in HF_TO_OFFICIAL]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in rules:
        m = pattern.fullmatch(key)
        if m:
            *indices, tail = m.groups()
            return _fill(target, tuple(indices)) + (tail or "")
    return None


def official_to_hf_key(key: str) -> str:
    """HF name of an official-layout parameter name (unchanged when HF has no such name)."""
    renamed = _rename(key, _TO_HF)
    return key if renamed is None else renamed


def is_hf_layout(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("vision_encoder.") for k in state)


def convert_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``SamModel`` state dict -> official layout (same tensors, renamed).

    The positional Fourier matrix may come under either of its tied HF names (see
    ``GAUSSIAN_ALIAS``); when both are present they must agree. A key no rule of
    ``HF_TO_OFFICIAL`` covers raises :class:`HFLayoutError`.
    """
    state = dict(state)
    shared = state.pop(GAUSSIAN_SHARED, None)
    if shared is not None:
        alias = state.setdefault(GAUSSIAN_ALIAS, shared)
        if alias.shape != shared.shape or not torch.equal(alias, shared.to(alias.dtype)):
            raise HFLayoutError(
                f"Hugging Face state dict has different tensors under the tied names {GAUSSIAN_SHARED!r} "
                f"and {GAUSSIAN_ALIAS!r}: the file is inconsistent"
            )
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for k, v in state.items():
        renamed = _rename(k, _FROM_HF)
        if renamed is None:
            unknown.append(k)
        else:
            out[renamed] = v
    if unknown:
        raise HFLayoutError(f"Hugging Face state dict has keys with no SAM counterpart, first: {unknown[0]!r}")
    return out
