"""Cross-attention between a few prompt tokens and many image tokens, re-associated.

The prompt side of the decoder is tiny (a handful of tokens) while the image side is 4096
tokens of 256 channels. :class:`~segany.modeling.transformer.Attention` projects all 4096
image tokens to keys/values/queries for every attention; here the algebra is
re-associated so that the *few tokens* are projected into the 256-d image space instead:

- token->image: ``softmax(q Wk x^T) (x Wv^T + bv)`` = ``(softmax((q Wk) x^T) x) Wv^T + bv``
  (rows of a softmax sum to one; ``q.bk`` is constant along the softmax axis and cancels);
- image->token: ``softmax(x Wq^T k^T + bq k^T) v Wo^T`` = ``softmax(x (Wq^T k^T) + ..) (v Wo^T)``.

Each 4096x256x128 projection becomes a 4096x256x(8*tokens) product. The functions take the
:class:`Attention` module whose weights they use and return what its ``forward`` returns,
equal up to float rounding. They are inference-only (the short softmax works in place).
"""

from __future__ import annotations

import math

import torch

from .transformer import Attention


def softmax_short(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis (the few prompt tokens).

    PyTorch's softmax kernel pays a per-row overhead that dominates for rows of ~7
    elements (32k rows here); the explicit form is several times faster and equal to
    float rounding. It works in place on a temporary, so it has no autograd.
    """
    e = (x - x.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-1, keepdim=True))


def token_to_image(attn: Attention, q_in: torch.Tensor, x_k: torch.Tensor, x_v: torch.Tensor) -> torch.Tensor:
    """``attn(q=q_in, k=x_k, v=x_v)``: tokens q_in (BxTxC) attend over image tokens
    (x_k = keys + pe, x_v = keys; BxNxC). Returns BxTxC."""
    h = attn.num_heads
    b, t, _ = q_in.shape
    q = attn.separate_heads(attn.q_proj(q_in))  # B h T c
    c = q.shape[-1]
    wk = attn.k_proj.weight.reshape(h, c, -1)  # h c D
    a = torch.einsum("bhtc,hcd->bhtd", q, wk) * (1.0 / math.sqrt(c))
    logits = a.reshape(b, h * t, -1) @ x_k.transpose(1, 2)  # B (hT) N
    p = torch.softmax(logits, dim=-1)
    pv = (p @ x_v).reshape(b, h, t, -1)  # B h T D
    wv = attn.v_proj.weight.reshape(h, c, -1)
    out = torch.einsum("bhtd,hcd->bhtc", pv, wv) + attn.v_proj.bias.reshape(h, c)[None, :, None, :]
    return attn.out_proj(attn.recombine_heads(out))


def image_to_token(
    attn: Attention,
    t_k: torch.Tensor,
    t_v: torch.Tensor,
    x_q: torch.Tensor | None = None,
    q_heads: torch.Tensor | None = None,
) -> torch.Tensor:
    """``attn(q=x_q, k=t_k, v=t_v)``: image tokens attend over the prompt tokens t_k / t_v
    (BxTxC). Returns the attention output BxNxC (before the residual).

    Queries are either the image tokens ``x_q`` (BxNxC, = keys + pe) or already projected
    ``q_heads`` (1 x heads x N x c: the first layer's, cached per image).
    """
    h = attn.num_heads
    k = attn.separate_heads(attn.k_proj(t_k))  # B h T c
    v = attn.separate_heads(attn.v_proj(t_v))
    b, _, t, c = k.shape
    scale = 1.0 / math.sqrt(c)
    if q_heads is not None:
        logits = (q_heads @ k.transpose(-1, -2)) * scale  # B h N T
        logits = logits.permute(0, 2, 1, 3)  # B N h T
    else:
        if x_q is None:
            raise ValueError("image_to_token needs the image tokens x_q or their projections q_heads")
        wq = attn.q_proj.weight.reshape(h, c, -1)  # h c D
        m = torch.einsum("bhtc,hcd->bdht", k, wq).reshape(b, -1, h * t) * scale  # B D (hT)
        bias = torch.einsum("bhtc,hc->bht", k, attn.q_proj.bias.reshape(h, c)).reshape(b, 1, h * t) * scale
        logits = torch.baddbmm(bias, x_q, m).reshape(b, -1, h, t)  # B N h T
    p = softmax_short(logits).reshape(b, -1, h * t)
    wo = attn.out_proj.weight.reshape(-1, h, c)  # D h c
    vw = torch.einsum("bhtc,dhc->bhtd", v, wo).reshape(b, h * t, -1)  # B (hT) D
    return torch.baddbmm(attn.out_proj.bias.expand(b, 1, -1), p, vw)
