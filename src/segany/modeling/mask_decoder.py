"""The lightweight mask decoder (paper section 3, appendix A, figure 14).

An IoU token and 4 mask tokens are prepended to the prompt tokens; after the two-way
transformer the image tokens are upscaled 4x (64x64 -> 256x256) by two transposed convs,
each mask token passes through its own 3-layer hypernetwork MLP to give the weights of a
dynamic linear classifier over the upscaled channels, and the IoU token predicts one IoU
per mask. Mask 0 is the single-output mask (used when several prompts disambiguate);
masks 1-3 are the whole/part/subpart outputs for an ambiguous single prompt.

:class:`MaskDecoder` computes exactly what the official one does (the path for training
and the one the tests hold against the reference). Its output-token, hypernetwork and IoU
heads are public methods because the exact cached inference path
(:mod:`segany.modeling.cached_decoder`) runs them unchanged and re-associates only the
attention and the upscaling.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP, LayerNorm2d


class MaskDecoder(nn.Module):
    """Predicts masks and IoU scores from an image embedding and prompt embeddings."""

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    @staticmethod
    def output_slice(multimask_output: bool) -> slice:
        """The mask tokens a call returns: 1..3 (whole/part/subpart) for an ambiguous
        prompt, else token 0 alone."""
        return slice(1, None) if multimask_output else slice(0, 1)

    def output_tokens(self, sparse_prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """BxNxC prompt tokens -> Bx(1+M+N)xC transformer queries: the IoU token, the M mask
        tokens, then the prompts (cast to the decoder's dtype)."""
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        return torch.cat((output_tokens, sparse_prompt_embeddings.to(output_tokens.dtype)), dim=1)

    def hypernetwork_weights(self, hs: torch.Tensor, mask_slice: slice = slice(None)) -> torch.Tensor:
        """Transformer output tokens BxTxC -> BxMx(C/8): per selected mask token, the weights
        of its linear classifier over the upscaled channels.

        Only the selected hypernetworks run: each mask depends on its own token alone, so
        skipping the unused ones changes nothing but the time.
        """
        indices = range(self.num_mask_tokens)[mask_slice]
        return torch.stack([self.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in indices], dim=1)

    def mask_logits(self, hs: torch.Tensor, image: torch.Tensor, mask_slice: slice = slice(None)) -> torch.Tensor:
        """Transformer output tokens BxTxC and image tokens BxCxhxw -> BxMx(4h)x(4w) logits:
        the 4x upscaled image tokens classified per pixel by each selected mask token's
        hypernetwork weights. Any h x w works (the upscaling is local to each pixel)."""
        upscaled = self.output_upscaling(image)
        hyper_in = self.hypernetwork_weights(hs, mask_slice)
        b, uc, uh, uw = upscaled.shape
        return (hyper_in @ upscaled.reshape(b, uc, uh * uw)).reshape(b, -1, uh, uw)

    def predict_iou(self, hs: torch.Tensor, mask_slice: slice = slice(None)) -> torch.Tensor:
        """Transformer output tokens BxTxC -> BxM predicted IoUs of the selected masks (the
        IoU head reads the IoU token only, never the masks)."""
        return self.iou_prediction_head(hs[:, 0, :])[:, mask_slice]

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The official computation (training, the batched ``Sam.forward``, ONNX export).

        Interactive inference goes through the exact cached path of
        :mod:`segany.modeling.cached_decoder` instead, which needs no autograd.

        Args:
            image_embeddings: 1xCxHxW (shared by every prompt set) or BxCxHxW (one per set).
            image_pe: 1xCxHxW positional encoding of the embedding grid.
            sparse_prompt_embeddings: BxNxC.
            dense_prompt_embeddings: BxCxHxW (or 1xCxHxW).
            multimask_output: return masks 1..3 instead of mask 0.
        Returns:
            low-res mask logits BxMx(4H)x(4W) and IoU predictions BxM, M = 3 or 1.
        """
        return self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            mask_slice=self.output_slice(multimask_output),
        )

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        mask_slice: slice = slice(None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All-output form of :meth:`forward` (``mask_slice`` selects the mask tokens to decode)."""
        hs, image = self.run_transformer(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        return self.mask_logits(hs, image, mask_slice), self.predict_iou(hs, mask_slice)

    def run_transformer(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer of :meth:`predict_masks`: (output tokens BxTxC, image
        tokens BxCxhxw), what the mask and IoU heads read (kept apart for callers that need
        the heads' inputs, e.g. :mod:`segany.train.iou_head`)."""
        b = sparse_prompt_embeddings.shape[0]
        tokens = self.output_tokens(sparse_prompt_embeddings)
        # Every input in the decoder's dtype (no-ops for float32): an encoder or embedding
        # file in another precision must not turn the sums below into mixed-dtype matmuls.
        dtype = tokens.dtype
        image_embeddings = image_embeddings.to(dtype)
        image_pe = image_pe.to(dtype)
        dense_prompt_embeddings = dense_prompt_embeddings.to(dtype)

        if image_embeddings.shape[0] not in (1, b):
            raise ValueError(
                f"image_embeddings batch {image_embeddings.shape[0]} must be 1 or match the "
                f"prompt batch {b}"
            )
        src = image_embeddings + dense_prompt_embeddings
        if src.shape[0] != b:
            src = src.expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens)
        return hs, src.transpose(1, 2).reshape(b, c, h, w)
