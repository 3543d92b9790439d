"""The BSDS500 boundary benchmark (Martin et al. / Arbelaez et al.), re-implemented in Python.

Edge detectors are scored the way the official MATLAB benchmark (``boundaryBench``) scores
them, so numbers are comparable with the literature and with the SAM paper's Table 3:

1. the soft edge map is thresholded at ``nthresh`` evenly spaced levels and each binary map
   is thinned to one-pixel-wide lines (MATLAB ``bwmorph(..., 'thin', inf)``);
2. each thinned map is matched against every human annotator's boundary map with a
   one-to-one assignment of pixels no farther apart than ``max_dist`` x image diagonal
   (``correspondPixels``): as many pairs as possible, and among those the shortest;
3. recall counts the matched human pixels over all annotators; precision counts the
   predicted pixels matched to *any* annotator;
4. ODS (best F at one threshold for the whole data set, with the official linear
   interpolation between thresholds), OIS (best threshold per image), AP (area under the
   interpolated precision/recall curve) and R50 (recall at 50% precision).

The official ``correspondPixels`` solves the assignment with a cost-scaling solver on a graph
whose unmatched pixels cost ``100 x max_dist`` each; here the same objective is solved exactly
with SciPy's sparse minimum-weight full bipartite matching (each predicted pixel gets a private
"outlier" column at the outlier cost, so a full matching always exists). The official solver
adds random sparse outlier edges, so its own outputs vary in the 4th decimal between runs; the
reference outputs in ``bsds500/bench_demo`` are reproduced to 3 decimals (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

DEFAULT_MAX_DIST = 0.0075
"""Matching tolerance as a fraction of the image diagonal (the benchmark's default)."""

_OUTLIER_COST = 100.0  # unmatched pixel cost, in units of the tolerance (official value)
_COST_SCALE = 100  # official integer cost resolution: distances are rounded to 1/100 pixel


# --------------------------------------------------------------------------- thinning
def _thin_luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two sub-iterations of Lam, Lee & Suen (1992), as in MATLAB.

    Neighbours are numbered x1..x8 anticlockwise from east (E, NE, N, NW, W, SW, S, SE) and
    encoded as bits 0..7 of the correlation with ``_NEIGHBOUR_WEIGHTS``.
    """
    lut1 = np.zeros(256, dtype=bool)
    lut2 = np.zeros(256, dtype=bool)
    for code in range(256):
        x = [bool(code >> k & 1) for k in range(8)]
        x = [False, *x, x[0]]  # 1-based x1..x8 and x9 = x1
        xh = sum((not x[2 * i - 1]) and (x[2 * i] or x[2 * i + 1]) for i in range(1, 5))
        n1 = sum(x[2 * k - 1] or x[2 * k] for k in range(1, 5))
        n2 = sum(x[2 * k] or x[2 * k + 1] for k in range(1, 5))
        g12 = xh == 1 and 2 <= min(n1, n2) <= 3
        g3 = not ((x[2] or x[3] or not x[8]) and x[1])
        g3p = not ((x[6] or x[7] or not x[4]) and x[5])
        lut1[code] = g12 and g3
        lut2[code] = g12 and g3p
    return lut1, lut2


_NEIGHBOUR_WEIGHTS = np.array([[8, 4, 2], [16, 0, 1], [32, 64, 128]], dtype=np.int32)
_THIN_LUT1, _THIN_LUT2 = _thin_luts()


def thin(bmap: np.ndarray) -> np.ndarray:
    """Thin a binary map to 1-pixel-wide curves (MATLAB ``bwmorph(bmap, 'thin', inf)``).

    The benchmark thins every thresholded map so that thick responses are not rewarded with
    extra matched pixels. HxW bool in, HxW bool out.
    """
    skel = np.asarray(bmap, dtype=bool).astype(np.int32)
    while True:
        before = int(skel.sum())
        for lut in (_THIN_LUT1, _THIN_LUT2):
            codes = ndimage.correlate(skel, _NEIGHBOUR_WEIGHTS, mode="constant", cval=0)
            skel[(skel == 1) & lut[codes]] = 0
        if int(skel.sum()) == before:
            return skel.astype(bool)


# --------------------------------------------------------------------------- segmentations
def seg_to_boundary(seg: np.ndarray) -> np.ndarray:
    """Boundary map of a label image, at image size (the benchmark's ``seg2bdry(seg, 'imageSize')``).

    A pixel is on the boundary when a label changes between it and its lower or right
    neighbour (computed on the doubled "edgel" grid, exactly as the official code does).
    """
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise ValueError(f"a segmentation must be a 2-D label image, got shape {seg.shape}")
    tx, ty = seg.shape
    bdry = np.zeros((2 * tx + 1, 2 * ty + 1), dtype=bool)
    edgels_v = np.zeros((tx, ty), dtype=bool)
    edgels_v[:-1] = seg[:-1] != seg[1:]
    edgels_h = np.zeros((tx, ty), dtype=bool)
    edgels_h[:, :-1] = seg[:, :-1] != seg[:, 1:]
    bdry[2::2, 1::2] = edgels_v
    bdry[1::2, 2::2] = edgels_h
    bdry[2:-1:2, 2:-1:2] = np.maximum(
        np.maximum(edgels_h[:-1, :-1], edgels_h[1:, :-1]),
        np.maximum(edgels_v[:-1, :-1], edgels_v[:-1, 1:]),
    )
    bdry[0, :] = bdry[1, :]
    bdry[:, 0] = bdry[:, 1]
    bdry[-1, :] = bdry[-2, :]
    bdry[:, -1] = bdry[:, -2]
    return bdry[2::2, 2::2]


# --------------------------------------------------------------------------- matching
def _offsets(radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dy, dx, integer cost) of every pixel offset within ``radius``, dy-major as the matching expects."""
    reach = int(np.ceil(radius))
    dy, dx = np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1), indexing="ij")
    d2 = dy * dy + dx * dx
    inside = d2 <= radius * radius
    cost = np.rint(np.sqrt(d2[inside]) * _COST_SCALE).astype(np.int64)
    return dy[inside], dx[inside], cost


def correspond_pixels(
    bmap1: np.ndarray, bmap2: np.ndarray, max_dist: float = DEFAULT_MAX_DIST
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of boundary pixels within ``max_dist`` x diagonal (``correspondPixels``).

    Args:
        bmap1: HxW predicted boundary map (bool).
        bmap2: HxW human boundary map (bool), same size.
        max_dist: tolerance as a fraction of the image diagonal.

    Returns:
        (match1, match2): HxW bool maps of the pixels of ``bmap1`` / ``bmap2`` that got a partner.
        The matching has the most pairs possible and, among those, the least total distance.
    """
    b1 = np.asarray(bmap1, dtype=bool)
    b2 = np.asarray(bmap2, dtype=bool)
    if b1.shape != b2.shape or b1.ndim != 2:
        raise ValueError(f"boundary maps must be 2-D and the same size, got {b1.shape} and {b2.shape}")
    h, w = b1.shape
    radius = max_dist * float(np.hypot(h, w))
    match1 = np.zeros_like(b1)
    match2 = np.zeros_like(b2)
    ys1, xs1 = np.nonzero(b1)
    if ys1.size == 0 or not b2.any():
        return match1, match2
    index2 = np.full((h, w), -1, dtype=np.int64)
    ys2, xs2 = np.nonzero(b2)
    index2[ys2, xs2] = np.arange(ys2.size)

    # Candidate pairs: every offset within the radius, all predicted pixels at once. A padded
    # index map turns out-of-image neighbours into misses. Pairs come out offset-major, the
    # order of the original per-offset loop, so the solver sees the identical graph.
    reach = int(np.ceil(radius))
    dy, dx, dcost = _offsets(radius)
    padded = np.full((h + 2 * reach, w + 2 * reach), -1, dtype=np.int64)
    padded[reach : reach + h, reach : reach + w] = index2
    j = padded[ys1[None, :] + (dy[:, None] + reach), xs1[None, :] + (dx[:, None] + reach)]
    hit = j >= 0
    row = np.broadcast_to(np.arange(ys1.size), j.shape)[hit]
    if row.size == 0:
        return match1, match2
    col = j[hit]
    cost = np.broadcast_to(dcost[:, None], j.shape)[hit]

    # Only pixels with a candidate partner take part (as in the official code).
    used1, row = np.unique(row, return_inverse=True)
    used2, col = np.unique(col, return_inverse=True)
    m1, m2 = used1.size, used2.size
    outlier = int(np.ceil(_OUTLIER_COST * radius * _COST_SCALE))
    # Rows are the smaller side (the solver's work grows with the rows); each row gets a private
    # "outlier" column at the official outlier cost, so a full matching always exists and leaving
    # a pixel unmatched costs what the official solver charges. +1 keeps zero distances as edges
    # (it adds the same constant to every full matching, so the optimum is unchanged).
    swap = m2 < m1
    r_side, c_side, n_r, n_c = (col, row, m2, m1) if swap else (row, col, m1, m2)
    all_rows = np.concatenate([r_side, np.arange(n_r)])
    all_cols = np.concatenate([c_side, n_c + np.arange(n_r)])
    all_cost = np.concatenate([cost, np.full(n_r, outlier, dtype=np.int64)]) + 1
    graph = csr_matrix((all_cost.astype(np.float64), (all_rows, all_cols)), shape=(n_r, n_c + n_r))
    r_ind, c_ind = min_weight_full_bipartite_matching(graph)
    real = c_ind < n_c
    if swap:
        p1, p2 = used1[c_ind[real]], used2[r_ind[real]]
    else:
        p1, p2 = used1[r_ind[real]], used2[c_ind[real]]
    match1[ys1[p1], xs1[p1]] = True
    match2[ys2[p2], xs2[p2]] = True
    return match1, match2


# --------------------------------------------------------------------------- per image
@dataclass
class ImageCounts:
    """Match counts of one image at each threshold (one row of the official ``*_ev1.txt``)."""

    thresholds: np.ndarray
    cnt_r: np.ndarray  # matched human boundary pixels, summed over annotators
    sum_r: np.ndarray  # human boundary pixels, summed over annotators
    cnt_p: np.ndarray  # predicted pixels matched to any annotator
    sum_p: np.ndarray  # predicted pixels


def default_thresholds(nthresh: int) -> np.ndarray:
    """``linspace(1/(n+1), 1-1/(n+1), n)``: the benchmark's thresholds for soft edge maps."""
    if nthresh < 1:
        raise ValueError(f"nthresh must be >= 1, got {nthresh}")
    return np.linspace(1.0 / (nthresh + 1), 1.0 - 1.0 / (nthresh + 1), nthresh)


def _count(bmap: np.ndarray, gts: Sequence[np.ndarray], max_dist: float) -> tuple[int, int, int, int]:
    acc = np.zeros(bmap.shape, dtype=bool)
    cnt_r = sum_r = 0
    for gt in gts:
        m1, m2 = correspond_pixels(bmap, gt, max_dist)
        acc |= m1
        sum_r += int(gt.sum())
        cnt_r += int(m2.sum())
    return cnt_r, sum_r, int(acc.sum()), int(bmap.sum())


def _check_gts(gts: Sequence[np.ndarray], shape: tuple[int, ...]) -> list[np.ndarray]:
    if len(gts) == 0:
        raise ValueError("no human boundary maps given")
    out = [np.asarray(g, dtype=bool) for g in gts]
    for g in out:
        if g.shape != shape:
            raise ValueError(f"human boundary map of shape {g.shape} does not match the prediction {shape}")
    return out


def evaluate_edge_map(
    pb: np.ndarray,
    gts: Sequence[np.ndarray],
    nthresh: int = 99,
    max_dist: float = DEFAULT_MAX_DIST,
    thin_maps: bool = True,
) -> ImageCounts:
    """Counts for a soft edge map in [0, 1] (``evaluation_bdry_image`` on a probability map).

    Args:
        pb: HxW float edge strength in [0, 1].
        gts: human boundary maps (HxW, nonzero = boundary), one per annotator.
        nthresh: number of thresholds (99 in the standard benchmark).
    """
    pb = np.asarray(pb, dtype=np.float64)
    if pb.ndim != 2:
        raise ValueError(f"an edge map must be 2-D, got shape {pb.shape}")
    gts = _check_gts(gts, pb.shape)
    thresholds = default_thresholds(nthresh)
    counts = np.zeros((4, nthresh), dtype=np.int64)
    previous: np.ndarray | None = None
    for t, thr in enumerate(thresholds):
        raw = pb >= thr
        if previous is not None and np.array_equal(raw, previous):
            counts[:, t] = counts[:, t - 1]  # same map as the last threshold (quantised inputs): same counts
            continue
        previous = raw
        bmap = thin(raw) if thin_maps else raw
        counts[:, t] = _count(bmap, gts, max_dist)
    return ImageCounts(thresholds, *counts)


def evaluate_segmentations(
    segs: Sequence[np.ndarray], gts: Sequence[np.ndarray], max_dist: float = DEFAULT_MAX_DIST, thin_maps: bool = True
) -> ImageCounts:
    """Counts for a list of segmentations, one "threshold" each (the benchmark's ``segs`` input)."""
    if len(segs) == 0:
        raise ValueError("no segmentations given")
    gts = _check_gts(gts, np.asarray(segs[0]).shape)
    counts = np.zeros((4, len(segs)), dtype=np.int64)
    for t, seg in enumerate(segs):
        bmap = seg_to_boundary(seg)
        if thin_maps:
            bmap = thin(bmap)
        counts[:, t] = _count(bmap, gts, max_dist)
    return ImageCounts(np.arange(1, len(segs) + 1, dtype=np.float64), *counts)


# --------------------------------------------------------------------------- summary
def fmeasure(r: np.ndarray | float, p: np.ndarray | float) -> np.ndarray:
    """Harmonic mean of precision and recall, 0 where both are 0."""
    r = np.asarray(r, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    s = p + r
    return 2 * p * r / (s + (s == 0))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return num / (den + (den == 0))


def max_f(thresholds: np.ndarray, r: np.ndarray, p: np.ndarray) -> tuple[float, float, float, float]:
    """Best (threshold, recall, precision, F) with 100-step linear interpolation between thresholds.

    Same search order and strict improvement as the official ``maxF``, so ties resolve alike.
    """
    d = np.linspace(0.0, 1.0, 100)
    ts = [np.array([thresholds[0]])]
    rs = [np.array([r[0]])]
    ps = [np.array([p[0]])]
    for i in range(1, len(thresholds)):
        ts.append(thresholds[i] * d + thresholds[i - 1] * (1 - d))
        rs.append(r[i] * d + r[i - 1] * (1 - d))
        ps.append(p[i] * d + p[i - 1] * (1 - d))
    t_all, r_all, p_all = np.concatenate(ts), np.concatenate(rs), np.concatenate(ps)
    f_all = fmeasure(r_all, p_all)
    k = int(np.argmax(f_all))
    return float(t_all[k]), float(r_all[k]), float(p_all[k]), float(f_all[k])


def average_precision(r: np.ndarray, p: np.ndarray) -> float:
    """Area under the precision/recall curve, interpolated at recall 0, 0.01, ..., 1 (official ``Area_PR``)."""
    r_u, first = np.unique(r, return_index=True)
    if r_u.size < 2:
        return 0.0
    p_u = np.asarray(p)[first]
    grid = np.linspace(0.0, 1.0, 101)
    p_i = np.interp(grid, r_u, p_u, left=np.nan, right=np.nan)
    return float(np.nansum(p_i) * 0.01)


def recall_at_precision(r: np.ndarray, p: np.ndarray, precision: float = 0.5) -> float:
    """Recall where the (interpolated) precision/recall curve reaches ``precision`` (R50 at 0.5).

    If the curve never falls as low as ``precision``, the recall at its lowest precision is used
    (as in the structured-edge toolbox that defined R50).
    """
    p_u, first = np.unique(p, return_index=True)
    r_u = np.asarray(r)[first]
    if p_u.size == 1:
        return float(r_u[0])
    return float(np.interp(max(float(p_u[0]), precision), p_u, r_u))


@dataclass
class BoundaryResult:
    """Benchmark scores of a data set; ``per_image`` rows are (threshold, R, P, F) at each image's best."""

    ods: float
    ods_threshold: float
    ods_recall: float
    ods_precision: float
    ois: float
    ois_recall: float
    ois_precision: float
    ap: float
    r50: float
    thresholds: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    f: np.ndarray
    per_image: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (curves as lists)."""
        return {
            "ODS": self.ods,
            "ODS_threshold": self.ods_threshold,
            "ODS_recall": self.ods_recall,
            "ODS_precision": self.ods_precision,
            "OIS": self.ois,
            "OIS_recall": self.ois_recall,
            "OIS_precision": self.ois_precision,
            "AP": self.ap,
            "R50": self.r50,
            "curve": {
                "threshold": self.thresholds.tolist(),
                "recall": self.recall.tolist(),
                "precision": self.precision.tolist(),
                "f": self.f.tolist(),
            },
        }


def summarize(images: Sequence[ImageCounts]) -> BoundaryResult:
    """Data-set scores from per-image counts (the official ``collect_eval_bdry``)."""
    if len(images) == 0:
        raise ValueError("no images to summarise")
    thresholds = images[0].thresholds
    tot = np.zeros((4, thresholds.size), dtype=np.float64)
    best = np.zeros(4, dtype=np.float64)
    per_image = []
    for im in images:
        if im.thresholds.shape != thresholds.shape:
            raise ValueError("all images must be evaluated at the same thresholds")
        c = np.stack([im.cnt_r, im.sum_r, im.cnt_p, im.sum_p]).astype(np.float64)
        r = _ratio(c[0], c[1])
        p = _ratio(c[2], c[3])
        f = fmeasure(r, p)
        per_image.append(max_f(thresholds, r, p))
        tot += c
        k = int(np.flatnonzero(f == f.max())[-1])  # the last best threshold, as MATLAB's ff(end)
        best += c[:, k]
    r = _ratio(tot[0], tot[1])
    p = _ratio(tot[2], tot[3])
    f = fmeasure(r, p)
    ods_t, ods_r, ods_p, ods_f = max_f(thresholds, r, p)
    ois_r = float(_ratio(best[0], best[1]))
    ois_p = float(_ratio(best[2], best[3]))
    return BoundaryResult(
        ods=ods_f,
        ods_threshold=ods_t,
        ods_recall=ods_r,
        ods_precision=ods_p,
        ois=float(fmeasure(ois_r, ois_p)),
        ois_recall=ois_r,
        ois_precision=ois_p,
        ap=average_precision(r, p),
        r50=recall_at_precision(r, p, 0.5),
        thresholds=thresholds,
        recall=r,
        precision=p,
        f=f,
        per_image=np.array(per_image),
    )


# --------------------------------------------------------------------------- files
def load_ground_truth(path: str | Path) -> list[np.ndarray]:
    """Human boundary maps (one HxW bool per annotator) from a BSDS ``groundTruth/*.mat`` file."""
    try:
        mat = scipy.io.loadmat(str(path))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read BSDS ground truth {path}: {exc}") from exc
    if "groundTruth" not in mat:
        raise ValueError(f"{path} has no 'groundTruth' variable: not a BSDS ground-truth file")
    cells = mat["groundTruth"].ravel()
    return [np.asarray(c["Boundaries"][0, 0], dtype=bool) for c in cells]


def load_ground_truth_segmentations(path: str | Path) -> list[np.ndarray]:
    """Human region label maps (one HxW per annotator) from a BSDS ``groundTruth/*.mat`` file."""
    mat = scipy.io.loadmat(str(path))
    return [np.asarray(c["Segmentation"][0, 0]) for c in mat["groundTruth"].ravel()]


def load_prediction(path: str | Path) -> np.ndarray | list[np.ndarray]:
    """A benchmark input: PNG edge map (-> [0,1]), ``ucm2`` .mat (-> its pixel grid) or ``segs`` .mat (-> list).

    These are the three input forms of the official benchmark; ``ucm2`` maps are stored on the
    doubled grid, of which the benchmark keeps ``ucm2(3:2:end, 3:2:end)``.
    """
    path = Path(path)
    if path.suffix.lower() == ".mat":
        mat = scipy.io.loadmat(str(path))
        if "ucm2" in mat:
            return np.asarray(mat["ucm2"], dtype=np.float64)[2::2, 2::2]
        if "segs" in mat:
            return [np.asarray(s) for s in mat["segs"].ravel()]
        raise ValueError(f"{path} holds neither 'ucm2' nor 'segs'")
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read edge map image {path}")
    if img.ndim == 3:
        img = img[..., 0]
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    return img.astype(np.float64) / scale


def format_official(result: BoundaryResult) -> dict[str, str]:
    """The three official text files (``eval_bdry.txt``, ``eval_bdry_thr.txt``, ``eval_bdry_img.txt``)."""

    def g(x: float) -> str:
        return f"{x:10.6g}"

    bdry = "".join(
        g(v)
        for v in (
            result.ods_threshold,
            result.ods_recall,
            result.ods_precision,
            result.ods,
            result.ois_recall,
            result.ois_precision,
            result.ois,
            result.ap,
        )
    )
    thr = "".join(
        f"{g(t)}{g(r)}{g(p)}{g(f)}\n" for t, r, p, f in zip(result.thresholds, result.recall, result.precision, result.f)
    )
    img = "".join(f"{i + 1:10d}" + "".join(g(v) for v in row) + "\n" for i, row in enumerate(result.per_image))
    return {"eval_bdry.txt": bdry + "\n", "eval_bdry_thr.txt": thr, "eval_bdry_img.txt": img}
