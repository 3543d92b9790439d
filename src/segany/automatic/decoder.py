"""The mask decoder, rearranged for grids of single-point prompts (same function, less work).

For a point grid the decoder runs once per point, and almost all of its work is on the
4096 image tokens: projecting them into the 128-channel attention space (q, k, v) and back
(out_proj), 7 such 4096x256x128 products per prompt. But the prompt side has only
T = 7 tokens (IoU, 4 mask tokens, the point and its padding point), so the attention
between the image and the tokens has rank at most heads x T = 56 per prompt, and the
products can be reassociated to go through that 56-wide space instead of the 128-wide one:

- token->image attention: ``softmax(q_h (K W_k,h)^T) (K W_v,h)`` is computed as
  ``softmax((q_h W_k,h) K^T) K W_v,h`` -- the tokens are projected into the image space
  (T x 256 per head) instead of the image into the attention space;
- image->token attention: the image queries meet ``W_q,h^T k_h`` (256 x T per head), and
  the output projection is folded into the token values (``v_h W_o,h^T``, T x 256), so
  ``out_proj`` never runs on 4096 tokens.

That is ~410 M instead of ~940 M multiply-adds per prompt, with the same result up to
float rounding (the conformance tests hold it to the official decoder). The first layer's
image-side projections are prompt independent and computed once per image; the 4x output
upscaling and the hypernetwork heads run only for the prompts the caller asks for (those
with an output above the predicted-IoU threshold).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..modeling import Sam
from ..modeling.transformer import Attention


def _heads(w: Tensor, attn: Attention) -> Tensor:
    """Projection weight ``internal x C`` -> ``heads x d x C``."""
    return w.reshape(attn.num_heads, attn.internal_dim // attn.num_heads, w.shape[-1])


def token_to_image(attn: Attention, q: Tensor, img_k: Tensor, img_v: Tensor) -> Tensor:
    """``attn(q=q, k=img_k, v=img_v)`` for T tokens q (BxTxC) attending to N image tokens
    (img_k, img_v: BxNxC or 1xNxC), through the heads x T space."""
    b, t, _ = q.shape
    h = attn.num_heads
    d = attn.internal_dim // h
    qp = attn.q_proj(q).reshape(b, t, h, d) / math.sqrt(d)
    wk = _heads(attn.k_proj.weight, attn)  # h x d x C
    qt = torch.einsum("bthd,hdc->bhtc", qp, wk).reshape(b, h * t, -1)
    bias = torch.einsum("bthd,hd->bht", qp, attn.k_proj.bias.reshape(h, d)).reshape(b, h * t, 1)
    probs = torch.softmax(torch.baddbmm(bias, qt, img_k.expand(b, -1, -1).transpose(1, 2)), dim=-1)
    pv = torch.bmm(probs, img_v.expand(b, -1, -1)).reshape(b, h, t, -1)  # b x h x t x C
    out = torch.einsum("bhtc,hdc->bthd", pv, _heads(attn.v_proj.weight, attn)) + attn.v_proj.bias.reshape(h, d)
    return attn.out_proj(out.reshape(b, t, h * d))


def image_to_token(
    attn: Attention, residual: Tensor, img_q: Tensor | None, k: Tensor, v: Tensor, q_heads: Tensor | None = None
) -> Tensor:
    """``residual + attn(q=img_q, k=k, v=v)`` for N image tokens (img_q: BxNxC) attending to
    T tokens (k, v: BxTxC); ``residual`` is BxNxC or 1xNxC.

    Scores are laid out tokens-first (B x heads x T x N) so the softmax over the T tokens
    runs along contiguous image positions. The output projection is folded into the token
    values, and its bias too: each head's weights sum to one, so adding ``bias / heads`` to
    every folded value row adds ``bias`` to the output. The residual add is the GEMM's
    accumulate.

    ``q_heads`` (1 x heads x N x d): the image queries already projected (first layer),
    used instead of ``img_q``.
    """
    b, t, c = k.shape
    h = attn.num_heads
    d = attn.internal_dim // h
    kp = attn.k_proj(k).reshape(b, t, h, d) / math.sqrt(d)
    vp = attn.v_proj(v).reshape(b, t, h, d)
    if q_heads is not None:
        n = q_heads.shape[2]
        kh = kp.permute(2, 0, 1, 3).reshape(h, b * t, d)
        scores = torch.bmm(kh, q_heads[0].transpose(1, 2)).reshape(h, b, t, n)
        probs = torch.softmax(scores, dim=2).transpose(0, 1).reshape(b, h * t, n)
    else:
        assert img_q is not None
        n = img_q.shape[1]
        g = torch.einsum("bthd,hdc->bhtc", kp, _heads(attn.q_proj.weight, attn)).reshape(b, h * t, c)
        bias = torch.einsum("bthd,hd->bht", kp, attn.q_proj.bias.reshape(h, d)).reshape(b, h * t, 1)
        scores = torch.baddbmm(bias, g, img_q.expand(b, -1, -1).transpose(1, 2))  # b x (h t) x N
        probs = torch.softmax(scores.reshape(b, h, t, n), dim=2).reshape(b, h * t, n)
    wo = attn.out_proj.weight.reshape(c, h, d)
    m = torch.einsum("bthd,chd->bhtc", vp, wo) + attn.out_proj.bias / h
    return torch.baddbmm(residual, probs.transpose(1, 2), m.reshape(b, h * t, c))


class GridDecoder:
    """Decoder for one image and many single-point prompts (see the module docstring)."""

    def __init__(self, model: Sam, features: Tensor) -> None:
        self.model = model
        pe_layer = model.prompt_encoder
        dec = model.mask_decoder
        self.image_pe = pe_layer.get_dense_pe()
        dense = pe_layer.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *pe_layer.image_embedding_size)
        src = features + dense
        _, c, self.h, self.w = src.shape
        self.keys0 = src.flatten(2).transpose(1, 2)  # 1 x N x C
        self.key_pe = self.image_pe.flatten(2).transpose(1, 2)
        self.cache = dec.transformer.image_projections(src, self.image_pe)

    def transformer(self, sparse: Tensor) -> tuple[Tensor, Tensor]:
        """(tokens BxTxC, image tokens BxNxC) after the two-way transformer."""
        dec = self.model.mask_decoder
        tr = dec.transformer
        b = sparse.shape[0]
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0).unsqueeze(0).expand(b, -1, -1)
        point_embedding = torch.cat((tokens, sparse.to(tokens.dtype)), dim=1)
        queries = point_embedding
        keys = self.keys0
        for i, layer in enumerate(tr.layers):
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(q=queries, k=queries, v=queries)
            else:
                q = queries + point_embedding
                queries = queries + layer.self_attn(q=q, k=q, v=queries)
            queries = layer.norm1(queries)
            q = queries + point_embedding
            t2i = layer.cross_attn_token_to_image
            if i == 0:
                attn_out = self._first_token_to_image(t2i, q)
            else:
                keys_pe = keys + self.key_pe
                attn_out = token_to_image(t2i, q, keys_pe, keys)
            queries = layer.norm2(queries + attn_out)
            queries = layer.norm3(queries + layer.mlp(queries))
            q = queries + point_embedding
            i2t = layer.cross_attn_image_to_token
            if i == 0:
                keys = image_to_token(i2t, keys, None, q, queries, q_heads=self.cache["i2t_q"])
            else:
                keys = image_to_token(i2t, keys, keys_pe, q, queries)
            keys = layer.norm4(keys)
        q = queries + point_embedding
        attn_out = token_to_image(tr.final_attn_token_to_image, q, keys + self.key_pe, keys)
        queries = tr.norm_final_attn(queries + attn_out)
        return queries, keys

    def _first_token_to_image(self, attn: Attention, q: Tensor) -> Tensor:
        """First-layer token->image attention on the shared, already projected image keys
        and values: heads are the batch of the products, so nothing is copied per prompt."""
        b, t, _ = q.shape
        h = attn.num_heads
        d = attn.internal_dim // h
        qh = attn.q_proj(q).reshape(b * t, h, d).transpose(0, 1)  # h x (b t) x d
        k = self.cache["t2i_k"][0]  # h x N x d
        v = self.cache["t2i_v"][0]
        probs = torch.softmax(torch.bmm(qh, k.transpose(1, 2)) / math.sqrt(d), dim=-1)
        out = torch.bmm(probs, v)  # h x (b t) x d
        return attn.out_proj(out.transpose(0, 1).reshape(b, t, h * d))

    def iou(self, hs: Tensor) -> Tensor:
        """Predicted IoU of the multimask outputs (Bx3)."""
        return self.model.mask_decoder.iou_prediction_head(hs[:, 0, :])[:, 1:]

    def masks(self, hs: Tensor, keys: Tensor, rows: int | None = None, cols: int | None = None) -> Tensor:
        """Low-res logits of the multimask outputs (Bx3x256x256) for the given prompts.

        ``rows``/``cols``: only the first rows/columns of the low-res logits are wanted (the
        rest lie in the padding of a non-square image and are never upsampled). The output
        upscaling is local (2x2 transposed convolutions, per-pixel norm and GELU), so the
        embedding is cut to the 4x fewer rows/columns that produce them; the other logits
        are returned as 0.
        """
        dec = self.model.mask_decoder
        b, _, c = keys.shape
        src = keys.transpose(1, 2).reshape(b, c, self.h, self.w)
        low_h, low_w = 4 * self.h, 4 * self.w
        eh = self.h if rows is None else min(self.h, -(-rows // 4))
        ew = self.w if cols is None else min(self.w, -(-cols // 4))
        upscaled = dec.output_upscaling(src[:, :, :eh, :ew])
        hyper = torch.stack(
            [dec.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in range(1, dec.num_mask_tokens)], dim=1
        )
        _, uc, uh, uw = upscaled.shape
        logits = (hyper @ upscaled.reshape(b, uc, uh * uw)).reshape(b, -1, uh, uw)
        if (uh, uw) == (low_h, low_w):
            return logits
        out = logits.new_zeros(b, logits.shape[1], low_h, low_w)
        out[:, :, :uh, :uw] = logits
        return out
