"""Dataset statistics of the paper's section 5 (figures 5 and 6), for sets side by side.

``segany data stats DIR... --out REPORT_DIR`` compares mask sets -- e.g. an automatic run
against the human masks of the same images -- on the paper's measures:

- masks per image, in figure 5's bins (1-10, 11-50, 51-100, 101-200, >200; plus 0),
- relative mask size ``sqrt(mask area / image area)``, on log-spaced bins,
- concavity ``1 - mask area / convex hull area`` (figure 6),
- where mask centres fall (a 20x20 heat map in normalised image coordinates, sum 1),
- image widths and heights.

Inputs are detected by content: a folder of SA-1B records, a COCO instances JSON, or a
folder holding either kind of JSON. Every histogram is accumulated mask by mask, so memory
stays flat in the number of masks (a COCO file is one JSON and is parsed whole, as any
COCO reader does; its masks are still decoded one at a time). Nothing is written until
every input has been read: a bad input fails with one error naming the file and leaves no
partial report.

Conventions (why each, so numbers from different tools can be compared):

- *Concavity* uses the exact geometry of the pixel squares: the convex hull of the corners
  of the mask's outer-contour pixels (``cv2.findContours`` + ``cv2.convexHull``), its area
  the polygon area (``cv2.contourArea``), against the pixel count. A filled rectangle gives
  exactly 0 at any size, and 3 of the 4 squares of a 2x2 block give ``1 - 3/3.5 = 1/7``.
  (A hull through pixel *centres* would be smaller than the mask itself.)
- *Centre* is the centre of mass of the mask's pixels, ``((mean x + 0.5) / W,
  (mean y + 0.5) / H)``, in ``[0, 1]``.
- Image sizes and RLE sizes are read from the JSON; images are not opened (``segany data
  validate`` checks them). A mask whose RLE size differs from its image's is an error.
- COCO crowd annotations (``iscrowd: 1``) are left out, as the converters leave them out;
  masks that decode to no pixels are counted (``empty_masks``) and otherwise skipped.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..masks import mask_window, rasterize_polygons, rle_to_mask, validate_rle
from .sa1b import SA1BError, list_records, read_record

COUNT_BINS: tuple[tuple[int, int | None, str], ...] = (
    (0, 0, "0"),
    (1, 10, "1-10"),
    (11, 50, "11-50"),
    (51, 100, "51-100"),
    (101, 200, "101-200"),
    (201, None, ">200"),
)
SIZE_EDGES = np.logspace(-4, 0, 41)  # 10 bins per decade; smaller masks go to the first bin
CONCAVITY_EDGES = np.linspace(0.0, 1.0, 21)
CENTRE_BINS = 20
POLYGON_TOLERANCE_PX = 1.0  # COCO polygon vertices may lie this far outside the image


class DataStatsError(ValueError):
    """An input of ``data stats`` is missing, empty or malformed (the message names the file)."""


# --------------------------------------------------------------------------- per-mask measures


def concavity(mask: np.ndarray) -> float:
    """``1 - area / convex hull area`` of an HxW bool mask (0 for a convex pixel set).

    The hull is that of the pixel squares: ``cv2.convexHull`` of the four corners of every
    outer-contour pixel, its area the polygon area (see the module docstring). Raises
    ``ValueError`` for an empty mask.
    """
    m = np.asarray(mask, dtype=bool)
    window = mask_window(m)
    if window is None:
        raise ValueError("concavity of an empty mask")
    crop = m[window]
    area = int(crop.sum())
    return _concavity_of_crop(crop, area)


def _concavity_of_crop(crop: np.ndarray, area: int) -> float:
    contours, _ = cv2.findContours(crop.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    pts = np.concatenate([c.reshape(-1, 2) for c in contours])
    corners = (pts[:, None, :] + np.array([[0, 0], [1, 0], [0, 1], [1, 1]])[None]).reshape(-1, 2)
    hull_area = float(cv2.contourArea(cv2.convexHull(corners.astype(np.int32))))
    return max(0.0, 1.0 - area / hull_area)


@dataclass(frozen=True)
class MaskMeasures:
    """What the statistics need of one mask: pixel area, concavity and normalised centre."""

    area: int
    concavity: float
    centre_x: float
    centre_y: float


def measure_mask(mask: np.ndarray) -> MaskMeasures | None:
    """Area, concavity and centre (in [0, 1] image coordinates) of an HxW mask; None if empty."""
    m = np.asarray(mask, dtype=bool)
    h, w = m.shape
    window = mask_window(m)
    if window is None:
        return None
    y0, x0 = window[0].start, window[1].start
    crop = m[window]
    ys, xs = np.nonzero(crop)
    area = int(ys.size)
    return MaskMeasures(
        area=area,
        concavity=_concavity_of_crop(crop, area),
        centre_x=(x0 + float(xs.mean()) + 0.5) / w,
        centre_y=(y0 + float(ys.mean()) + 0.5) / h,
    )


# --------------------------------------------------------------------------- accumulation


def count_bin(n: int) -> int:
    """Index into :data:`COUNT_BINS` of an image with ``n`` masks."""
    for k, (lo, hi, _) in enumerate(COUNT_BINS):
        if n >= lo and (hi is None or n <= hi):
            return k
    raise ValueError(f"negative mask count {n}")


@dataclass
class SetStats:
    """Running histograms of one mask set; adding a mask costs O(1) memory."""

    name: str
    sources: list[str]
    images: int = 0
    masks: int = 0
    empty_masks: int = 0
    crowd_skipped: int = 0
    masks_per_image: Counter[int] = field(default_factory=Counter)  # count -> images
    image_sizes: Counter[tuple[int, int]] = field(default_factory=Counter)  # (w, h) -> images
    size_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(SIZE_EDGES) - 1, np.int64))
    concavity_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(CONCAVITY_EDGES) - 1, np.int64))
    centre_hist: np.ndarray = field(default_factory=lambda: np.zeros((CENTRE_BINS, CENTRE_BINS), np.int64))
    size_sum: float = 0.0
    size_min: float = math.inf
    size_max: float = 0.0
    concavity_sum: float = 0.0

    def add_image(self, width: int, height: int, n_masks: int) -> None:
        self.images += 1
        self.masks_per_image[n_masks] += 1
        self.image_sizes[(int(width), int(height))] += 1

    def add_mask(self, m: MaskMeasures, width: int, height: int) -> None:
        self.masks += 1
        rel = math.sqrt(m.area / (width * height))
        k = int(np.searchsorted(SIZE_EDGES, rel, side="right")) - 1
        self.size_hist[min(max(k, 0), len(self.size_hist) - 1)] += 1
        self.size_sum += rel
        self.size_min = min(self.size_min, rel)
        self.size_max = max(self.size_max, rel)
        c = int(np.searchsorted(CONCAVITY_EDGES, m.concavity, side="right")) - 1
        self.concavity_hist[min(max(c, 0), len(self.concavity_hist) - 1)] += 1
        self.concavity_sum += m.concavity
        cx = min(int(m.centre_x * CENTRE_BINS), CENTRE_BINS - 1)
        cy = min(int(m.centre_y * CENTRE_BINS), CENTRE_BINS - 1)
        self.centre_hist[cy, cx] += 1

    # ------------------------------------------------------------------ summaries

    def count_hist(self) -> np.ndarray:
        out = np.zeros(len(COUNT_BINS), np.int64)
        for n, images in self.masks_per_image.items():
            out[count_bin(n)] += images
        return out

    def count_quantile(self, q: float) -> float:
        """Exact quantile of masks per image (from the count -> images table)."""
        if not self.images:
            return math.nan
        values = np.array(sorted(self.masks_per_image))
        cum = np.cumsum([self.masks_per_image[v] for v in values])
        return float(values[int(np.searchsorted(cum, q * self.images, side="left"))])

    def centre_map(self) -> np.ndarray:
        """The 20x20 centre heat map (rows = y), normalised to sum 1 (zeros without masks)."""
        total = self.centre_hist.sum()
        return self.centre_hist / total if total else self.centre_hist.astype(float)

    def to_dict(self) -> dict[str, Any]:
        widths = [w for (w, _h), n in self.image_sizes.items() for _ in range(n)]
        heights = [h for (_w, h), n in self.image_sizes.items() for _ in range(n)]
        counts = self.count_hist()
        return {
            "name": self.name,
            "sources": self.sources,
            "images": self.images,
            "masks": self.masks,
            "empty_masks_skipped": self.empty_masks,
            "crowd_annotations_skipped": self.crowd_skipped,
            "masks_per_image": {
                "mean": self.masks / self.images if self.images else None,
                "median": self.count_quantile(0.5),
                "min": min(self.masks_per_image) if self.images else None,
                "max": max(self.masks_per_image) if self.images else None,
                "bins": [label for _, _, label in COUNT_BINS],
                "images": counts.tolist(),
                "fraction": (counts / max(self.images, 1)).tolist(),
            },
            "relative_size": {
                "definition": "sqrt(mask area / image area)",
                "mean": self.size_sum / self.masks if self.masks else None,
                "min": self.size_min if self.masks else None,
                "max": self.size_max if self.masks else None,
                "edges": SIZE_EDGES.tolist(),
                "masks": self.size_hist.tolist(),
                "fraction": (self.size_hist / max(self.masks, 1)).tolist(),
            },
            "concavity": {
                "definition": "1 - mask area / convex hull area (hull of the pixel squares)",
                "mean": self.concavity_sum / self.masks if self.masks else None,
                "edges": CONCAVITY_EDGES.tolist(),
                "masks": self.concavity_hist.tolist(),
                "fraction": (self.concavity_hist / max(self.masks, 1)).tolist(),
            },
            "centres": {
                "definition": f"{CENTRE_BINS}x{CENTRE_BINS} bins of the mask centre of mass in normalised image "
                "coordinates; rows are y (top first); sums to 1",
                "map": self.centre_map().tolist(),
            },
            "image_sizes": {
                "width": _spread(widths),
                "height": _spread(heights),
                "most_common": [
                    {"width": w, "height": h, "images": n} for (w, h), n in self.image_sizes.most_common(10)
                ],
                "distinct": len(self.image_sizes),
            },
        }


def _spread(values: list[int]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": float(min(values)), "median": float(np.median(values)), "max": float(max(values))}


# --------------------------------------------------------------------------- reading inputs


@dataclass(frozen=True)
class ImageMasks:
    """One image of an input: where it came from, its size, and its masks (decoded lazily)."""

    source: str
    width: int
    height: int
    masks: Iterator[np.ndarray]
    crowd_skipped: int = 0


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataStatsError(f"cannot read {path}: {exc}") from None


def is_coco(data: Any) -> bool:
    """A COCO instances file: top-level ``images`` and ``annotations`` lists."""
    return isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list)


def _image_size(info: Any, where: str) -> tuple[int, int]:
    try:
        w, h = info["width"], info["height"]
    except (KeyError, TypeError):
        raise DataStatsError(f"{where}: image has no width/height") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)):
        raise DataStatsError(f"{where}: image size {w!r}x{h!r} is not two positive integers")
    return int(w), int(h)


def _decode_rle(seg: Any, h: int, w: int, where: str) -> np.ndarray:
    try:
        return rle_to_mask(validate_rle(seg, expected_size=(h, w), field="segmentation"))
    except ValueError as exc:
        raise DataStatsError(f"{where}: {exc}") from None


def _decode_polygons(seg: list[Any], h: int, w: int, where: str) -> np.ndarray:
    polys = []
    for k, poly in enumerate(seg):
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            raise DataStatsError(f"{where}: polygon {k} is not a flat list of at least 3 x, y pairs")
        try:
            xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            raise DataStatsError(f"{where}: polygon {k} holds non-numbers") from None
        if not np.isfinite(xy).all():
            raise DataStatsError(f"{where}: polygon {k} holds NaN or infinite coordinates")
        t = POLYGON_TOLERANCE_PX
        if xy[:, 0].min() < -t or xy[:, 0].max() > w + t or xy[:, 1].min() < -t or xy[:, 1].max() > h + t:
            raise DataStatsError(
                f"{where}: polygon {k} reaches outside the {w}x{h} image "
                f"(x {xy[:, 0].min():.1f}..{xy[:, 0].max():.1f}, y {xy[:, 1].min():.1f}..{xy[:, 1].max():.1f})"
            )
        polys.append(xy.reshape(-1).tolist())
    if not polys:
        raise DataStatsError(f"{where}: empty polygon list")
    return rasterize_polygons(polys, h, w)


def _sa1b_masks(rec: Any, path: Path) -> Iterator[np.ndarray]:
    for k, ann in enumerate(rec.annotations):
        where = f"{path}: annotation {k}"
        if not isinstance(ann, dict) or "segmentation" not in ann:
            raise DataStatsError(f"{where} has no segmentation")
        yield _decode_rle(ann["segmentation"], rec.height, rec.width, where)


def iter_sa1b_record(path: Path) -> ImageMasks:
    """One SA-1B record as :class:`ImageMasks` (masks checked and decoded on iteration)."""
    try:
        rec = read_record(path)
    except SA1BError as exc:
        raise DataStatsError(str(exc)) from None
    w, h = _image_size({"width": rec.width, "height": rec.height}, str(path))
    return ImageMasks(str(path), w, h, _sa1b_masks(rec, path))


def iter_coco_file(path: Path, data: dict[str, Any]) -> Iterator[ImageMasks]:
    """The images of a parsed COCO instances file, in image-id order."""
    images: dict[Any, dict[str, Any]] = {}
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img:
            raise DataStatsError(f"{path}: an image entry has no id")
        images[img["id"]] = img
    by_image: dict[Any, list[dict[str, Any]]] = {k: [] for k in images}
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or ann.get("image_id") not in by_image:
            raise DataStatsError(f"{path}: annotation {k} refers to an image id not in 'images'")
        by_image[ann["image_id"]].append(ann)

    def masks(anns: list[dict[str, Any]], h: int, w: int, name: str) -> Iterator[np.ndarray]:
        for ann in anns:
            where = f"{path}: annotation id {ann.get('id')} (image {name})"
            seg = ann.get("segmentation")
            if isinstance(seg, list):
                yield _decode_polygons(seg, h, w, where)
            elif isinstance(seg, dict):
                yield _decode_rle(seg, h, w, where)
            else:
                raise DataStatsError(f"{where}: segmentation is neither polygons nor an RLE")

    for img_id in sorted(images, key=str):
        info = images[img_id]
        name = str(info.get("file_name", img_id))
        w, h = _image_size(info, f"{path}: image {name}")
        anns = by_image[img_id]
        kept = [a for a in anns if not a.get("iscrowd", 0)]
        yield ImageMasks(f"{path}#{name}", w, h, masks(kept, h, w, name), crowd_skipped=len(anns) - len(kept))


@dataclass(frozen=True)
class InputPlan:
    """What one ``DIR`` argument holds: SA-1B record paths and COCO files, listed, not read."""

    path: Path
    files: list[Path]

    def count_images(self) -> int | None:
        """Number of images when it is known without parsing (SA-1B-only folders)."""
        return len(self.files) if self.path.is_dir() else None


def plan_input(path: str | os.PathLike) -> InputPlan:
    """List the JSON files of one input (a file, or a folder searched recursively)."""
    p = Path(path)
    if p.is_file():
        return InputPlan(p, [p])
    if not p.exists():
        raise DataStatsError(f"input not found: {p}")
    try:
        files = list_records(p)
    except SA1BError:
        raise DataStatsError(f"no .json files (SA-1B records or COCO instances) under {p}") from None
    return InputPlan(p, files)


def iter_images(plan: InputPlan) -> Iterator[ImageMasks]:
    """Every image of an input, SA-1B records and COCO files alike (detected by content)."""
    for f in plan.files:
        try:
            yield iter_sa1b_record(f)
            continue
        except DataStatsError as exc:
            first_error = exc
        data = _load_json(f)
        if is_coco(data):
            yield from iter_coco_file(f, data)
        else:
            raise first_error


def collect(inputs: Sequence[str | os.PathLike], names: Sequence[str] | None = None,
            progress: bool = True) -> list[SetStats]:
    """Read every input and accumulate its statistics (nothing is written)."""
    from tqdm import tqdm

    if not inputs:
        raise DataStatsError("no inputs given")
    plans = [plan_input(p) for p in inputs]
    labels = list(names) if names else _default_names([pl.path for pl in plans])
    if len(labels) != len(plans):
        raise DataStatsError(f"{len(labels)} names for {len(plans)} inputs")
    out = []
    for plan, label in zip(plans, labels, strict=True):
        s = SetStats(label, [str(plan.path)])
        bar = tqdm(iter_images(plan), total=plan.count_images(), desc=f"stats {label}", unit="img", disable=not progress)
        for image in bar:
            n = 0
            for mask in image.masks:
                measures = measure_mask(mask)
                if measures is None:
                    s.empty_masks += 1
                    continue
                s.add_mask(measures, image.width, image.height)
                n += 1
            s.crowd_skipped += image.crowd_skipped
            s.add_image(image.width, image.height, n)
        if s.images == 0:
            raise DataStatsError(f"{plan.path} holds no images")
        out.append(s)
    return out


def _default_names(paths: Sequence[Path]) -> list[str]:
    """Each input's file or folder name, made unique with its parent's name when needed."""
    names = [p.stem if p.is_file() else p.name or str(p) for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{n}" if p.parent.name else n for p, n in zip(paths, names, strict=True)]
    if len(set(names)) < len(names):
        names = [f"{n} ({k + 1})" for k, n in enumerate(names)]
    return names


# --------------------------------------------------------------------------- report


def report_markdown(sets: Sequence[SetStats], command: str) -> str:
    """report.md: one table per statistic, one column per set."""
    from ..eval.report import markdown_table

    d = [s.to_dict() for s in sets]
    names = [s.name for s in sets]
    lines = ["# Dataset statistics (paper section 5, figures 5-6)", "", f"- command: `{command}`"]
    lines += [f"- {x['name']}: {', '.join(x['sources'])}" for x in d]
    lines += ["", "## Overview", ""]
    rows = [
        ["images", *[x["images"] for x in d]],
        ["masks", *[x["masks"] for x in d]],
        ["masks per image: mean", *[x["masks_per_image"]["mean"] for x in d]],
        ["masks per image: median", *[x["masks_per_image"]["median"] for x in d]],
        ["masks per image: min / max", *[f"{x['masks_per_image']['min']} / {x['masks_per_image']['max']}" for x in d]],
        ["relative size: mean", *[x["relative_size"]["mean"] for x in d]],
        ["concavity: mean", *[x["concavity"]["mean"] for x in d]],
        ["empty masks skipped", *[x["empty_masks_skipped"] for x in d]],
        ["crowd annotations skipped", *[x["crowd_annotations_skipped"] for x in d]],
    ]
    lines.append(markdown_table(["", *names], rows))
    lines += ["## Masks per image (% of images)", ""]
    rows = [[label, *[100 * x["masks_per_image"]["fraction"][k] for x in d]] for k, (_, _, label) in enumerate(COUNT_BINS)]
    lines.append(markdown_table(["masks", *names], rows, digits=1))
    lines += ["## Relative mask size sqrt(area / image area) (% of masks)", "",
              "Bins grouped by half decade here; report.json has 10 bins per decade.", ""]
    groups = [(1e-4, 10**-3.5), (10**-3.5, 1e-3), (1e-3, 10**-2.5), (10**-2.5, 1e-2), (1e-2, 10**-1.5),
              (10**-1.5, 0.1), (0.1, 10**-0.5), (10**-0.5, 1.0)]
    rows = []
    for lo, hi in groups:
        sel = (SIZE_EDGES[:-1] >= lo * (1 - 1e-9)) & (SIZE_EDGES[1:] <= hi * (1 + 1e-9))
        label = f"{lo:.4f} - {hi:.4f}" + (" (and below)" if lo == 1e-4 else "")
        rows.append([label, *[100 * float(np.asarray(x["relative_size"]["fraction"])[sel].sum()) for x in d]])
    lines.append(markdown_table(["relative size", *names], rows, digits=1))
    lines += ["## Concavity 1 - area / convex hull area (% of masks)", ""]
    cf = [np.asarray(x["concavity"]["fraction"]) for x in d]
    rows = [[f"{CONCAVITY_EDGES[2 * k]:.1f} - {CONCAVITY_EDGES[2 * k + 2]:.1f}",
             *[100 * float(f[2 * k : 2 * k + 2].sum()) for f in cf]] for k in range(10)]
    lines.append(markdown_table(["concavity", *names], rows, digits=1))
    lines += ["## Mask centres (% of masks per image region, 4x4 grid of the 20x20 map)", ""]
    for x in d:
        grid = np.asarray(x["centres"]["map"]).reshape(4, 5, 4, 5).sum(axis=(1, 3))
        lines += [f"{x['name']} (rows top to bottom, columns left to right):", ""]
        lines.append(markdown_table(["", "x 0-.25", ".25-.5", ".5-.75", ".75-1"],
                                    [[f"y {['0-.25', '.25-.5', '.5-.75', '.75-1'][r]}", *(100 * grid[r])] for r in range(4)],
                                    digits=1))
    lines += ["## Image sizes", ""]
    rows = [
        ["width min / median / max", *[_fmt_spread(x["image_sizes"]["width"]) for x in d]],
        ["height min / median / max", *[_fmt_spread(x["image_sizes"]["height"]) for x in d]],
        ["distinct sizes", *[x["image_sizes"]["distinct"] for x in d]],
        ["most common (WxH: images)", *[", ".join(f"{m['width']}x{m['height']}: {m['images']}"
                                                   for m in x["image_sizes"]["most_common"][:3]) for x in d]],
    ]
    lines.append(markdown_table(["", *names], rows))
    lines += ["Figures: masks_per_image.png, relative_size.png, concavity.png, centres.png, image_sizes.png.", ""]
    return "\n".join(lines)


def _fmt_spread(s: dict[str, float | None]) -> str:
    if s["min"] is None:
        return "-"
    return f"{s['min']:.0f} / {s['median']:.0f} / {s['max']:.0f}"


def _label(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels, title and legend: every figure of the report names its sets."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()


def make_figures(sets: Sequence[SetStats]) -> dict[str, Any]:
    """One matplotlib figure per statistic, the sets overlaid or side by side (not saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, Any] = {}
    n = len(sets)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    width = 0.8 / n
    x = np.arange(len(COUNT_BINS))
    for k, s in enumerate(sets):
        ax.bar(x + (k - (n - 1) / 2) * width, 100 * s.count_hist() / s.images, width, label=s.name, color=colors[k % 10])
    ax.set_xticks(x, [label for _, _, label in COUNT_BINS])
    _label(ax, "masks per image", "% of images", "Masks per image")
    figs["masks_per_image"] = fig

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for k, s in enumerate(sets):
        frac = 100 * s.size_hist / max(s.masks, 1)
        ax.stairs(frac, SIZE_EDGES, label=s.name, color=colors[k % 10], linewidth=1.5)
    ax.set_xscale("log")
    _label(ax, "relative mask size sqrt(mask area / image area)", "% of masks", "Relative mask size")
    figs["relative_size"] = fig

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for k, s in enumerate(sets):
        ax.stairs(100 * s.concavity_hist / max(s.masks, 1), CONCAVITY_EDGES, label=s.name, color=colors[k % 10],
                  linewidth=1.5)
    _label(ax, "concavity 1 - mask area / convex hull area", "% of masks", "Mask concavity")
    figs["concavity"] = fig

    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 0.8, 3.4), squeeze=False)
    vmax = max(float(s.centre_map().max()) for s in sets) or 1.0
    im = None
    for k, (ax, s) in enumerate(zip(axes[0], sets, strict=True)):
        im = ax.imshow(s.centre_map(), extent=(0, 1, 1, 0), cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title(s.name, fontsize=9)
        ax.set_xlabel("x / width")
        if k == 0:
            ax.set_ylabel("y / height")
        else:
            ax.tick_params(labelleft=False)
    fig.colorbar(im, ax=axes[0].tolist(), label="fraction of masks")
    fig.suptitle("Mask centre distribution")
    figs["centres"] = fig

    fig, ax = plt.subplots(figsize=(5.0, 4.4))
    for k, s in enumerate(sets):
        sizes = np.array(list(s.image_sizes))
        counts = np.array([s.image_sizes[tuple(v)] for v in sizes])
        ax.scatter(sizes[:, 0], sizes[:, 1], s=8 + 60 * counts / counts.max(), alpha=0.5, label=s.name,
                   color=colors[k % 10])
    _label(ax, "width (px)", "height (px)", "Image sizes (marker area ~ images)")
    figs["image_sizes"] = fig
    return figs


def write_report(sets: Sequence[SetStats], out_dir: str | os.PathLike, command: str) -> list[Path]:
    """report.json, report.md and one PNG per statistic, each written atomically.

    Everything is rendered in memory first; report.json goes last, so its presence means
    the report is complete."""
    from ..eval.report import save_figure, write_json, write_text

    out = Path(out_dir)
    md = report_markdown(sets, command)
    payload = {"command": command, "sets": [s.to_dict() for s in sets]}
    figs = make_figures(sets)
    written = []
    for name, fig in figs.items():
        save_figure(fig, out / f"{name}.png")
        written.append(out / f"{name}.png")
    write_text(out / "report.md", md)
    write_json(out / "report.json", payload)
    return [*written, out / "report.md", out / "report.json"]


def summary_lines(sets: Sequence[SetStats]) -> list[str]:
    """One printed line per set (what ``segany data stats`` shows on the terminal)."""
    lines = []
    for s in sets:
        med = s.count_quantile(0.5)
        mean_size = s.size_sum / s.masks if s.masks else math.nan
        lines.append(
            f"{s.name}: {s.images} images, {s.masks} masks, masks/image median {med:.0f} "
            f"(min {min(s.masks_per_image)}, max {max(s.masks_per_image)}), relative size mean {mean_size:.3f}, "
            f"concavity mean {s.concavity_sum / max(s.masks, 1):.3f}"
        )
    return lines
