"""Low-res logits -> the original image frame, without computing the padding.

The decoder's 256x256 logits cover the whole padded input square; the official
post-processing upsamples them to the square, crops the resized image and resizes that to
the original size. For a non-square image most of the square is padding, so here only the
low-res rows/columns that the crop reads are upsampled (:func:`low_res_extent`), straight
to the crop's size with the full square's scale, which gives the same values. The
automatic generator uses the same extent to skip decoding those rows/columns at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bilinear_source_extent(out_len: int, in_len: int, factor: float) -> int:
    """Number of leading source samples that bilinear upsampling by ``factor`` reads to
    produce the first ``out_len`` outputs (align_corners=False), plus one sample of margin
    so the right-edge clamp never differs from upsampling the full source. ``in_len`` (all
    of them) for a non-integer factor."""
    if factor != int(factor) or out_len <= 0:
        return in_len
    src = (out_len - 0.5) / factor - 0.5
    return min(in_len, int(src) + 3)


def low_res_extent(input_size: tuple[int, ...], low_res_size: tuple[int, int], img_size: int) -> tuple[int, int]:
    """(rows, cols) of the low-res logits (``low_res_size`` = (h, w), covering the padded
    ``img_size`` square) that upsampling reads for an image of ``input_size`` (H, W in the
    input frame); the rest lie in the padding."""
    low_h, low_w = low_res_size
    factor = img_size / low_w
    return (
        bilinear_source_extent(int(input_size[0]), low_h, factor),
        bilinear_source_extent(int(input_size[1]), low_w, factor),
    )


def upsample_low_res(
    masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...], img_size: int
) -> torch.Tensor:
    """Low-res logits BxCxhxw of the ``img_size`` square -> BxCxHxW logits in the original
    frame (``original_size``), for an image of ``input_size`` in the input frame.

    Same result as upsampling to the padded square, cropping the input region and
    resizing to the original size, but the padding is never computed.
    """
    h_in, w_in = int(input_size[0]), int(input_size[1])
    if masks.dtype in (torch.float16, torch.bfloat16):
        # Half-precision logits are upsampled in float32: the interpolation weights of a
        # bf16 kernel would move the 0-threshold crossing, and the result is returned as
        # float32 anyway.
        masks = masks.float()
    b, c, low_h, low_w = masks.shape
    # One channel per batch item: PyTorch's CPU bilinear kernel is several times slower
    # for multi-channel NCHW input than for the same data as N*C single-channel images.
    x = masks.reshape(b * c, 1, low_h, low_w)
    factor = img_size / low_w
    rows, cols = low_res_extent((h_in, w_in), (low_h, low_w), img_size)
    if rows == low_h and cols == low_w:
        up = F.interpolate(x, (img_size, img_size), mode="bilinear", align_corners=False)[..., :h_in, :w_in]
    else:
        # Upsample only the source rows/cols that reach the crop, straight to the crop's
        # size, with the full image's scale (so the sampling positions are unchanged).
        up = torch.ops.aten.upsample_bilinear2d(x[..., :rows, :cols], [h_in, w_in], False, factor, factor)
    out = F.interpolate(up, (int(original_size[0]), int(original_size[1])), mode="bilinear", align_corners=False)
    return out.reshape(b, c, out.shape[-2], out.shape[-1])
