"""Segment every image of files, folders and globs: resumable, one output per image.

Every output records what made it: a ``"segany"`` object first in each JSON (a ``tEXt``
chunk in PNGs) holding the generator settings that change results, the SHA-256 of the
model's weights and a key over both (:func:`run_provenance`). An image is *finished* when
its output exists (outputs are renamed into place only when complete) and carries this
run's key, so a rerun after a crash or a kill skips finished images and redoes only the
rest, while a rerun with other thresholds, another model or another ``--dtype`` never takes
old results for new ones: it stops with a message that lists what differs, before any image
is computed, unless ``overwrite=True`` (``segany auto --overwrite``) recomputes those images.
Images that cannot be read are reported and skipped; the run goes on.

Both runners -- :func:`segment_folder` here and the Ray one (``ray_runner``) -- are built
from the same three steps, so they cannot disagree: :func:`prepare_outputs` (check, create
``--out``, clear partial files), :func:`plan_resume` (which images are finished, or a
:class:`ResumeConflict`) and :func:`segment_image` (compute one image, write its outputs).
"""

from __future__ import annotations

import glob
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..atomic_files import is_partial_file, remove_partial_files, write_all_or_nothing
from ..image_io import ImageError, load_image
from ..modeling.fingerprint import weights_sha256
from ..visualize import overlay_records
from .generator import SamAutomaticMaskGenerator
from .outputs import (
    check_output_dir,
    check_outputs,
    coco_json,
    json_writer,
    label_map,
    png_writer,
    sa1b_json,
)

RECORD_KEY = "segany"  # first key of every JSON output, tEXt key of every PNG output
RECORD_VERSION = 1

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


@dataclass
class ImageJob:
    """One input image and the name its outputs get (relative path without extension)."""

    path: Path
    name: str


@dataclass
class RunSummary:
    """What a run did, image by image (each image named once, whichever runner made it).

    ``resubmitted``: images sent again to another worker after theirs died (Ray runs only)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    masks: int = 0
    seconds: float = 0.0
    resubmitted: int = 0

    def lines(self) -> list[str]:
        n = len(self.done)
        out = [
            f"processed {n} image(s), skipped {len(self.skipped)} already finished, failed {len(self.failed)}",
            f"masks: {self.masks}" + (f" ({self.masks / n:.1f} per image)" if n else ""),
            f"time: {self.seconds:.1f} s" + (f" ({self.seconds / n:.2f} s per image)" if n else ""),
        ]
        if self.resubmitted:
            out.append(f"resubmitted {self.resubmitted} image(s) after a worker died")
        if self.failed:
            out.append("failed images:")
            out += [f"  {path}: {why}" for path, why in self.failed]
        return out


def collect_images(inputs: Iterable[str]) -> tuple[list[ImageJob], list[tuple[str, str]]]:
    """Expand files, folders (recursively, image extensions only) and glob patterns.

    Returns the jobs (sorted, duplicates removed) and the inputs that matched nothing. Output
    names keep the path relative to the folder given, so same-named images in different
    sub-folders do not collide.
    """
    jobs: dict[Path, ImageJob] = {}
    missing: list[tuple[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not _is_own_output(f)
            )
            for f in found:
                jobs.setdefault(f.resolve(), ImageJob(f, str(f.relative_to(p).with_suffix(""))))
            if not found:
                missing.append((item, "folder holds no image files"))
        elif p.is_file():
            jobs.setdefault(p.resolve(), ImageJob(p, p.stem))
        else:
            matches = sorted(glob.glob(item, recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file() and not _is_own_output(Path(m))]
            for f in files:
                jobs.setdefault(f.resolve(), ImageJob(f, f.stem))
            if not files:
                missing.append((item, "no such file, folder or matching glob"))
    names: dict[str, int] = {}
    unique = []
    for job in sorted(jobs.values(), key=lambda j: (j.name, str(j.path))):
        k = names.get(job.name, 0)
        names[job.name] = k + 1
        unique.append(job if k == 0 else ImageJob(job.path, f"{job.name}_{k}"))
    return unique, missing


def _is_own_output(path: Path) -> bool:
    """A PNG that ``segany auto`` wrote (an overlay or label map: it carries the run record),
    or the temporary file of a write in progress or killed (it has the image's suffix).

    Why: with ``--out`` inside an input folder, a rerun would otherwise segment last run's
    overlays as new photos. Only folder and glob inputs are filtered; a file named
    explicitly is always taken."""
    if is_partial_file(path):
        return True
    return path.suffix.lower() == ".png" and read_provenance(path) is not None


def output_path(out_dir: Path, name: str, fmt: str) -> Path:
    suffix = ".png" if fmt == "png" else ".json"
    return out_dir / f"{name}{suffix}"


def overlay_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.overlay.png"


def check_plan(jobs: list[ImageJob], out_dir: str | Path, fmt: str, save_overlay: bool) -> None:
    """Refuse a run whose outputs cannot be written or would destroy an input, before the
    model runs: ``--out`` must be (or be creatable as) a writable folder, and no output may
    be an input image (``auto photos/ --out photos/ --format png``), another output, or an
    existing directory."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    check_output_dir(out, what=f"--out {out}")
    outputs: list[tuple[str, Path]] = []
    for job in jobs:
        outputs.append((f"output of {job.path}:", output_path(out, job.name, fmt)))
        if save_overlay:
            outputs.append((f"overlay of {job.path}:", overlay_path(out, job.name)))
    check_outputs(outputs, inputs=[job.path for job in jobs])


def remove_partials(out_dir: Path) -> int:
    """Delete temporary files left by a killed run; returns how many."""
    return remove_partial_files(out_dir)


# ------------------------------------------------------------------ what made an output


def generator_settings(generator: SamAutomaticMaskGenerator, fmt: str) -> dict[str, Any]:
    """Every setting of ``generator`` that changes its masks, plus the output format.

    ``points_per_batch`` is left out on purpose: it changes how many points are decoded at
    once, not the masks. The point grids are recorded by their sizes and a hash (so explicit
    ``point_grids`` are covered as well as ``points_per_side``)."""
    grids = [np.ascontiguousarray(g, dtype=np.float64) for g in generator.point_grids]
    grid_hash = hashlib.sha256(b"".join(g.tobytes() for g in grids)).hexdigest()[:16]
    return {
        "format": fmt,
        "points_per_layer": [int(len(g)) for g in grids],
        "point_grids_sha256": grid_hash,
        "pred_iou_thresh": float(generator.pred_iou_thresh),
        "stability_score_thresh": float(generator.stability_score_thresh),
        "stability_score_offset": float(generator.stability_score_offset),
        "box_nms_thresh": float(generator.box_nms_thresh),
        "crop_n_layers": int(generator.crop_n_layers),
        "crop_nms_thresh": float(generator.crop_nms_thresh),
        "crop_overlap_ratio": float(generator.crop_overlap_ratio),
        "crop_n_points_downscale_factor": int(generator.crop_n_points_downscale_factor),
        "min_mask_region_area": int(generator.min_mask_region_area),
        "max_mask_fraction": None if generator.max_mask_fraction is None else float(generator.max_mask_fraction),
        "max_masks": None if generator.max_masks is None else int(generator.max_masks),
    }


def run_provenance(generator: SamAutomaticMaskGenerator, fmt: str, model_name: str | None = None) -> dict[str, Any]:
    """The record written into every output of a run (see the module docstring)."""
    settings = generator_settings(generator, fmt)
    sha = weights_sha256(generator.model)
    key = hashlib.sha256(json.dumps({"model": sha, "settings": settings}, sort_keys=True).encode()).hexdigest()[:16]
    model: dict[str, Any] = {"sha256": sha}
    if model_name:
        model["name"] = model_name
    return {"version": RECORD_VERSION, "key": key, "model": model, "settings": settings}


_MISSING: dict[str, Any] = {}


def read_provenance(path: Path) -> dict[str, Any] | None:
    """The record of an existing output (None when it has none: an older segany or another
    program wrote it). Reads only the head of a JSON file and the header of a PNG."""
    try:
        if path.suffix == ".json":
            prefix = f'{{"{RECORD_KEY}":'
            with open(path, encoding="utf-8", errors="replace") as f:
                head = f.read(1 << 16)
            if not head.startswith(prefix):
                return None
            record, _ = json.JSONDecoder().raw_decode(head, len(prefix))
        else:
            import warnings

            from PIL import Image

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as im:
                    text = im.info.get(RECORD_KEY)
            if not isinstance(text, str):
                return None
            record = json.loads(text)
    except Exception:  # unreadable, not a PNG, a decompression bomb: in any case no record of ours
        return None
    return record if isinstance(record, dict) else None


def _describe_difference(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    if old is None:
        return "it has no segany settings record (written by an earlier segany or another program)"
    diffs = []
    old_sha = str((old.get("model") or {}).get("sha256", "?"))
    if old_sha != new["model"]["sha256"]:
        diffs.append(f"model weights sha256 {old_sha[:12]} -> {new['model']['sha256'][:12]}")
    old_settings = old.get("settings") or {}
    for k, v in new["settings"].items():
        if old_settings.get(k) != v:
            diffs.append(f"{k} {old_settings.get(k)!r} -> {v!r}")
    return "made with " + ", ".join(diffs) if diffs else "made by another run"


class ResumeConflict(ValueError):
    """``--out`` holds results of other settings or another model than this run's."""


def prepare_outputs(jobs: list[ImageJob], out_dir: str | Path, fmt: str, save_overlay: bool) -> Path:
    """Check the plan (:func:`check_plan`), create ``out_dir`` and clear the temporary files
    a killed run left there; returns ``out_dir`` as a Path. Both the single-process and the
    Ray runner start this way, before anything is computed."""
    if fmt not in ("sa1b", "coco", "png"):
        raise ValueError(f"unknown format {fmt!r}")
    out = Path(out_dir)
    check_plan(jobs, out, fmt, save_overlay)
    out.mkdir(parents=True, exist_ok=True)
    remove_partials(out)
    return out


@dataclass
class ResumePlan:
    """Which images of a run are still to do (see :func:`plan_resume`)."""

    todo: list[ImageJob]
    skipped: list[str]
    stale_overlays: set[Path] = field(default_factory=set)

    def drops_overlay(self, job: ImageJob, out_dir: Path) -> bool:
        """Whether the overlay beside ``job``'s output was made by other settings (and must go
        when this run writes no overlay)."""
        return overlay_path(out_dir, job.name) in self.stale_overlays


def plan_resume(
    jobs: list[ImageJob],
    out_dir: Path,
    fmt: str,
    save_overlay: bool,
    record: dict[str, Any],
    overwrite: bool = False,
) -> ResumePlan:
    """Split ``jobs`` into the finished (their outputs carry ``record``'s key) and the rest.

    Raises :class:`ResumeConflict` when an output of another run is in the way and not
    ``overwrite``, before anything is computed (module docstring). One function for both
    runners, so a Ray run and a single-process run agree on what is finished."""
    plan = ResumePlan(todo=[], skipped=[])
    conflicts: list[tuple[Path, dict[str, Any] | None]] = []
    for job in jobs:
        target, over = output_path(out_dir, job.name, fmt), overlay_path(out_dir, job.name)
        found = {p: (read_provenance(p) if p.exists() else _MISSING) for p in (target, over)}
        done = _same_run(found[target], record) and (not save_overlay or _same_run(found[over], record))
        if done:
            plan.skipped.append(job.name)
            continue
        plan.todo.append(job)
        for p, rec in found.items():
            if rec is not _MISSING and not _same_run(rec, record):
                conflicts.append((p, rec))
                if p == over:
                    plan.stale_overlays.add(p)
    if conflicts and not overwrite:
        path, rec = conflicts[0]
        raise ResumeConflict(
            f"--out {out_dir} holds {len(conflicts)} output(s) this run did not make ({path.relative_to(out_dir)}: "
            f"{_describe_difference(rec, record)}); use a new --out, or --overwrite to recompute them"
        )
    return plan


def segment_image(
    generator: SamAutomaticMaskGenerator,
    job: ImageJob,
    out_dir: Path,
    fmt: str,
    save_overlay: bool,
    record: dict[str, Any],
    drop_stale_overlay: bool = False,
) -> int:
    """Segment one image and write its outputs (all or nothing, renamed into place); returns
    the number of masks. Raises :class:`ImageError` when the image cannot be read.

    The one "compute + write" step of both runners: a Ray worker calls it on its own
    machine, so its outputs are byte for byte those of ``segany auto`` without Ray."""
    image = load_image(job.path)
    records = generator.generate(image)
    h, w = image.shape[:2]
    file_name = job.path.name
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    files: list[tuple[Path, Callable[[Path], None]]] = []
    over = overlay_path(out_dir, job.name)
    if save_overlay:
        files.append((over, png_writer(overlay_records(image, records), {RECORD_KEY: text})))
    target = output_path(out_dir, job.name, fmt)
    if fmt == "sa1b":
        files.append((target, json_writer({RECORD_KEY: record, **sa1b_json(records, file_name, w, h)})))
    elif fmt == "coco":
        files.append((target, json_writer({RECORD_KEY: record, **coco_json(records, file_name, w, h)})))
    else:
        files.append((target, png_writer(label_map(records, h, w), {RECORD_KEY: text})))
    write_all_or_nothing(files)
    if not save_overlay and drop_stale_overlay:
        over.unlink(missing_ok=True)  # an overlay of other settings must not sit beside new results
    return len(records)


def segment_folder(
    generator: SamAutomaticMaskGenerator,
    inputs: Iterable[str],
    out_dir: str | Path,
    fmt: str = "sa1b",
    save_overlay: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    model_name: str | None = None,
) -> RunSummary:
    """Run ``generator`` on every image of ``inputs`` and write one output per image.

    ``fmt``: ``sa1b`` (SA-1B JSON), ``coco`` (COCO instances JSON) or ``png`` (16-bit
    instance label map). ``save_overlay`` adds ``<name>.overlay.png``. The generator must use
    ``output_mode="coco_rle"``. Outputs already made by this model with these settings are
    kept; outputs of other settings raise :class:`ResumeConflict` before any work unless
    ``overwrite`` (then they are recomputed). ``model_name`` is stored for people reading
    the record (the check itself uses the weights' hash). The same run on a Ray cluster:
    :func:`segany.automatic.ray_runner.segment_folder_ray`.
    """
    if generator.output_mode != "coco_rle":
        raise ValueError("segment_folder needs a generator with output_mode='coco_rle'")
    jobs, missing = collect_images(inputs)
    out = prepare_outputs(jobs, out_dir, fmt, save_overlay)
    record = run_provenance(generator, fmt, model_name)
    plan = plan_resume(jobs, out, fmt, save_overlay, record, overwrite)
    summary = RunSummary(skipped=plan.skipped, failed=list(missing))
    start = time.perf_counter()
    bar = tqdm(plan.todo, desc="segany auto", unit="img", disable=not progress)
    for job in bar:
        bar.set_postfix_str(job.name[-40:])
        try:
            n = segment_image(generator, job, out, fmt, save_overlay, record, plan.drops_overlay(job, out))
        except ImageError as exc:
            summary.failed.append((str(job.path), str(exc)))
            continue
        summary.done.append(job.name)
        summary.masks += n
    summary.seconds = time.perf_counter() - start
    return summary


def _same_run(found: dict[str, Any] | None, record: dict[str, Any]) -> bool:
    return found is not _MISSING and found is not None and found.get("key") == record["key"]
