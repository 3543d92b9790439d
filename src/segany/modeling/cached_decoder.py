"""The exact cached inference path of the mask decoder: many prompts on one image.

Interactive use (the predictor, edge maps) and the automatic generator decode many
prompts against one image embedding. This path gives what :class:`MaskDecoder` gives, up
to float rounding (tested to 1e-4 against the official implementation), in less time:

- the prompt-independent work is read from a :class:`DecoderImageCache` built once per
  image; a mask prompt updates it by a rank-16 product (:class:`MaskPrompt`) instead of
  making the image tokens per-prompt;
- every cross-attention runs re-associated (:mod:`segany.modeling.reassociated_attention`),
  except the first layer's, which attends over the cached projections;
- with the cached image tokens, the first upscaling matmul is distributed over the
  layers' low-rank image-token updates (:func:`_fused_up1`), so no 4096x256x256 product
  runs per prompt;
- the upscaling transposed convs (kernel 2, stride 2) are plain matmuls in a channels-last
  layout with the pixel shuffle applied only to the final 1-3 mask channels, or, when a
  caller needs only some rows/columns of the low-res logits, run on those alone.

The output-token, hypernetwork and IoU heads are :class:`MaskDecoder`'s own methods. The
path is inference-only (no autograd: use :class:`MaskDecoder` to train).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .decoder_cache import DecoderImageCache, MaskPrompt
from .mask_decoder import MaskDecoder
from .reassociated_attention import image_to_token_factors, token_to_image
from .transformer import TwoWayTransformer
from .workspace import Workspace

DECODE_CHUNK = 4
"""Prompts decoded together. Every prompt carries its own 4096x256 image tokens (4 MB in
fp32): a batch of 64 streams 268 MB tensors through memory for each elementwise step, while
groups of 4 stay in the CPU caches. Measured with the 8 M-parameter default model, 1 thread,
64 prompts: 182 ms per prompt in groups of 4 against 263 ms in one batch; the outputs are
identical (the same kernels on the same rows)."""


def _scratch(ws: Workspace | None, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
    """``ws``'s buffer ``name`` for an ``out=`` argument, or None (a fresh tensor) without a
    workspace (ONNX tracing, the public helpers whose outputs callers keep)."""
    return None if ws is None else ws.get(name, shape, like)


def _layer_norm_stats(
    x: torch.Tensor, norm: nn.Module, ws: Workspace | None, name: str, stats_name: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.native_layer_norm(x, ...)`` (output, mean, rstd) over the last axis with
    ``norm``'s weight, bias and eps (an ``nn.LayerNorm`` or the upscaling's channel norm,
    applied channels-last), written into ``ws``'s buffers when there is one: the same
    kernel either way. ``stats_name`` (default ``name``) names the statistics' buffers, which
    must outlive the output's when they are kept (the fused upscaling reads every layer's)."""
    shape = [int(norm.weight.shape[0])]
    if ws is None or x.dtype != torch.float32:
        return torch.native_layer_norm(x, shape, norm.weight, norm.bias, norm.eps)
    stats = (*x.shape[: x.dim() - len(shape)], *([1] * len(shape)))
    return torch.ops.aten.native_layer_norm.out(
        x, shape, norm.weight, norm.bias, norm.eps,
        out0=ws.get(name, tuple(x.shape), x),
        out1=ws.get((stats_name or name) + ".mean", stats, x),
        out2=ws.get((stats_name or name) + ".rstd", stats, x),
    )


def _activate(y: torch.Tensor, act: nn.Module, in_place: bool) -> torch.Tensor:
    """``act(y)``, in place on ``y`` (a scratch tensor of the caller's) for GELU: the same
    kernel, without a new 4-8 MB output."""
    if in_place and isinstance(act, nn.GELU):
        return torch.ops.aten.gelu_(y, approximate=act.approximate)
    return act(y)


def mask_prompt_tokens(image_embedding: torch.Tensor, dense: torch.Tensor, batch: int) -> torch.Tensor:
    """Per-prompt image tokens for mask prompts: ``image_embedding`` (1xCxHxW) plus each
    prompt's dense embedding (BxCxHxW or 1xCxHxW), as BxNxC for ``batch`` prompts.

    A mask prompt changes the image tokens the decoder starts from, so they cannot come
    from the cache (whose ``keys`` hold the no-mask dense prompt)."""
    src = (image_embedding + dense).flatten(2).transpose(1, 2)
    return src.expand(batch, -1, -1) if src.shape[0] == 1 else src


def cached_transformer(
    decoder: MaskDecoder,
    cache: DecoderImageCache,
    sparse_prompt_embeddings: torch.Tensor,
    image_tokens: torch.Tensor | None = None,
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two-way transformer on a cached image: (tokens BxTxC, image tokens BxNxC).

    ``image_tokens`` (BxNxC, from :func:`mask_prompt_tokens`): per-prompt image tokens that
    replace ``cache.keys``. The first layer then cannot use the cached projections, but
    still runs re-associated. ``workspace``: the 4096-row intermediates go into its buffers
    (:mod:`segany.modeling.workspace`); the returned image tokens are then one of them,
    valid until the next call with that workspace (copy what must live longer).
    """
    layers = transformer_layers(decoder, cache, sparse_prompt_embeddings, image_tokens, workspace)
    return final_tokens(decoder, cache, layers, ws=workspace), layers.keys


ImageTokenFactors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""Per layer, how its image-token update was formed: (p_t, vw, mean, rstd) with the new
image tokens = LayerNorm(keys + p_t^T @ vw + out bias), mean/rstd that norm's statistics."""


def _heads_of(matrix: torch.Tensor, heads: int) -> torch.Tensor:
    """K x (heads*c) -> heads x K x c."""
    k, d = matrix.shape
    return matrix.reshape(k, heads, d // heads).transpose(0, 1)


def _token_to_cached_image(
    attn: nn.Module, q_heads: torch.Tensor, cache: DecoderImageCache, mask_prompt: MaskPrompt
) -> torch.Tensor:
    """The first layer's token->image attention over the cache's keys/values moved by a mask
    prompt (:class:`MaskPrompt`), without materialising the moved keys and values.

    Per head, the keys move by ``f Mk + 1 mk^T``: the second term adds the same logit to
    every image token, which the softmax cancels, so the logits only gain
    ``(q Mk^T) f^T``; the values move by ``f Mv + 1 mv^T``, so the output gains
    ``(P f) Mv + mv`` (softmax rows sum to one). All N x K products, K = 16."""
    h = attn.num_heads
    b, _, _, c = q_heads.shape
    scale = 1.0 / math.sqrt(c)
    f = mask_prompt.features.expand(b, -1, -1)[:, None]  # B 1 N K
    mk = _heads_of(mask_prompt.weight @ attn.k_proj.weight.t(), h)  # h K c
    mv = _heads_of(mask_prompt.weight @ attn.v_proj.weight.t(), h)
    mv_bias = (mask_prompt.offset @ attn.v_proj.weight.t()).reshape(h, 1, c)
    logits = q_heads @ cache.t2i_k.transpose(-1, -2)  # B h T N
    logits = logits.add_((q_heads @ mk.transpose(-1, -2)) @ f.transpose(-1, -2)).mul_(scale)
    p = torch.softmax(logits, dim=-1)
    out = p @ cache.t2i_v + (p @ f) @ mv + mv_bias
    return attn.out_proj(attn.recombine_heads(out))


@dataclass
class LayerOutputs:
    """The two-way transformer's state after its layers, before the final token->image
    attention: ``queries`` (BxTxC), the token positional part ``query_pe`` (the prompt
    tokens, BxTxC), the image tokens ``keys`` (BxNxC) and each layer's factors."""

    queries: torch.Tensor
    query_pe: torch.Tensor
    keys: torch.Tensor
    factors: list[ImageTokenFactors]

    def select(self, idx: torch.Tensor) -> LayerOutputs:
        """The prompts ``idx`` (copies: safe past the next call with the workspace), without
        the factors (only the fused upscaling reads them, and it runs on whole groups)."""
        return LayerOutputs(self.queries[idx], self.query_pe[idx], self.keys[idx], [])


def final_tokens(
    decoder: MaskDecoder,
    cache: DecoderImageCache,
    layers: LayerOutputs,
    tokens: slice = slice(None),
    ws: Workspace | None = None,
) -> torch.Tensor:
    """The final token->image attention and norm for the output tokens ``tokens`` only
    (B x len(tokens) x C): each token's row depends on its own query alone.

    Why a subset: the IoU head reads the IoU token (index 0) and nothing else, so a caller
    that filters on predicted IoU before it needs masks (the automatic generator) attends
    with 1 query row of 7 per head, 1/7 of the two B x (heads*T) x 4096 x 256 products."""
    transformer: TwoWayTransformer = decoder.transformer  # type: ignore[assignment]
    queries, query_pe, keys = layers.queries[:, tokens], layers.query_pe[:, tokens], layers.keys
    keys_pe = torch.add(keys, cache.key_pe, out=_scratch(ws, "keys_pe", keys.shape, keys))
    attn_out = token_to_image(transformer.final_attn_token_to_image, queries + query_pe, keys_pe, keys)
    return transformer.norm_final_attn(queries + attn_out)


def transformer_layers(
    decoder: MaskDecoder,
    cache: DecoderImageCache,
    sparse_prompt_embeddings: torch.Tensor,
    image_tokens: torch.Tensor | None = None,
    ws: Workspace | None = None,
    mask_prompt: MaskPrompt | None = None,
) -> LayerOutputs:
    """The two-way transformer's layers on a cached image, without the final attention
    (:func:`final_tokens`). ``image_tokens``: as in :func:`cached_transformer`. With ``ws``
    the 4096-row tensors are written into its buffers: the returned image tokens and
    factors are then valid only until the next call with the same workspace.
    ``mask_prompt``: the cached image tokens moved by that rank-16 term
    (:class:`MaskPrompt`), applied where the first layer reads them; the later layers see
    prompted tokens anyway. Bad argument combinations are refused here, the one place
    that checks them."""
    transformer: TwoWayTransformer = decoder.transformer  # type: ignore[assignment]
    if image_tokens is None and cache.image_tokens_only:
        raise ValueError("this cache (DecoderImageCache.for_image_tokens) decodes only with image_tokens")
    if mask_prompt is not None and image_tokens is not None:
        raise ValueError("give a mask prompt either as mask_prompt or as image_tokens, not both")
    b = sparse_prompt_embeddings.shape[0]
    tokens = decoder.output_tokens(sparse_prompt_embeddings)
    key_pe = cache.key_pe
    use_cache = image_tokens is None  # the first layer's cached image projections apply
    keys = cache.keys if image_tokens is None else image_tokens
    query_pe = tokens
    queries = tokens
    factors: list[ImageTokenFactors] = []
    for i, layer in enumerate(transformer.layers):
        queries = layer.token_self_attention(queries, query_pe)
        q = queries + query_pe
        first_cached = i == 0 and use_cache
        keys_pe = None if first_cached else torch.add(keys, key_pe, out=_scratch(ws, "keys_pe", keys.shape, keys))
        if first_cached:
            t2i = layer.cross_attn_token_to_image
            q_heads = t2i.separate_heads(t2i.q_proj(q))
            if mask_prompt is None:
                attn_out = t2i.attend(q_heads, cache.t2i_k.expand(b, -1, -1, -1), cache.t2i_v.expand(b, -1, -1, -1))
            else:
                attn_out = _token_to_cached_image(t2i, q_heads, cache, mask_prompt)
        else:
            attn_out = token_to_image(layer.cross_attn_token_to_image, q, keys_pe, keys)
        queries = layer.norm2(queries + attn_out)
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + query_pe
        i2t = layer.cross_attn_image_to_token
        moved = first_cached and mask_prompt is not None
        if first_cached:
            p_t, vw = image_to_token_factors(
                i2t, q, queries, q_heads_t=cache.i2t_q_t,
                q_moved=None if mask_prompt is None else (mask_prompt.features, mask_prompt.weight @ i2t.q_proj.weight.t(),
                                                          mask_prompt.offset @ i2t.q_proj.weight.t()),
            )
        else:
            p_t, vw = image_to_token_factors(i2t, q, queries, x_q=keys_pe)
        bias = i2t.out_proj.bias if not moved else i2t.out_proj.bias + mask_prompt.offset  # type: ignore[union-attr]
        if ws is None:
            x = torch.baddbmm(keys + bias, p_t.transpose(1, 2), vw)
        else:  # the same two steps (copy in the biased tokens, accumulate the product) in place
            x = torch.add(keys.expand(b, -1, -1), bias, out=ws.get("x", (b, *keys.shape[1:]), keys))
            x.baddbmm_(p_t.transpose(1, 2), vw)
        if moved:  # the mask prompt's own rank-16 term of the first layer's image tokens
            f = mask_prompt.features.expand(b, -1, -1)  # type: ignore[union-attr]
            x.baddbmm_(f, mask_prompt.weight.expand(b, -1, -1))  # type: ignore[union-attr]
        # the same kernel as norm4(x), which also returns the statistics the fused upscaling needs
        # (its input was the previous layer's tokens, read for the last time above: the one
        # "keys" buffer serves every layer)
        keys, mean, rstd = _layer_norm_stats(x, layer.norm4, ws, "keys", f"norm4.{i}")
        factors.append((p_t, vw, mean, rstd))
    return LayerOutputs(queries, query_pe, keys, factors)


def _fused_up1(
    transformer: TwoWayTransformer,
    cache: DecoderImageCache,
    factors: list[ImageTokenFactors],
    ws: Workspace | None = None,
    mask_prompt: MaskPrompt | None = None,
) -> torch.Tensor:
    """The first upscaling matmul ``keys_final @ up1_w + up1_b`` (B x N x 4*C1) without the
    4096x256x256 product on the per-prompt image tokens.

    Layer l's image tokens are LayerNorm(keys + p_t^T vw + bo), so right-multiplying them
    by S (C x 4*C1) distributes: rstd * (keys @ diag(gamma) S + p_t^T (vw diag(gamma) S)
    + bo diag(gamma) S - mean * colsum(diag(gamma) S)) + beta S. Unrolled down to the cached
    image tokens, with R_l the product of the rstd of layers l.. and S_l = ``up1_chain[l]``:

        R_0 * cache.up1_keys + sum_l [R_l p_t^T (vw S_l) + R_l (bo S_l) - R_l mean (1^T S_l)
                                      + R_{l+1} (beta S_{l+1})] + up1_b

    Everything after the first term is one product of an N x (layers*(heads*T+3)) matrix
    (the scaled attention rows and the per-token scalars) with a matching small right
    factor: one 4096x~120x256 matmul instead of 4096x256x256, equal up to float rounding.

    A ``mask_prompt`` moves the cached image tokens by ``f W^T + offset``: their first-layer
    product gains ``R_0 f (W^T S_0)`` (16 more rows of the left factor) and
    ``R_0 (offset S_0)``, which joins the first layer's bias row.
    """
    chain = [*cache.up1_chain, cache.up1_w]
    scales = [torch.ones_like(factors[0][3])]  # R_L, ..., R_0, each B x N x 1
    for _, _, _, rstd in reversed(factors):
        scales.append(scales[-1] * rstd)
    scales.reverse()  # scales[l] = R_l
    left, right = [], []
    for i, (layer, (p_t, vw, mean, _)) in enumerate(zip(transformer.layers, factors)):
        s_l = chain[i]
        r_t = scales[i].transpose(1, 2)  # B 1 N
        left += [p_t * r_t, r_t, -(mean.transpose(1, 2) * r_t), scales[i + 1].transpose(1, 2)]
        b = vw.shape[0]
        bias = layer.cross_attn_image_to_token.out_proj.bias
        if i == 0 and mask_prompt is not None:
            bias = bias + mask_prompt.offset
        consts = torch.stack([bias @ s_l, s_l.sum(0), layer.norm4.bias @ chain[i + 1]])
        right += [vw @ s_l, consts.expand(b, -1, -1)]
        if i == 0 and mask_prompt is not None:  # (a left/right pair like the others)
            left.append(mask_prompt.features.expand(b, -1, -1).transpose(1, 2) * r_t)
            right.append((mask_prompt.weight @ s_l).expand(b, -1, -1))
    left_t = torch.cat(left, dim=1)  # B K N
    right_m = torch.cat(right, dim=1)  # B K 4C1
    n, k1 = cache.up1_keys.shape[1:]
    # (the image tokens plus pe are no longer needed: their buffer takes the product)
    acc = torch.mul(cache.up1_keys, scales[0], out=_scratch(ws, "keys_pe", (scales[0].shape[0], n, k1), cache.up1_keys))
    acc.baddbmm_(left_t.transpose(1, 2), right_m)
    return acc.add_(cache.up1_b)


def cached_masks(
    decoder: MaskDecoder,
    cache: DecoderImageCache,
    hs: torch.Tensor,
    keys: torch.Tensor,
    mask_slice: slice = slice(None),
    rows: int | None = None,
    cols: int | None = None,
) -> torch.Tensor:
    """Low-res logits BxMx(4H)x(4W) of the selected masks from the transformer's outputs
    (tokens ``hs`` BxTxC, image tokens ``keys`` BxNxC).

    ``rows``/``cols``: only the first rows/columns of the low-res logits are wanted (the
    rest lie in the padding of a non-square image and are never upsampled). The upscaling
    is local (2x2 transposed convolutions, per-pixel norm and GELU), so the image tokens
    are cut to the 4x fewer rows/columns that produce them; the other logits are 0.

    The two forms are equal up to float rounding. Without ``rows``/``cols`` (the
    predictor) the full grid runs as channels-last matmuls with the pixel shuffle applied
    to the 1-3 mask channels only; with them (the generator) the cut grid goes through the
    decoder's own transposed convolutions. Thread CPU time, 256-d decoder, 64x64 grid: one
    prompt 16 ms channels-last against 18 ms convolutions, a group of 4 prompts 77 ms
    against 44 ms (so batched predictor calls could gain from the convolutions too).
    """
    if rows is None and cols is None:
        return _mask_logits_channels_last(decoder, cache, hs, keys, mask_slice)
    b, _, c = keys.shape
    gh, gw = cache.grid
    eh = gh if rows is None else min(gh, -(-rows // 4))
    ew = gw if cols is None else min(gw, -(-cols // 4))
    src = keys.transpose(1, 2).reshape(b, c, gh, gw)
    logits = decoder.mask_logits(hs, src[:, :, :eh, :ew], mask_slice)
    uh, uw = logits.shape[-2:]
    if (uh, uw) == (4 * gh, 4 * gw):
        return logits
    out = logits.new_zeros(b, logits.shape[1], 4 * gh, 4 * gw)
    out[:, :, :uh, :uw] = logits
    return out


def _mask_logits_channels_last(
    decoder: MaskDecoder,
    cache: DecoderImageCache,
    hs: torch.Tensor,
    keys: torch.Tensor,
    mask_slice: slice,
    up1: torch.Tensor | None = None,
    ws: Workspace | None = None,
) -> torch.Tensor:
    """:meth:`MaskDecoder.mask_logits` on the full grid as channels-last matmuls with the
    cache's re-laid-out weights; rows are ordered (pixel, di, dj, ei, ej). ``up1``: the
    first upscaling matmul's output when already computed (:func:`_fused_up1`)."""
    hyper_in = decoder.hypernetwork_weights(hs, mask_slice)  # B M C2
    b, _, c = keys.shape
    gh, gw = cache.grid
    _, ln, act1, _, act2 = decoder.output_upscaling
    c1 = cache.up1_w.shape[1] // 4
    if up1 is None:
        out = _scratch(ws, "keys_pe", (b, keys.shape[1], 4 * c1), keys)
        up1 = torch.addmm(cache.up1_b, keys.reshape(-1, c), cache.up1_w, out=None if out is None else out.view(-1, 4 * c1))
    y = up1.reshape(-1, c1)
    # LayerNorm and GELU in the workspace's buffers when there is one (same kernels; the
    # norm's output takes the transformer's scratch "x", free by now)
    y = _activate(_layer_norm_stats(y, ln, ws, "x", "up1_norm")[0], act1, ws is not None)
    c2 = cache.up2_w.shape[1] // 4
    out = _scratch(ws, "up2", (y.shape[0], 4 * c2), y)
    y = _activate(torch.addmm(cache.up2_b, y, cache.up2_w, out=out), act2, ws is not None).reshape(b, -1, c2)
    m = hyper_in.shape[1]
    masks = torch.bmm(y, hyper_in.transpose(1, 2)).view(b, gh, gw, 2, 2, 2, 2, m)  # B h w di dj ei ej M
    # to B M (h di ei) (w dj ej) in two copies, which measure 0.6 ms less per 3-mask click
    # than one 8-axis permute on this machine (same values): PyTorch's strided copy is slow
    # when no two axes merge, and each step here leaves mergeable runs
    masks = masks.permute(0, 7, 1, 3, 2, 4, 5, 6).contiguous()  # B M h di w dj ei ej
    return masks.permute(0, 1, 2, 3, 6, 4, 5, 7).reshape(b, m, 4 * gh, 4 * gw)


def decode_cached(
    decoder: MaskDecoder,
    cache: DecoderImageCache,
    sparse_prompt_embeddings: torch.Tensor,
    mask_slice: slice,
    image_tokens: torch.Tensor | None = None,
    workspace: Workspace | None = None,
    mask_prompt: MaskPrompt | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same outputs as :meth:`MaskDecoder.predict_masks`: low-res logits BxMx(4H)x(4W) and
    IoU predictions BxM of the mask tokens ``mask_slice`` selects
    (:meth:`MaskDecoder.output_slice`).

    The dense prompt is the no-mask embedding baked into the cache, unless ``mask_prompt``
    (:meth:`MaskPrompt.from_masks`: the cache is updated per prompt, the fast way) or
    ``image_tokens`` (BxNxC, :func:`mask_prompt_tokens`: any dense prompt, recomputing the
    first layer's projections) carries each prompt's mask embedding. Prompts run in
    groups of :data:`DECODE_CHUNK` (see there). ``workspace``: reuse its buffers for the
    4096-row intermediates (:mod:`segany.modeling.workspace`); the outputs are fresh tensors
    either way, and equal.
    """
    # (bad argument combinations are refused by transformer_layers, the one place that checks them)
    if mask_prompt is not None and sparse_prompt_embeddings.shape[0] == 1 < mask_prompt.features.shape[0]:
        # masks only (or one point set for several masks): one decode per mask, as the
        # official decoder broadcasts its single sparse prompt over the dense batch
        sparse_prompt_embeddings = sparse_prompt_embeddings.expand(mask_prompt.features.shape[0], -1, -1)
    b = sparse_prompt_embeddings.shape[0]
    # The final token->image attention only for the tokens the heads read: the IoU token and
    # the mask tokens up to the last selected one (rows are independent; the prompt tokens'
    # outputs are never used): 5 of the 7 rows of a point or box prompt for 3 masks, 2 for one.
    output_rows = slice(0, 1 + mask_slice.indices(decoder.num_mask_tokens)[1])
    low_res, iou = [], []
    for s in range(0, max(b, 1), DECODE_CHUNK):  # (an empty batch still gives empty outputs)
        tokens = None if image_tokens is None else image_tokens[s : s + DECODE_CHUNK]
        mask = None if mask_prompt is None else mask_prompt[s : s + DECODE_CHUNK]
        layers = transformer_layers(decoder, cache, sparse_prompt_embeddings[s : s + DECODE_CHUNK], tokens, workspace, mask)
        hs = final_tokens(decoder, cache, layers, output_rows, ws=workspace)
        # With the cached image tokens the first upscaling matmul distributes over the
        # layers' low-rank updates; per-prompt image tokens would make it no cheaper.
        up1 = None if tokens is not None else _fused_up1(decoder.transformer, cache, layers.factors, workspace, mask)  # type: ignore[arg-type]
        low_res.append(_mask_logits_channels_last(decoder, cache, hs, layers.keys, mask_slice, up1, workspace))
        iou.append(decoder.predict_iou(hs, mask_slice))
    if len(low_res) == 1:
        return low_res[0], iou[0]
    return torch.cat(low_res), torch.cat(iou)
