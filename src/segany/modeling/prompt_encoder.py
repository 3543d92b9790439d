"""Prompt encoder (paper section 3 and appendix A): points, boxes, masks and text.

Sparse prompts (points, box corners, text) become 256-d tokens; a dense prompt (the
256x256 logits of a previous prediction) becomes a 64x64x256 map added to the image
embedding. Coordinates are in the *input* frame: the resized image before padding,
i.e. the frame of ``input_image_size`` (1024x1024 for ViT models).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier-feature positional encoding (Tancik et al.), shared by prompts and image.

    The Gaussian matrix is a persistent buffer: it is part of every checkpoint, since the
    decoder was trained against that exact projection.
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode coordinates normalised to [0, 1] (last dim = (x, y)).

        Computed in float32 whatever the module's dtype, and returned in the buffer's dtype:
        the sin/cos arguments reach tens of radians, where bf16 (8 significant bits) would
        be off by a large fraction of a period. For float32 modules nothing changes.
        """
        gaussian = self.positional_encoding_gaussian_matrix
        coords = 2 * coords - 1
        coords = coords @ (gaussian if gaussian.dtype == torch.float32 else gaussian.float())
        coords = 2 * math.pi * coords
        out = torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)
        return out if out.dtype == gaussian.dtype else out.to(gaussian.dtype)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of an HxW grid of cell centres, CxHxW."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode BxNx2 pixel coordinates (x, y) of an image of ``image_size`` = (H, W)."""
        coords = torch.stack(
            [coords_input[..., 0] / image_size[1], coords_input[..., 1] / image_size[0]], dim=-1
        )
        return self._pe_encoding(coords.to(torch.float))


class PromptEncoder(nn.Module):
    """Embeds prompts for the mask decoder.

    Args:
        embed_dim: token dimension (256).
        image_embedding_size: (H, W) of the image embedding (64, 64).
        input_image_size: (H, W) of the padded encoder input (1024, 1024).
        mask_in_chans: hidden channels of the mask-prompt downscaler (16).
        text_embed_dim: if set, adds ``text_projection`` mapping a text embedding of this
            size (e.g. 768 for CLIP ViT-L/14@336) to one sparse token (paper section 7.5).
            Official checkpoints have no such weights, so it is off by default.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
        text_embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: background point, 1: foreground point, 2: box top-left, 3: box bottom-right
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self.text_embed_dim = text_embed_dim
        self.text_projection: nn.Module | None = None
        if text_embed_dim is not None:
            self.text_projection = nn.Sequential(
                nn.Linear(text_embed_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim)
            )
        self._dense_pe_cache: tuple[tuple, torch.Tensor] | None = None

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid, 1xCxHxW.

        It depends only on a fixed buffer, so it is cached (keyed on the buffer's version
        and device, so loading a state dict or moving the model invalidates it).
        """
        g = self.pe_layer.positional_encoding_gaussian_matrix
        key = (g.device, g.dtype, g._version, g.data_ptr(), self.image_embedding_size)
        if self.training or torch.is_grad_enabled() or self._dense_pe_cache is None or self._dense_pe_cache[0] != key:
            pe = self.pe_layer(self.image_embedding_size).unsqueeze(0)
            if self.training or torch.is_grad_enabled():
                return pe
            self._dense_pe_cache = (key, pe)
        return self._dense_pe_cache[1]

    def embed_point_tokens(self, coords: torch.Tensor, labels: torch.Tensor, num_labels: int = 4) -> torch.Tensor:
        """The one point/box-corner token embedder: BxNx2 pixel coordinates (x, y) in the
        input frame with BxN labels -> BxNxC tokens.

        A token is the Fourier encoding of the pixel centre plus the learned embedding of
        its label: -1 padding (the learned ``not_a_point_embed`` *replaces* the encoding),
        0 background, 1 foreground, 2 box top-left, 3 box bottom-right. Labels from
        ``num_labels`` up get the bare encoding: the official encoder gives point prompts
        (``num_labels=2``) only labels -1/0/1, while the ONNX graph and training put box
        corners in the same tensor as points (the transformer does not depend on token
        order). Labels may be integers or floats (the ONNX contract).
        """
        pe = self.pe_layer.forward_with_coords(coords + 0.5, self.input_image_size)  # shift to the pixel centre
        lab = labels[..., None]
        pe = torch.where(lab == -1, self.not_a_point_embed.weight, pe)
        for k in range(num_labels):
            pe = torch.where(lab == k, pe + self.point_embeddings[k].weight, pe)
        return pe

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """BxNx2 points (input frame) with BxN labels (1 fg, 0 bg, -1 padding) -> BxN'xC."""
        if pad:
            points = torch.cat([points, points.new_zeros((points.shape[0], 1, 2))], dim=1)
            labels = torch.cat([labels, -labels.new_ones((labels.shape[0], 1))], dim=1)
        return self.embed_point_tokens(points, labels, num_labels=2)

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Bx4 boxes XYXY (input frame) -> Bx2xC corner tokens."""
        corners = boxes.reshape(-1, 2, 2)
        labels = torch.tensor([[2, 3]], device=corners.device).expand(corners.shape[0], 2)
        return self.embed_point_tokens(corners, labels)

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Bx1x256x256 mask logits -> Bx256x64x64 dense embedding (in this module's dtype:
        float32 logits from an earlier call feed a half-precision model as well)."""
        return self.mask_downscaling(masks.to(self._get_dtype()))

    def _embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """BxD text embeddings -> Bx1xC sparse token."""
        if self.text_projection is None:
            raise ValueError(
                "this model has no text-prompt weights (prompt_encoder.text_projection); "
                "build it with text_embed_dim and train or load them before using text prompts"
            )
        return self.text_projection(text.to(self._get_dtype())).unsqueeze(1)

    @staticmethod
    def _get_batch_size(
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        text: torch.Tensor | None = None,
    ) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        if text is not None:
            return text.shape[0]
        return 1

    def _get_device(self) -> torch.device:
        return self.point_embeddings[0].weight.device

    def _get_dtype(self) -> torch.dtype:
        """The dtype of the prompt tokens (float32, or the half type the model was moved to)."""
        return self.point_embeddings[0].weight.dtype

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (sparse BxNxC, dense BxCxHxW) embeddings.

        Token order is points, box corners, text; a padding point is appended to the
        points when no box is given (the model was trained that way).
        """
        bs = self._get_batch_size(points, boxes, masks, text)
        tokens = []
        if points is not None:
            coords, labels = points
            tokens.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            tokens.append(self._embed_boxes(boxes))
        if text is not None:
            tokens.append(self._embed_text(text))
        if tokens:
            sparse = torch.cat(tokens, dim=1) if len(tokens) > 1 else tokens[0]
        else:
            sparse = torch.empty((bs, 0, self.embed_dim), device=self._get_device(), dtype=self._get_dtype())
        dense = self._embed_masks(masks) if masks is not None else self.no_mask_dense(bs)
        return sparse, dense

    def no_mask_dense(self, batch: int = 1, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The dense prompt of "no mask": the learned ``no_mask_embed`` at every position.

        Returned as an expanded view (batch x C x H x W, no copy): the decoder only adds it to
        the image embedding. ``size`` defaults to the image embedding grid; the decoder caches,
        the ONNX graph and training build it at other grids or batch sizes.
        """
        h, w = self.image_embedding_size if size is None else size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)
