"""The two-way transformer of the mask decoder (paper figure 14).

Prompt tokens and image tokens attend to each other in both directions: token
self-attention, token->image cross-attention, an MLP on the tokens, then image->token
cross-attention that updates the image embedding. Positional encodings are re-added to
queries and keys at every attention, and cross-attention works in a 128-channel space
(downsample rate 2) to stay cheap on 4096 image tokens.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections into ``embedding_dim // downsample_rate``."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    @staticmethod
    def _recombine_heads(x: Tensor) -> Tensor:
        b, h, n, c = x.shape
        return x.transpose(1, 2).reshape(b, n, h * c)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))
        return self.attend(q, k, v)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention on already projected, head-separated q/k/v (B x heads x N x C)."""
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(self._recombine_heads(out))


class TwoWayAttentionBlock(nn.Module):
    """One layer of the two-way transformer (sparse tokens <-> dense image tokens)."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        query_pe: Tensor,
        key_pe: Tensor,
        image_cache: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``image_cache`` holds projections of ``keys``/``keys + key_pe`` computed earlier for
        the same image (see :meth:`TwoWayTransformer.image_projections`); they are identical to
        what this call would compute, so passing them only saves time."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        t2i = self.cross_attn_token_to_image
        q = queries + query_pe
        if image_cache is not None:
            k_heads, v_heads = image_cache["t2i_k"], image_cache["t2i_v"]
            k_heads = k_heads.expand(q.shape[0], -1, -1, -1)
            v_heads = v_heads.expand(q.shape[0], -1, -1, -1)
            attn_out = t2i.attend(t2i._separate_heads(t2i.q_proj(q)), k_heads, v_heads)
        else:
            k = keys + key_pe
            attn_out = t2i(q=q, k=k, v=keys)
        queries = self.norm2(queries + attn_out)
        queries = self.norm3(queries + self.mlp(queries))

        i2t = self.cross_attn_image_to_token
        q = queries + query_pe
        if image_cache is not None:
            img_q = image_cache["i2t_q"].expand(q.shape[0], -1, -1, -1)
            attn_out = i2t.attend(img_q, i2t._separate_heads(i2t.k_proj(q)), i2t._separate_heads(i2t.v_proj(queries)))
        else:
            k = keys + key_pe
            attn_out = i2t(q=k, k=q, v=queries)
        keys = self.norm4(keys + attn_out)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks followed by a final token->image attention."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def image_projections(self, image_embedding: Tensor, image_pe: Tensor) -> dict[str, Tensor]:
        """Projections of the first layer that depend only on the image side.

        Before the first image->token attention the image tokens are still the (dense
        prompt + image) embedding, so for a fixed image and dense prompt these three
        4096-token projections are the same for every prompt; the predictor computes them
        once per image. Inputs are 1xCxHxW.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        layer = self.layers[0]
        k = keys + key_pe
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        return {
            "t2i_k": t2i._separate_heads(t2i.k_proj(k)),
            "t2i_v": t2i._separate_heads(t2i.v_proj(keys)),
            "i2t_q": i2t._separate_heads(i2t.q_proj(k)),
        }

    def forward(
        self,
        image_embedding: Tensor,
        image_pe: Tensor,
        point_embedding: Tensor,
        image_cache: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """
        Args:
            image_embedding: BxCxHxW (already including the dense prompt).
            image_pe: BxCxHxW (or 1xCxHxW) positional encoding.
            point_embedding: BxNxC prompt + output tokens.
            image_cache: optional first-layer projections from :meth:`image_projections`.
        Returns:
            (tokens BxNxC, image tokens BxHWxC) after the transformer.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for i, layer in enumerate(self.layers):
            cache = image_cache if i == 0 else None
            queries, keys = layer(queries, keys, point_embedding, key_pe, image_cache=cache)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys
