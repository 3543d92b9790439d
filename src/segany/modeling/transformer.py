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

    def separate_heads(self, x: Tensor) -> Tensor:
        """B x N x (heads*c) -> B x heads x N x c (a view when ``x`` is contiguous)."""
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    @staticmethod
    def recombine_heads(x: Tensor) -> Tensor:
        """B x heads x N x c -> B x N x (heads*c), the inverse of :meth:`separate_heads`."""
        b, h, n, c = x.shape
        return x.transpose(1, 2).reshape(b, n, h * c)

    # The official module's names, for code written against ``segment_anything``.
    _separate_heads = separate_heads
    _recombine_heads = recombine_heads

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q = self.separate_heads(self.q_proj(q))
        k = self.separate_heads(self.k_proj(k))
        v = self.separate_heads(self.v_proj(v))
        return self.attend(q, k, v)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention on already projected, head-separated q/k/v (B x heads x N x c).

        Split from :meth:`forward` so that projections computed once per image (see
        :class:`segany.modeling.decoder_cache.DecoderImageCache`) can be attended over.
        """
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(self.recombine_heads(out))


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

    def token_self_attention(self, queries: Tensor, query_pe: Tensor) -> Tensor:
        """The block's first step, on the prompt tokens alone (BxTxC): self-attention and
        norm. The first layer has no residual or PE here (its queries *are* the PE). Public
        because it involves no image token, so the cached inference path runs it as is."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        return self.norm1(queries)

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        """(queries BxTxC, keys BxNxC) -> updated (queries, keys); the PEs are re-added to
        queries and keys at every attention."""
        queries = self.token_self_attention(queries, query_pe)
        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
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

    def forward(
        self,
        image_embedding: Tensor,
        image_pe: Tensor,
        point_embedding: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """
        Args:
            image_embedding: BxCxHxW (already including the dense prompt).
            image_pe: BxCxHxW (or 1xCxHxW) positional encoding.
            point_embedding: BxNxC prompt + output tokens.
        Returns:
            (tokens BxNxC, image tokens BxHWxC) after the transformer.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys
