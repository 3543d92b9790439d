"""The per-image cache of the mask decoder's prompt-independent work.

For a fixed image embedding and the no-mask dense prompt, part of every decoder call is
the same whatever the prompt: the image tokens themselves, the positional encoding laid
out as tokens, the first layer's three projections of the 4096 image tokens (before the
first image->token attention the image tokens have not yet seen a prompt) and the
upscaling weights re-laid out for channels-last matmuls. :class:`DecoderImageCache` holds
them, built once per image by :meth:`DecoderImageCache.build`; the exact cached inference
path (:mod:`segany.modeling.cached_decoder`) reads it for every prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .mask_decoder import MaskDecoder
from .transformer import TwoWayTransformer


@dataclass(frozen=True, eq=False)
class MaskPrompt:
    """Mask prompts (previous low-res logits) as a rank-K update of the cached image tokens.

    Why: a mask prompt adds its dense embedding to every image token, so the first layer's
    cached projections would have to be recomputed per prompt -- three 4096x256x128 products
    and the 4096x256x256 of the first upscaling matmul, most of a click's work. But the
    prompt encoder's mask embedding ends in a 1x1 conv from K = 16 channels to C = 256:
    ``dense = f W^T + b`` with ``f`` the B x N x K features before that conv. The image
    tokens with the mask prompt are ``keys + f W^T + (b - no_mask)`` (the cache's ``keys``
    hold the no-mask embedding), and each cached projection ``keys @ M`` moves by
    ``f (W^T M) + (b - no_mask) M``: an N x K x D product instead of N x C x D. The cached
    decoder (:mod:`segany.modeling.cached_decoder`) applies these terms where the first layer
    reads the cache, without materialising moved copies; equal to recomputing from the
    prompted tokens up to float rounding.
    """

    features: torch.Tensor
    """B x N x K: the mask embedding before its last 1x1 conv, as tokens (row-major grid)."""
    weight: torch.Tensor
    """K x C: that conv's weight, transposed."""
    offset: torch.Tensor
    """C: that conv's bias minus the no-mask embedding."""

    @classmethod
    def from_masks(cls, prompt_encoder: nn.Module, masks: torch.Tensor, scale: torch.Tensor | None = None) -> MaskPrompt:
        """The update for ``masks`` (Bx1x(4H)x(4W) logits) under ``prompt_encoder``.

        ``scale``: an optional 0/1 multiplier of the whole update (the per-click ONNX graph's
        ``has_mask_input``, which cannot branch): 0 gives exactly the no-mask cache."""
        layers = prompt_encoder.mask_downscaling
        proj: nn.Conv2d = layers[-1]
        dtype = proj.weight.dtype
        features = layers[:-1](masks.to(dtype)).flatten(2).transpose(1, 2)
        offset = proj.bias - prompt_encoder.no_mask_embed.weight[0]
        if scale is not None:
            scale = scale.to(dtype).reshape(())
            features, offset = features * scale, offset * scale
        return cls(features=features, weight=proj.weight.flatten(1).t(), offset=offset)

    def __getitem__(self, rows: slice) -> MaskPrompt:
        """The prompts ``rows`` (a batch of one prompt applies to every row, and stays)."""
        return self if self.features.shape[0] == 1 else replace(self, features=self.features[rows])


IMAGE_FIELDS = ("keys", "t2i_k", "t2i_v", "i2t_q_t", "up1_keys")
"""The fields of :class:`DecoderImageCache` that depend on the image (the rest are the
decoder's weights re-laid out), in the order the per-click ONNX decoder takes them."""


@dataclass(frozen=True, eq=False)
class DecoderImageCache:
    """Prompt-independent decoder tensors for one image, in the decoder's dtype.

    Shapes: N = H*W image tokens (4096), C = the transformer width (256), h heads (8),
    c = C / (downsample rate * h) channels per head (16), C1 = C/4 and C2 = C/8 the
    channels of the two upscaling steps.

    A cache belongs to the decoder (weights and dtype) that built it; a mask prompt makes
    the image tokens per-prompt, so those are passed next to the cache, never stored in it.
    """

    keys: torch.Tensor
    """1xNxC image tokens: the image embedding plus the no-mask dense prompt, row-major
    over the (H, W) grid."""
    key_pe: torch.Tensor
    """1xNxC dense positional encoding of the embedding grid, same layout."""
    t2i_k: torch.Tensor
    """1 x h x N x c: first layer token->image key projection of ``keys + key_pe``."""
    t2i_v: torch.Tensor
    """1 x h x N x c: first layer token->image value projection of ``keys``."""
    i2t_q_t: torch.Tensor
    """1 x (h*c) x N: first layer image->token query projection of ``keys + key_pe``,
    transposed (channels by token: the transposed-logits layout of
    :func:`~segany.modeling.reassociated_attention.image_to_token` reads it as is)."""
    up1_w: torch.Tensor
    """C x 4*C1: the first 2x2 stride-2 transposed conv as a matmul, columns (di, dj, out)."""
    up1_b: torch.Tensor
    """4*C1: its bias, repeated for the four output pixels."""
    up2_w: torch.Tensor
    """C1 x 4*C2: the second transposed conv, same layout."""
    up2_b: torch.Tensor
    """4*C2: its bias."""
    up1_keys: torch.Tensor
    """1 x N x 4*C1: ``keys @ up1_chain[0]``, the image-side start of the first upscaling
    matmul run through the transformer's image-token LayerNorms (see
    :func:`~segany.modeling.cached_decoder.cached_transformer`); empty for
    :meth:`for_image_tokens`."""
    up1_chain: tuple[torch.Tensor, ...]
    """Per transformer layer l: ``diag(gamma_l * ... * gamma_last) @ up1_w`` (C x 4*C1), with
    gamma_l the weight of layer l's image-token LayerNorm (``norm4``)."""
    grid: tuple[int, int]
    """(H, W) of the image embedding (64, 64): ``keys`` reshapes to 1xHxWxC."""
    image_tokens_only: bool = False
    """True for a cache from :meth:`for_image_tokens`: ``keys``, ``t2i_k``, ``t2i_v`` and
    ``i2t_q_t`` are empty, so it decodes only with per-prompt ``image_tokens``."""

    @classmethod
    def build(cls, decoder: MaskDecoder, src: torch.Tensor, image_pe: torch.Tensor) -> DecoderImageCache:
        """The cache of one image.

        Args:
            decoder: the mask decoder that will decode with it.
            src: 1xCxHxW image embedding plus the no-mask dense prompt embedding.
            image_pe: 1xCxHxW dense positional encoding (``PromptEncoder.get_dense_pe()``).
        """
        return cls.from_image_tensors(decoder, image_pe, **cls.image_tensors(decoder, src, image_pe))

    @staticmethod
    def image_tensors(decoder: MaskDecoder, src: torch.Tensor, image_pe: torch.Tensor) -> dict[str, torch.Tensor]:
        """The image-dependent fields of :meth:`build` (:data:`IMAGE_FIELDS`), by name.

        Why separate: the annotation page computes them once per image in one ONNX graph
        and feeds them to another, the per-click decoder (:mod:`segany.export.onnx_click`),
        which rebuilds the cache with :meth:`from_image_tensors`; the weight-only fields are
        constants of that graph."""
        transformer: TwoWayTransformer = decoder.transformer  # type: ignore[assignment]
        dtype = decoder.iou_token.weight.dtype  # the decoder's precision (no-op casts for float32)
        src, image_pe = src.to(dtype), image_pe.to(dtype)
        # Tokens as the reference transformer lays them out (transposed views, which the
        # projections below read: the same layout rounds the same), stored contiguous.
        keys = src.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        layer = transformer.layers[0]
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        k = keys + key_pe
        up1_w = _conv_transpose_as_matmul(decoder.output_upscaling[0])[0]
        return {
            "keys": keys.contiguous(),
            "t2i_k": t2i.separate_heads(t2i.k_proj(k)),
            "t2i_v": t2i.separate_heads(t2i.v_proj(keys)),
            "i2t_q_t": i2t.q_proj(k).transpose(1, 2).contiguous(),
            "up1_keys": keys @ _up1_chain(transformer, up1_w)[0],
        }

    @classmethod
    def from_image_tensors(
        cls,
        decoder: MaskDecoder,
        image_pe: torch.Tensor,
        *,
        keys: torch.Tensor,
        t2i_k: torch.Tensor,
        t2i_v: torch.Tensor,
        i2t_q_t: torch.Tensor,
        up1_keys: torch.Tensor,
    ) -> DecoderImageCache:
        """The cache from the image tensors of :meth:`image_tensors` (computed here or
        elsewhere) and the decoder's weights; ``image_pe`` as in :meth:`build`."""
        transformer: TwoWayTransformer = decoder.transformer  # type: ignore[assignment]
        dtype = decoder.iou_token.weight.dtype
        up = _upscaling_as_matmuls(decoder)
        gh, gw = int(image_pe.shape[-2]), int(image_pe.shape[-1])
        if keys.shape[1] != gh * gw:
            raise ValueError(f"cache keys have {keys.shape[1]} tokens, the {gh}x{gw} grid needs {gh * gw}")
        return cls(
            keys=keys,
            key_pe=image_pe.to(dtype).flatten(2).transpose(1, 2).contiguous(),
            t2i_k=t2i_k,
            t2i_v=t2i_v,
            i2t_q_t=i2t_q_t,
            up1_keys=up1_keys,
            up1_chain=_up1_chain(transformer, up["up1_w"]),
            grid=(gh, gw),
            **up,
        )

    @classmethod
    def for_image_tokens(cls, decoder: MaskDecoder, image_pe: torch.Tensor) -> DecoderImageCache:
        """A cache holding only what decoding with per-prompt ``image_tokens`` reads: the
        positional encoding as tokens, the re-laid-out upscaling weights and the grid.

        Why: when every call carries its own dense prompt (the ONNX decoder blends the mask
        prompt in arithmetically, so its graph cannot branch to the no-mask cache) the image
        tokens come from :func:`~segany.modeling.cached_decoder.mask_prompt_tokens`, and the
        cached no-mask ``keys`` and first-layer projections of :meth:`build` -- three
        4096x256x256 products -- would be computed for nothing. Those fields are left empty
        (``image_tokens_only`` is set, and decoding without ``image_tokens`` is refused).

        Args:
            decoder: the mask decoder that will decode with it.
            image_pe: 1xCxHxW dense positional encoding (``PromptEncoder.get_dense_pe()``).
        """
        dtype = decoder.iou_token.weight.dtype
        image_pe = image_pe.to(dtype)
        empty = image_pe.new_empty(0)
        return cls(
            keys=empty,
            key_pe=image_pe.flatten(2).transpose(1, 2).contiguous(),
            t2i_k=empty,
            t2i_v=empty,
            i2t_q_t=empty,
            up1_keys=empty,
            up1_chain=(),
            grid=(int(image_pe.shape[-2]), int(image_pe.shape[-1])),
            image_tokens_only=True,
            **_upscaling_as_matmuls(decoder),
        )


def _up1_chain(transformer: TwoWayTransformer, up1_w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The cache's ``up1_chain``: ``up1_w`` with its rows scaled by the LayerNorm weights of
    every later image-token norm, innermost (layer 0) first."""
    chain = [up1_w]
    for layer in reversed(transformer.layers):
        chain.append(layer.norm4.weight[:, None] * chain[-1])
    return tuple(reversed(chain[1:]))


def _upscaling_as_matmuls(decoder: MaskDecoder) -> dict[str, torch.Tensor]:
    """The cache's ``up1_w``, ``up1_b``, ``up2_w``, ``up2_b``: both upscaling convs re-laid out."""
    up1, _, _, up2, _ = decoder.output_upscaling
    up1_w, up1_b = _conv_transpose_as_matmul(up1)
    up2_w, up2_b = _conv_transpose_as_matmul(up2)
    return {"up1_w": up1_w, "up1_b": up1_b, "up2_w": up2_w, "up2_b": up2_b}


def _conv_transpose_as_matmul(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A kernel-2 stride-2 ConvTranspose2d as (weight in x 4*out, bias 4*out): every input
    pixel produces a 2x2 block of its own, so the conv is one matmul per pixel with the
    columns ordered (di, dj, out)."""
    weight = conv.weight  # (in, out, 2, 2)
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).contiguous(), conv.bias.repeat(4)
