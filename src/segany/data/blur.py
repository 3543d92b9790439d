"""Blur faces and licence plates in released images (SAM paper, appendix F).

SA-1B was published with every face and licence plate blurred. This module does the same
to images about to leave the machine -- loose image files and folders, SA-1B folders, the
images ``segany auto --blur`` and ``segany engine export --blur`` release -- and keeps a
log of what it blurred where:

- **Detection** is a :data:`~segany.data.detectors.Detector` callable (default:
  :func:`~segany.data.detectors.make_detector` ``("auto")`` -- CenterFace for faces when its
  model file is installed, else OpenCV's cascades; plates always by the cascade), so another
  detector plugs in without touching what follows, and tests inject one.
- **Blurring**: each detected box is enlarged by ``margin`` of its size on every side (a
  detector's box is tight -- a Haar face box stops at the eyebrows -- and what must
  disappear is the face, hair line and chin included), clipped to the image, and replaced by
  a Gaussian blur of itself with ``sigma = sigma_fraction * min(w, h)`` of the enlarged box
  (at least :data:`MIN_SIGMA`) and a kernel of ``2 * ceil(3 sigma) + 1``: a fixed sigma
  would leave a large face recognisable and smear a small one into its surroundings. The
  blur reads the pixels around the box (reflected at the image's edges), so the region does
  not fade to a frame of border pixels. Pixels outside every box are untouched.
- **Annotations stay as they are**: the geometry of an image does not change, so an SA-1B
  folder's JSON files are copied byte for byte next to their blurred images.
- **Files**: an image in which nothing was found is copied byte for byte (``--out``) or not
  touched at all (``--in-place``); a blurred one is re-encoded from its pixels in its own
  format (JPEG at quality :data:`JPEG_QUALITY`), as 8-bit RGB with the EXIF orientation
  applied and no metadata. Nothing is half-written: every output is first written under a
  hidden temporary name in its destination folder (:mod:`segany.atomic_files`), and only
  when *every* image has been read, searched and written are the temporaries renamed into
  place (``os.replace``, atomic per file); any failure -- an unreadable or corrupt image, a
  full disk -- removes the temporaries and names the file. Originals are never overwritten
  unless ``in_place``, and then each through that same rename.
- **The log** (:func:`write_log`, :func:`read_log`) is JSON Lines, ``blur_log.jsonl`` by
  default: a ``{"run": {...}}`` line with the detector's settings and the blur parameters,
  then one ``{"image": ...}`` line per image with every region blurred (``kind``,
  ``detector``, ``score`` or null, the detected ``box`` and the ``blurred_box``, both XYWH,
  and ``sigma``). Later runs append their own run line and entries; a reader takes each
  image's latest entry. Why not one ``.json`` document: SA-1B readers take every ``*.json``
  under their folder for an image record, and the log often sits in such a folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_files import atomic_path, is_partial_file, write_text_atomic
from .detectors import Detection, Detector, make_detector
from .sa1b import list_records, read_record

DEFAULT_MARGIN = 0.15
DEFAULT_SIGMA_FRACTION = 0.15
MIN_SIGMA = 2.0
JPEG_QUALITY = 95
LOG_NAME = "blur_log.jsonl"
LOG_VERSION = 1

# The image suffixes taken from folders: the same set as ``segany auto`` takes
# (segany.automatic.folder.IMAGE_EXTENSIONS; a test keeps the two equal).
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


class BlurError(ValueError):
    """An input cannot be blurred (missing, unreadable, or a plan that would clobber a file)."""


# ------------------------------------------------------------------------------ pixels


def enlarge_box(box: Sequence[float], margin: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """XYWH ``box`` grown by ``margin`` of its width/height on each side, clipped to the
    HxW image ``shape``: integer ``(x0, y0, x1, y1)`` with exclusive ends (slice bounds)."""
    x, y, w, h = (float(v) for v in box)
    h_img, w_img = shape
    x0 = max(0, math.floor(x - margin * w))
    y0 = max(0, math.floor(y - margin * h))
    x1 = min(w_img, math.ceil(x + w + margin * w))
    y1 = min(h_img, math.ceil(y + h + margin * h))
    return x0, y0, max(x0, x1), max(y0, y1)


def blur_sigma(width: int, height: int, sigma_fraction: float = DEFAULT_SIGMA_FRACTION) -> float:
    """The Gaussian sigma for a region of ``width`` x ``height`` pixels."""
    return max(MIN_SIGMA, sigma_fraction * min(width, height))


def blur_regions(
    image: np.ndarray,
    detections: Iterable[Detection],
    margin: float = DEFAULT_MARGIN,
    sigma_fraction: float = DEFAULT_SIGMA_FRACTION,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Blur every detection's (enlarged) box of an HxWxC uint8 image.

    Returns a new image and one log record per region blurred; the input is not modified.
    Boxes that end up empty after clipping (a detection outside the image) are skipped.
    """
    import cv2

    if image.ndim not in (2, 3) or image.dtype != np.uint8:
        raise ValueError(f"blur_regions needs an HxW or HxWxC uint8 image, got {image.dtype} {image.shape}")
    out = image.copy()
    h, w = image.shape[:2]
    regions = []
    for det in detections:
        x0, y0, x1, y1 = enlarge_box(det.box, margin, (h, w))
        if x1 <= x0 or y1 <= y0:
            continue
        sigma = blur_sigma(x1 - x0, y1 - y0, sigma_fraction)
        radius = int(math.ceil(3 * sigma))
        # the blur sees the pixels around the box, so the region's edge is a true blur too
        px0, py0, px1, py1 = max(0, x0 - radius), max(0, y0 - radius), min(w, x1 + radius), min(h, y1 + radius)
        patch = cv2.GaussianBlur(out[py0:py1, px0:px1], (2 * radius + 1, 2 * radius + 1), sigmaX=sigma,
                                 sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
        out[y0:y1, x0:x1] = patch[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0]
        regions.append({
            "kind": det.kind,
            "detector": det.detector,
            "score": None if det.score is None else round(float(det.score), 4),
            "box": [round(float(v), 2) for v in det.box],
            "blurred_box": [x0, y0, x1 - x0, y1 - y0],
            "sigma": round(sigma, 3),
        })
    return out, regions


# ------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class BlurJob:
    """One image to blur: read ``source``, write ``target`` (the same path when in place),
    named ``name`` in the log; ``record`` is an SA-1B JSON copied unchanged to ``record_target``."""

    source: Path
    target: Path
    name: str
    record: Path | None = None
    record_target: Path | None = None


def _folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not is_partial_file(p))


def _is_sa1b_folder(folder: Path) -> bool:
    return any(p.is_file() and not p.name.endswith(".tmp") and not is_partial_file(p) for p in folder.rglob("*.json"))


def plan_jobs(inputs: Iterable[str | os.PathLike], out: str | os.PathLike | None = None,
              in_place: bool = False) -> list[BlurJob]:
    """The jobs for ``inputs`` (image files, image folders searched recursively, SA-1B
    folders -- any folder with a ``.json`` file), written under ``out`` or, with
    ``in_place``, over themselves.

    Under ``out`` a file keeps its name and a folder's images their paths relative to the
    folder. An SA-1B folder's images are the ones its records name (others are not part of
    the dataset and are left out). Refused before anything is read or written, naming the input: a missing input, a
    file that is not an image, a folder with no image or record, an SA-1B record whose image
    is missing or lies outside its folder, two inputs landing on one output, and an output
    that is an input (use ``in_place`` for that).
    """
    if in_place == (out is not None):
        raise BlurError("give exactly one of an output folder (--out) and --in-place")
    root = None if out is None else Path(out)
    if root is not None and root.exists() and not root.is_dir():
        raise BlurError(f"--out {root} exists and is not a folder")
    jobs: list[BlurJob] = []
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise BlurError("no inputs given")
    for item in inputs:
        if item.is_file():
            if item.suffix.lower() not in IMAGE_EXTENSIONS:
                raise BlurError(f"{item} is not an image file (suffixes taken: {' '.join(sorted(IMAGE_EXTENSIONS))})")
            jobs.append(BlurJob(item, item if root is None else root / item.name, item.name))
        elif item.is_dir():
            if _is_sa1b_folder(item):
                for json_path in list_records(item):
                    rec = read_record(json_path)
                    image = rec.image_path
                    try:
                        rel_image = image.resolve().relative_to(item.resolve())
                    except ValueError:
                        raise BlurError(f"{json_path}: its image {image} lies outside {item}; blurring needs "
                                        "the images beside their records") from None
                    if not image.is_file():
                        raise BlurError(f"{json_path}: its image {image} is missing")
                    rel_json = json_path.relative_to(item)
                    if root is None:
                        jobs.append(BlurJob(image, image, str(rel_image)))
                    else:
                        jobs.append(BlurJob(image, root / rel_image, str(rel_image), json_path, root / rel_json))
            else:
                found = _folder_images(item)
                if not found:
                    raise BlurError(f"folder {item} holds no image files and no SA-1B records")
                for f in found:
                    rel = f.relative_to(item)
                    jobs.append(BlurJob(f, f if root is None else root / rel, str(rel)))
        else:
            raise BlurError(f"no such file or folder: {item}")
    check_jobs(jobs, in_place=root is None)
    return jobs


def check_jobs(jobs: Sequence[BlurJob], in_place: bool = False, taken: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse jobs that would write one file twice, overwrite an input (unless
    ``in_place``, where each job writes exactly its own source), or write over ``taken``
    (other outputs of the same run, e.g. ``segany auto``'s JSON and PNG files)."""
    sources = {j.source.resolve(): j for j in jobs}
    sources.update({j.record.resolve(): j for j in jobs if j.record is not None})
    written: dict[Path, BlurJob | None] = {Path(p).resolve(): None for p in taken}
    for job in jobs:
        for target in (job.target, job.record_target):
            if target is None:
                continue
            key = target.resolve()
            if key in written:
                other = written[key]
                what = f"{other.source}" if other is not None else "another output of this run"
                raise BlurError(f"{job.source} and {what} would both be written to {target}")
            if in_place:
                if key != job.source.resolve():
                    raise BlurError(f"in place, {job.source} would be written to another file, {target}")
            elif key in sources:
                raise BlurError(f"writing {target} would overwrite the original {sources[key].source}; "
                                "write to another folder (`segany data blur --in-place` blurs originals)")
            written[key] = job


# ------------------------------------------------------------------------------ running


@dataclass
class BlurSummary:
    """What a run did: images seen, images with something blurred, regions per kind."""

    images: int = 0
    blurred: int = 0
    regions: dict[str, int] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)
    log: Path | None = None

    def line(self) -> str:
        kinds = ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in sorted(self.regions.items())) or "nothing"
        return f"{self.images} image(s), {self.blurred} with something blurred: {kinds}"


def _pil_format(path: Path) -> str:
    """Pillow's format for ``path``'s suffix (the temporary file's suffix is the target's, but
    the format is named explicitly so nothing depends on that)."""
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise BlurError(f"{path}: no image format for the suffix {path.suffix!r}")
    return fmt


def _save(image: np.ndarray, path: Path, fmt: str) -> None:
    from PIL import Image

    kwargs: dict[str, Any] = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
    Image.fromarray(image).save(path, format=fmt, **kwargs)


def _missing_parents(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, outermost first."""
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    return missing[::-1]


def run_jobs(
    jobs: Sequence[BlurJob],
    detector: Detector | None = None,
    *,
    margin: float = DEFAULT_MARGIN,
    sigma_fraction: float = DEFAULT_SIGMA_FRACTION,
    progress: bool = False,
) -> BlurSummary:
    """Blur every job's image, all or nothing (see the module docstring); returns the
    summary with one log entry per image (:func:`write_log` writes them).

    Each output gets an :func:`segany.atomic_files.atomic_path` temporary beside it, held
    open until every job is done: on a clean exit they are all renamed into place, on any
    error all are removed (with the folders this call created, when left empty).
    """
    from tqdm import tqdm

    from ..image_io import ImageError, load_image

    if not (math.isfinite(margin) and margin >= 0):
        raise BlurError(f"margin must be a finite number >= 0, got {margin}")
    if not (math.isfinite(sigma_fraction) and sigma_fraction > 0):
        raise BlurError(f"sigma fraction must be a finite number > 0, got {sigma_fraction}")
    detector = detector if detector is not None else make_detector()
    summary = BlurSummary()
    created: list[Path] = []
    try:
        with ExitStack() as pending:

            def stage(target: Path) -> Path:
                created.extend(d for d in _missing_parents(target) if d not in created)
                return pending.enter_context(atomic_path(target))

            for job in tqdm(jobs, desc="blur", unit="img", disable=not progress):
                try:
                    image = load_image(job.source)
                    blurred, regions = blur_regions(image, list(detector(image)), margin, sigma_fraction)
                    if regions:
                        _save(blurred, stage(job.target), _pil_format(job.target))
                    elif job.target != job.source:
                        shutil.copyfile(job.source, stage(job.target))
                    if job.record is not None and job.record_target is not None:
                        shutil.copyfile(job.record, stage(job.record_target))
                except (ImageError, BlurError):
                    raise
                except OSError as exc:
                    where = f" ({exc.filename})" if exc.filename else ""
                    raise BlurError(f"{job.source}: {exc.strerror or exc}{where}") from exc
                except Exception as exc:
                    raise BlurError(f"{job.source}: {type(exc).__name__}: {exc}") from exc
                summary.images += 1
                summary.blurred += bool(regions)
                for r in regions:
                    summary.regions[r["kind"]] = summary.regions.get(r["kind"], 0) + 1
                summary.entries.append({
                    "image": job.name,
                    "source": str(job.source),
                    "width": int(image.shape[1]),
                    "height": int(image.shape[0]),
                    "regions": regions,
                })
    except BaseException:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass
        raise
    return summary


def run_settings(detector: Detector, margin: float, sigma_fraction: float, mode: str) -> dict[str, Any]:
    """The ``run`` line of a log: how the regions were found and blurred."""
    settings = detector.settings() if hasattr(detector, "settings") else {"name": getattr(detector, "__name__",
                                                                                         type(detector).__name__)}
    return {
        "version": LOG_VERSION,
        "mode": mode,
        "detector": settings,
        "margin": margin,
        "sigma_fraction": sigma_fraction,
        "min_sigma": MIN_SIGMA,
    }


def write_log(path: str | os.PathLike, run: dict[str, Any], entries: Sequence[dict[str, Any]]) -> Path:
    """Append one run (its ``run`` line, then its entries) to the JSON Lines log at
    ``path``, atomically: the old lines and the new are written to a temporary file that
    replaces the log (:func:`segany.atomic_files.write_text_atomic`)."""
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    lines = [json.dumps({"run": run})] + [json.dumps(e) for e in entries]
    return write_text_atomic(path, old + "\n".join(lines) + "\n")


def read_log(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Each image's latest entry in a log, with its run's settings under ``"run"``."""
    path = Path(path)
    latest: dict[str, dict[str, Any]] = {}
    run: dict[str, Any] = {}
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BlurError(f"{path}:{k}: not a JSON line ({exc.msg})") from None
        if "run" in item:
            run = item["run"]
        elif "image" in item:
            latest[str(item["image"])] = {**item, "run": run}
    return latest


# ------------------------------------------------------------------------------ entry points


def blur_paths(
    inputs: Iterable[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    in_place: bool = False,
    detector: Detector | None = None,
    margin: float = DEFAULT_MARGIN,
    sigma_fraction: float = DEFAULT_SIGMA_FRACTION,
    log: str | os.PathLike | None = None,
    progress: bool = False,
) -> BlurSummary:
    """``segany data blur``: plan, blur all or nothing, then write the log (by default
    ``out/blur_log.jsonl``, or in place beside the first input: in the folder given, or the
    given file's folder). Returns the summary."""
    inputs = list(inputs)
    jobs = plan_jobs(inputs, out, in_place)
    if log is None:
        first = Path(inputs[0])
        log = (Path(out) if out is not None else (first if first.is_dir() else first.parent)) / LOG_NAME
    if any(Path(log).resolve() == p.resolve() for j in jobs for p in (j.source, j.target)):
        raise BlurError(f"the log {log} would overwrite an image")
    detector = detector if detector is not None else make_detector()
    summary = run_jobs(jobs, detector, margin=margin, sigma_fraction=sigma_fraction, progress=progress)
    summary.log = write_log(log, run_settings(detector, margin, sigma_fraction, "in-place" if in_place else "copy"),
                            summary.entries)
    return summary


def blur_release(
    pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike, str]],
    log: str | os.PathLike,
    *,
    taken: Iterable[str | os.PathLike] = (),
    detector: Detector | None = None,
    margin: float = DEFAULT_MARGIN,
    sigma_fraction: float = DEFAULT_SIGMA_FRACTION,
    skip_logged: bool = True,
    progress: bool = False,
) -> BlurSummary:
    """Write blurred copies ``(source, target, name)`` of a run's images next to its other
    outputs (``segany auto --blur``) and append them to ``log``.

    With ``skip_logged``, a target that exists and already has an entry in the log (a
    resumed run) is left as it is. ``taken`` are the run's other outputs, which no copy may
    overwrite.
    """
    jobs = [BlurJob(Path(s), Path(t), name) for s, t, name in pairs]
    check_jobs(jobs, taken=taken)
    if skip_logged and Path(log).is_file():
        done = read_log(log)
        jobs = [j for j in jobs if not (j.name in done and j.target.is_file())]
    detector = detector if detector is not None else make_detector()
    summary = run_jobs(jobs, detector, margin=margin, sigma_fraction=sigma_fraction, progress=progress)
    if jobs:
        summary.log = write_log(log, run_settings(detector, margin, sigma_fraction, "copy"), summary.entries)
    return summary


def blur_folder_in_place(
    folder: str | os.PathLike,
    *,
    detector: Detector | None = None,
    margin: float = DEFAULT_MARGIN,
    sigma_fraction: float = DEFAULT_SIGMA_FRACTION,
    progress: bool = False,
) -> tuple[BlurSummary, dict[str, Any]]:
    """Blur the images of an SA-1B (or image) folder in place, all or nothing; returns the
    summary and the ``run`` settings, for a caller that writes the log elsewhere (the data
    engine's export blurs its staging folder before moving it into place)."""
    detector = detector if detector is not None else make_detector()
    run = run_settings(detector, margin, sigma_fraction, "in-place")
    if not any(Path(folder).iterdir()):
        return BlurSummary(), run  # an export of no image: nothing to blur, and no error
    summary = run_jobs(plan_jobs([folder], in_place=True), detector, margin=margin, sigma_fraction=sigma_fraction,
                       progress=progress)
    return summary, run


def describe(summary: BlurSummary) -> str:
    """One line for the command line."""
    where = f"; log: {summary.log}" if summary.log else ""
    return summary.line() + where
