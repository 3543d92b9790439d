"""Low-res logits -> the original image frame, without computing the padding.

The decoder's 256x256 logits cover the whole padded input square; the official
post-processing upsamples them to the square, crops the resized image and resizes that to
the original size. For a non-square image most of the square is padding, so here only the
low-res rows/columns that the crop reads are upsampled (:func:`low_res_extent`), straight
to the crop's size with the full square's scale, which gives the same values. The
automatic generator uses the same extent to skip decoding those rows/columns at all.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

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
    # PyTorch's bilinear kernel copies an axis whose input and output lengths agree,
    # ignoring the scale it is given: a cut source as long as the crop (an image 3 px wide
    # in the input frame) would come out unscaled, so such frames take the full path.
    if (rows == low_h and cols == low_w) or rows == h_in or cols == w_in:
        up = F.interpolate(x, (img_size, img_size), mode="bilinear", align_corners=False)[..., :h_in, :w_in]
    else:
        # Upsample only the source rows/cols that reach the crop, straight to the crop's
        # size, with the full image's scale (so the sampling positions are unchanged).
        up = torch.ops.aten.upsample_bilinear2d(x[..., :rows, :cols], [h_in, w_in], False, factor, factor)
    out = F.interpolate(up, (int(original_size[0]), int(original_size[1])), mode="bilinear", align_corners=False)
    return out.reshape(b, c, out.shape[-2], out.shape[-1])


UPSAMPLE_BLOCK = 64
"""Output rows (and columns) per block of :func:`upsample_low_res_banded`. Each block of the
composite interpolation matrix reads only ~26 low-res samples plus a margin; smaller
blocks read fewer zeros but pay more per-call overhead."""


@dataclass(frozen=True, eq=False)
class BandedInterpolation:
    """One axis of the two bilinear resizes composed into one banded matrix, in blocks.

    ``blocks`` holds (out_start, out_end, src_start, src_end, weights) with ``weights``
    (out_end - out_start) x (src_end - src_start): output samples out_start..out_end read
    only low-res samples src_start..src_end.
    """

    out_len: int
    blocks: tuple[tuple[int, int, int, int, torch.Tensor], ...]


def _composite_axis(
    low_len: int, input_len: int, out_len: int, img_size: int, block: int, dtype: torch.dtype, device: torch.device
) -> BandedInterpolation:
    """The matrix (out_len x low_len) of one axis of :func:`upsample_low_res`: upsample to
    the padded square with its scale, crop ``input_len``, resize to ``out_len``.

    Each stage's matrix comes from running that interpolation on the identity in float32,
    so its entries are exactly the float32 weights PyTorch's kernel uses (a float64 run
    places the samples slightly differently: 1e-5 relative on rough logits); they are
    multiplied in float64 and rounded once.
    """
    factor = img_size / low_len
    eye = torch.eye(low_len, dtype=torch.float32).reshape(low_len, 1, low_len, 1)
    up = torch.ops.aten.upsample_bilinear2d(eye, [img_size, 1], False, factor, 1.0)[:, 0, :input_len, 0]
    eye = torch.eye(input_len, dtype=torch.float32).reshape(input_len, 1, input_len, 1)
    down = F.interpolate(eye, (out_len, 1), mode="bilinear", align_corners=False)[:, 0, :, 0]
    matrix = down.double().T @ up.double().T  # (out x input) @ (input x low)
    blocks = []
    for o0 in range(0, out_len, block):
        o1 = min(out_len, o0 + block)
        used = matrix[o0:o1].abs().sum(0).nonzero().flatten()
        s0, s1 = int(used[0]), int(used[-1]) + 1
        weights = matrix[o0:o1, s0:s1].to(device=device, dtype=dtype).contiguous()
        blocks.append((o0, o1, s0, s1, weights))
    return BandedInterpolation(out_len, tuple(blocks))


@functools.lru_cache(maxsize=16)
def banded_interpolation(
    low_size: tuple[int, int],
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    img_size: int,
    device: torch.device,
    block: int = UPSAMPLE_BLOCK,
) -> tuple[BandedInterpolation, BandedInterpolation]:
    """(rows, columns) of :func:`upsample_low_res_banded`, kept for the last few frames (an
    interactive session asks for the same image size on every click)."""
    return (
        _composite_axis(low_size[0], input_size[0], original_size[0], img_size, block, torch.float32, device),
        _composite_axis(low_size[1], input_size[1], original_size[1], img_size, block, torch.float32, device),
    )


def upsample_low_res_banded(
    masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...], img_size: int
) -> torch.Tensor:
    """:func:`upsample_low_res` as two banded matmuls: the same values up to float rounding
    (the two resizes are composed in float64 before the one float32 application).

    Why: the two-stage form writes the full input-frame intermediate (1024 x 719 for a
    640 x 449 photo) and reads it again; both resizes are linear and separable, so per
    axis they compose into one matrix whose rows each touch ~4 low-res samples. Applied in
    blocks of :data:`UPSAMPLE_BLOCK` outputs (each block a small dense matmul over the
    low-res samples it reads), that is ~4x less time on one thread for 1-3 masks. The
    predictor uses it; :func:`upsample_low_res` stays the form the automatic generator's
    stability bound reasons about.
    """
    if masks.dtype in (torch.float16, torch.bfloat16):
        masks = masks.float()  # as in upsample_low_res
    b, c, low_h, low_w = masks.shape
    rows, cols = banded_interpolation(
        (low_h, low_w),
        (int(input_size[0]), int(input_size[1])),
        (int(original_size[0]), int(original_size[1])),
        img_size,
        masks.device,
    )
    if masks.dtype != torch.float32:
        raise ValueError(f"upsample_low_res_banded needs float32 (or half) logits, got {masks.dtype}")
    x = masks.reshape(b * c, low_h, low_w)
    # rows first: (BC) x low_h x low_w -> (BC) x H x low_w
    tall = torch.cat([torch.matmul(w, x[:, s0:s1]) for _, _, s0, s1, w in rows.blocks], dim=1)
    tall = tall.reshape(-1, low_w)
    out = tall.new_empty(tall.shape[0], cols.out_len)
    for o0, o1, s0, s1, w in cols.blocks:
        # writes straight into the column block of ``out`` (a strided view BLAS accepts)
        torch.mm(tall[:, s0:s1], w.T, out=out[:, o0:o1])
    return out.reshape(b, c, rows.out_len, cols.out_len)
