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


def softmax_short(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over a short axis ``dim`` (the few prompt tokens).

    PyTorch's softmax kernel pays a per-row overhead that dominates for rows of ~7
    elements (32k rows here); the explicit form is several times faster and equal to
    float rounding. With the short axis *not* innermost (``dim=-2`` on a ... x T x N
    layout) the reductions run vectorised over the long contiguous axis, faster still.
    It works in place on a temporary, so it has no autograd.
    """
    e = (x - x.amax(dim=dim, keepdim=True)).exp_()
    return e.div_(e.sum(dim=dim, keepdim=True))


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


def block_diagonal_heads(k: torch.Tensor) -> torch.Tensor:
    """B x h x T x c per-head keys -> B x (h*T) x (h*c), block-diagonal over the heads.

    Why: the first layer's image->token logits are, per head, the cached 4096x16 query
    projection times a 16x7 key matrix; eight such skinny products (and the permute of
    their output) cost more than one (h*T) x (h*c) by (h*c) x N product with the zero
    blocks included. The zeros add exact zeros, so the logits are the same sums.
    """
    b, h, t, c = k.shape
    # a 0/1 head mask rather than an indexed assignment: the same values (x*1 and exact zeros)
    # in one broadcast multiply, which also traces into ONNX (index_put with two index
    # tensors does not export)
    eye = torch.eye(h, dtype=k.dtype, device=k.device).reshape(1, h, 1, h, 1)
    return (k.unsqueeze(3) * eye).reshape(b, h * t, h * c)


def image_to_token(
    attn: Attention,
    t_k: torch.Tensor,
    t_v: torch.Tensor,
    x_q: torch.Tensor | None = None,
    q_heads_t: torch.Tensor | None = None,
) -> torch.Tensor:
    """``attn(q=x_q, k=t_k, v=t_v)``: image tokens attend over the prompt tokens t_k / t_v
    (BxTxC). Returns the attention output BxNxC (before the residual); see
    :func:`image_to_token_factors` for the arguments."""
    p_t, vw = image_to_token_factors(attn, t_k, t_v, x_q, q_heads_t)
    return torch.baddbmm(attn.out_proj.bias.expand(p_t.shape[0], 1, -1), p_t.transpose(1, 2), vw)


def image_to_token_factors(
    attn: Attention,
    t_k: torch.Tensor,
    t_v: torch.Tensor,
    x_q: torch.Tensor | None = None,
    q_heads_t: torch.Tensor | None = None,
    q_moved: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The image->token attention output as a low-rank product: (``p_t`` B x (heads*T) x N,
    ``vw`` B x (heads*T) x D) with output = ``p_t^T @ vw + out_proj.bias``.

    Why the factors: whatever multiplies the output on the right (the cached decoder's
    first upscaling matmul, see :mod:`segany.modeling.cached_decoder`) can be applied to
    the small ``vw`` instead of the 4096-row output.

    Queries are either the image tokens ``x_q`` (BxNxC, = keys + pe) or already projected
    ``q_heads_t`` (1 x (heads*c) x N, transposed: the first layer's, cached per image).
    ``q_moved`` = (f B x N x K, m K x (heads*c), m0 (heads*c)): those cached projections
    moved by ``f m + 1 m0^T`` (a mask prompt, :class:`~segany.modeling.decoder_cache.MaskPrompt`).

    The logits are computed transposed, (heads*T) x N: the softmax over the T prompt
    tokens then reduces across rows of a contiguous N axis (vectorised), and the final
    product reads them through a transposed view (no copy).
    """
    h = attn.num_heads
    k = attn.separate_heads(attn.k_proj(t_k))  # B h T c
    v = attn.separate_heads(attn.v_proj(t_v))
    b, _, t, c = k.shape
    scale = 1.0 / math.sqrt(c)
    if q_heads_t is not None:
        # one (B*hT) x (hc) by (hc) x N product: the cache is shared by the whole batch
        kbd = block_diagonal_heads(k * scale).reshape(b * h * t, h * c)
        logits = (kbd @ q_heads_t[0]).reshape(b, h * t, -1)  # B (hT) N
        if q_moved is not None:  # queries moved by f m + 1 m0^T: (kbd m) f^T + kbd m0, N x 16 products
            f, m, m0 = q_moved
            kbd = kbd.reshape(b, h * t, h * c)
            logits = torch.baddbmm(logits + (kbd @ m0)[..., None], kbd @ m.t(), f.expand(b, -1, -1).transpose(1, 2))
    else:
        if x_q is None:
            raise ValueError("image_to_token needs the image tokens x_q or their projections q_heads_t")
        wq = attn.q_proj.weight.reshape(h, c, -1)  # h c D
        m_t = torch.einsum("bhtc,hcd->bhtd", k, wq).reshape(b, h * t, -1) * scale  # B (hT) D
        bias = torch.einsum("bhtc,hc->bht", k, attn.q_proj.bias.reshape(h, c)).reshape(b, h * t, 1) * scale
        logits = torch.baddbmm(bias, m_t, x_q.transpose(1, 2))  # B (hT) N
    n = logits.shape[-1]
    p_t = softmax_short(logits.reshape(b, h, t, n), dim=2).reshape(b, h * t, n)
    wo = attn.out_proj.weight.reshape(-1, h, c)  # D h c
    vw = torch.einsum("bhtc,dhc->bhtd", v, wo).reshape(b, h * t, -1)  # B (hT) D
    return p_t, vw
