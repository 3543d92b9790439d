"""The mask decoder split for grids of single-point prompts (same function, less work).

For a point grid the decoder runs once per point, and almost all of its work is on the
4096 image tokens. The transformer runs through segany's re-associated cached path
(:func:`segany.modeling.fast_decoder.transformer_cached`: the attention between the image
and the ~7 prompt tokens goes through the heads x tokens space, ~410 M instead of ~940 M
multiply-adds per prompt, equal up to float rounding). What this class adds is the split
the generator needs: predicted IoUs first, then the 4x output upscaling and hypernetwork
heads only for the prompts with an output above the predicted-IoU threshold, and only for
the rows/columns of the low-res logits inside the image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..modeling import Sam
from ..modeling.fast_decoder import build_image_cache, transformer_cached


class GridDecoder:
    """Decoder for one image and many single-point prompts (see the module docstring)."""

    def __init__(self, model: Sam, features: Tensor) -> None:
        self.model = model
        pe_layer = model.prompt_encoder
        dec = model.mask_decoder
        image_pe = pe_layer.get_dense_pe()
        src = features + pe_layer.no_mask_dense(1)
        _, _, self.h, self.w = src.shape
        self.cache = build_image_cache(dec, src, image_pe)

    def transformer(self, sparse: Tensor) -> tuple[Tensor, Tensor]:
        """(tokens BxTxC, image tokens BxNxC) after the two-way transformer."""
        return transformer_cached(self.model.mask_decoder, self.cache, sparse)

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
