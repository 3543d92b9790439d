"""A small convolutional image encoder for segany's default model.

Why a CNN: the default model is trained from scratch on ~1.7k images on a CPU. A plain ViT
has no locality prior and needed ~18x the epochs of a pretrained one in SimpleClick; every
efficient interactive-segmentation model (RITM, ClickSEG, FocalClick, EdgeSAM) is a CNN or
a hierarchical network. This encoder is a residual CNN (GroupNorm, which works with the
few images a CPU step holds) with:

- a pyramid to stride 32 and two self-attention blocks there, so every position sees the
  whole image (objects larger than a receptive field are common);
- a top-down path (FPN) back to stride 8: the embedding grid is SAM's 64x64 for a 512 px
  input, so the prompt encoder, the mask decoder, the ONNX export and the browser page are
  SAM's unchanged;
- a *detail path*: stride-2 and stride-4 features are folded into the stride-8 embedding
  with ``pixel_unshuffle``. The decoder's two stride-2 transposed convolutions are exactly
  the inverse (a learned depth-to-space), so high-resolution edge information reaches the
  256x256 low-res masks without any change to the decoder (a SAM-HQ-like early-feature
  fusion that runs wherever the decoder runs, the page included).

The encoder is fully convolutional: training runs it on small crops (a smaller grid), and
inference on the padded ``img_size`` square.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4), channels)


class ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1, kernel: int = 3) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), _norm(cout), nn.GELU()
        )


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet basic block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm1 = _norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm2 = _norm(channels)
        nn.init.zeros_(self.norm2.weight)  # each block starts as the identity: stable from scratch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.norm1(self.conv1(x)))
        return F.gelu(x + self.norm2(self.conv2(y)))


class GlobalBlock(nn.Module):
    """Pre-norm transformer block over the stride-32 positions (global context)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.pos = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)  # conditional position encoding
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.mlp[2].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # B x HW x C
        q, k, v = self.qkv(self.norm1(t)).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        t = t + self.proj(a)
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class ImageEncoderCNN(nn.Module):
    """Residual CNN + FPN + detail path -> ``out_chans`` x (S/8) x (S/8) embedding.

    Args:
        img_size: side of the square input the model is used with (the grid is img_size/8).
        widths: channels at strides 2, 4, 8, 16, 32.
        depths: residual blocks at strides 4, 8, 16, 32.
        global_blocks: self-attention blocks at stride 32.
        fpn_dim: channels of the top-down path.
        detail_dims: channels folded in from strides 2 and 4 (each multiplied by 16 and 4
            by ``pixel_unshuffle``).
    """

    def __init__(
        self,
        img_size: int = 512,
        widths: tuple[int, ...] = (32, 64, 128, 224, 320),
        depths: tuple[int, ...] = (1, 2, 3, 2),
        global_blocks: int = 2,
        fpn_dim: int = 128,
        detail_dims: tuple[int, int] = (8, 16),
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        if len(widths) != 5 or len(depths) != 4:
            raise ValueError(f"widths needs 5 entries and depths 4 (got {widths}, {depths})")
        self.img_size = int(img_size)
        self.grad_checkpointing = False
        w2, w4, w8, w16, w32 = widths
        self.stem = ConvNormAct(3, w2, stride=2)
        self.stage4 = nn.Sequential(ConvNormAct(w2, w4, stride=2), *[ResBlock(w4) for _ in range(depths[0])])
        self.stage8 = nn.Sequential(ConvNormAct(w4, w8, stride=2), *[ResBlock(w8) for _ in range(depths[1])])
        self.stage16 = nn.Sequential(ConvNormAct(w8, w16, stride=2), *[ResBlock(w16) for _ in range(depths[2])])
        self.stage32 = nn.Sequential(ConvNormAct(w16, w32, stride=2), *[ResBlock(w32) for _ in range(depths[3])])
        self.context = nn.Sequential(*[GlobalBlock(w32, heads=max(1, w32 // 64)) for _ in range(global_blocks)])
        self.lat32 = nn.Conv2d(w32, fpn_dim, 1)
        self.lat16 = nn.Conv2d(w16, fpn_dim, 1)
        self.lat8 = nn.Conv2d(w8, fpn_dim, 1)
        self.smooth16 = ConvNormAct(fpn_dim, fpn_dim)
        self.smooth8 = ConvNormAct(fpn_dim, fpn_dim)
        self.detail2 = nn.Conv2d(w2, detail_dims[0], 1)
        self.detail4 = nn.Conv2d(w4, detail_dims[1], 1)
        fused = fpn_dim + 16 * detail_dims[0] + 4 * detail_dims[1]
        self.neck = nn.Sequential(
            nn.Conv2d(fused, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.GELU(),
            nn.Conv2d(out_chans, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
        )

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and x.requires_grad:
            from torch.utils.checkpoint import checkpoint

            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"the CNN encoder needs sides divisible by 32 (got {tuple(x.shape[-2:])})")
        s2 = self._run(self.stem, x)
        s4 = self._run(self.stage4, s2)
        s8 = self._run(self.stage8, s4)
        s16 = self._run(self.stage16, s8)
        s32 = self._run(self.context, self._run(self.stage32, s16))
        p16 = self.lat16(s16) + F.interpolate(self.lat32(s32), size=s16.shape[-2:], mode="nearest")
        p16 = self._run(self.smooth16, p16)
        p8 = self.lat8(s8) + F.interpolate(p16, size=s8.shape[-2:], mode="bilinear", align_corners=False)
        p8 = self._run(self.smooth8, p8)
        d2 = F.pixel_unshuffle(self.detail2(s2), 4)
        d4 = F.pixel_unshuffle(self.detail4(s4), 2)
        return self.neck(torch.cat([p8, d2, d4], dim=1))
