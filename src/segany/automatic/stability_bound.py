"""A sound low-resolution upper bound of the stability score, to skip upsampling masks
that cannot pass the stability filter.

The stability score is a ratio of pixel counts of the *full-resolution* logits (the
decoder's 256x256 logits upsampled twice, bilinearly, to the image), so it cannot be
computed exactly at low resolution: which full-resolution pixels cross a threshold depends
on the interpolation's rounding. What can be computed exactly is a bound. Every
full-resolution logit is a convex combination of the low-res logits in its *footprint*
(the few low-res samples the two interpolations read for it), so it lies between their
minimum and maximum, up to float rounding (``delta``, tens of times the worst rounding of
two 4-tap interpolations). Hence

- ``hi`` (pixels above ``threshold + offset``) <= the number of pixels whose footprint
  maximum is above ``threshold + offset - delta``;
- ``lo`` (pixels above ``threshold - offset``) >= the number of pixels whose footprint
  minimum is above ``threshold - offset + delta``;

and ``hi / lo`` <= the ratio of the two bounds. A mask whose bound is below the stability
threshold (with a relative margin far above float32's division rounding) is dropped by the
full computation too, so dropping it before upsampling keeps exactly the same masks; every
other mask is upsampled and scored at full resolution as before.

The footprints are separable (rows x columns) and are read off the interpolation kernel
itself: upsampling one-hot rows with the same calls as
:func:`segany.modeling.mask_upsampling.upsample_low_res` gives which low-res rows each
output row reads, so the bound follows that function's geometry rather than a copy of its
formulas. Footprints are windows of 1-3 consecutive low-res samples per axis, so the bound is
a few window ORs/ANDs of the thresholded low-res mask and two weighted sums: about
4 x 256 x 256 boolean operations per mask instead of the H x W interpolated pixels of the
full computation (measured in ``docs/automatic.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..modeling.mask_upsampling import low_res_extent

# Relative rounding allowance of one full-resolution logit against its footprint's range
# (float32 has 6e-8; two 4-tap bilinear steps round at most a few times that).
ROUNDING = 1e-5
# Relative margin on the ratio (float32 division of int32 counts rounds by at most 6e-8).
RATIO_MARGIN = 1e-6
# Masks bounded together (bounds the temporaries at about 2 MB per mask).
BOUND_CHUNK = 32


@dataclass(frozen=True)
class AxisGroups:
    """Output samples of one axis grouped by footprint length: ``weights[L][i]`` output
    samples read exactly the low-res samples ``i .. i + L - 1`` (float32, exact integers)."""

    weights: dict[int, torch.Tensor]


@dataclass(frozen=True)
class Footprints:
    """Footprints of the full-resolution pixels of one crop: rows x columns."""

    rows: AxisGroups
    cols: AxisGroups


def _support(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last source index with a nonzero weight, per output (rows of ``weights``)."""
    nz = weights != 0
    n_src = weights.shape[1]
    ar = torch.arange(n_src)
    first = torch.where(nz, ar, n_src).amin(dim=1)
    last = torch.where(nz, ar, -1).amax(dim=1)
    return first, last


def _axis_groups(low_extent: int, input_len: int, original_len: int, factor: float) -> AxisGroups:
    """The footprint groups of one axis, read off the interpolation kernel on one-hot inputs."""
    # Stage 1 exactly as upsample_low_res calls it (the padded square's full upsampling,
    # cropped, reads the same samples for its first input_len outputs).
    eye = torch.eye(low_extent, dtype=torch.float32).reshape(low_extent, 1, low_extent, 1)
    stage1 = torch.ops.aten.upsample_bilinear2d(eye, [input_len, 1], False, factor, 1.0)
    stage1 = stage1.reshape(low_extent, input_len).T  # input_len x low_extent
    eye = torch.eye(input_len, dtype=torch.float32).reshape(input_len, 1, input_len, 1)
    stage2 = F.interpolate(eye, (original_len, 1), mode="bilinear", align_corners=False)
    stage2 = stage2.reshape(input_len, original_len).T  # original_len x input_len
    # Output o reads stage-1 samples [a0, a1], which read low-res samples
    # [first(a0), last(a1)] (both stages are monotone, so footprints are intervals).
    a0, a1 = _support(stage2)
    f1, l1 = _support(stage1)
    first, length = f1[a0], l1[a1] - f1[a0] + 1
    weights = {}
    for n in torch.unique(length).tolist():
        sel = length == n
        weights[int(n)] = torch.bincount(first[sel], minlength=low_extent - n + 1).to(torch.float32)
    return AxisGroups(weights)


def crop_footprints(
    input_size: tuple[int, int], original_size: tuple[int, int], low_res_size: tuple[int, int], img_size: int
) -> Footprints:
    """Footprints for masks of a crop of ``original_size`` (H, W) whose ``input_size`` is its
    size in the model's input frame, for ``low_res_size`` logits of the ``img_size`` square."""
    rows, cols = low_res_extent(input_size, low_res_size, img_size)
    factor = img_size / low_res_size[1]
    return Footprints(
        _axis_groups(rows, int(input_size[0]), int(original_size[0]), factor),
        _axis_groups(cols, int(input_size[1]), int(original_size[1]), factor),
    )


def _sliding(x: torch.Tensor, dim: int, lengths: list[int], any_: bool) -> dict[int, torch.Tensor]:
    """OR (``any_``) or AND of the 0/1 float ``x`` over every window of each length along
    ``dim``: ``out[L][..., i, ...]`` reduces ``x[..., i : i + L, ...]``. (0/1 floats, so that
    the counting below is a matmul without conversions: 3x faster than bool tensors.)"""
    out = {}
    n = x.shape[dim]
    acc = x
    for length in range(1, max(lengths) + 1):
        if length > 1:
            nxt = x.narrow(dim, length - 1, n - length + 1)
            acc = acc.narrow(dim, 0, n - length + 1)
            acc = torch.maximum(acc, nxt) if any_ else torch.minimum(acc, nxt)
        if length in lengths:
            out[length] = acc
    return out


def _pixels_where(b: torch.Tensor, fp: Footprints, any_: bool) -> torch.Tensor:
    """Full-resolution pixels whose footprint has any (``any_``) / only 1 low-res samples
    of ``b`` (n x h x w, 0/1 float32, cut to the footprints' extent), per mask, int64, on
    ``b``'s device.

    Windows are reduced for every start (unused ones weigh 0), and the counting is two
    weighted sums: no gathers. The per-row sums are float32 matmuls, exact because they are
    integers below 2**24 (the columns of one row); the total is summed in int64 (no float64,
    which some accelerators lack)."""
    total = torch.zeros(b.shape[0], dtype=torch.int64, device=b.device)
    by_rows = _sliding(b, 1, list(fp.rows.weights), any_)
    for lr, row_w in fp.rows.weights.items():
        by_cells = _sliding(by_rows[lr], 2, list(fp.cols.weights), any_)
        row_w = row_w.to(device=b.device, dtype=torch.int64)
        for lc, col_w in fp.cols.weights.items():
            per_row = by_cells[lc] @ col_w.to(b.device)
            total += (per_row.to(torch.int64) * row_w).sum(dim=1)
    return total


def stability_count_bounds(
    low: torch.Tensor, fp: Footprints, mask_threshold: float, offset: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(upper bound of ``hi``, lower bound of ``lo``) per mask, int64 on the CPU, for low-res
    logits ``low`` (n x h x w, the decoder's frame, any device; only the rows/columns the
    footprints read matter).

    "Footprint maximum > t" is "any sample > t" and "footprint minimum > t" is "every sample
    > t", so both bounds are window OR/AND of thresholded low-res masks."""
    low = low.float()
    rows = max(n + len(w) - 1 for n, w in fp.rows.weights.items())
    cols = max(n + len(w) - 1 for n, w in fp.cols.weights.items())
    uppers, lowers = [], []
    for s in range(0, low.shape[0], BOUND_CHUNK):
        chunk = low[s : s + BOUND_CHUNK, :rows, :cols]
        delta = ROUNDING * (1.0 + chunk.abs().amax(dim=(1, 2)))[:, None, None]
        above_hi = (chunk > (mask_threshold + offset) - delta).to(torch.float32)
        above_lo = (chunk > (mask_threshold - offset) + delta).to(torch.float32)
        uppers.append(_pixels_where(above_hi, fp, True))
        lowers.append(_pixels_where(above_lo, fp, False))
    if not uppers:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    return torch.cat(uppers).cpu(), torch.cat(lowers).cpu()


def may_pass_stability(
    low: torch.Tensor, fp: Footprints, mask_threshold: float, offset: float, stability_thresh: float
) -> torch.Tensor:
    """Bool per mask: False only where the full-resolution stability score is certainly
    below ``stability_thresh`` (> 0), so the mask would be dropped by the stability filter."""
    hi_up, lo_low = stability_count_bounds(low, fp, mask_threshold, offset)
    hi_up, lo_low = hi_up.to(torch.float64), lo_low.to(torch.float64)  # exact below 2**53
    # hi/lo <= hi_up/lo_low; with hi_up == 0 the score is 0 or NaN (0/0), dropped either way
    keep = (hi_up > 0) & (hi_up >= stability_thresh * (1.0 - RATIO_MARGIN) * lo_low)
    return keep.to(low.device)
