"""Segment every image of files, folders and globs: resumable, one output per image.

An image is *finished* when its main output file exists (outputs are renamed into place
only when complete), so a rerun after a crash or a kill skips finished images and redoes
only the rest. Images that cannot be read are reported and skipped; the run goes on.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..image_io import ImageError, load_image
from .generator import SamAutomaticMaskGenerator
from .outputs import PARTIAL_SUFFIX, coco_json, label_map, overlay, sa1b_json, write_json, write_png

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


@dataclass
class ImageJob:
    """One input image and the name its outputs get (relative path without extension)."""

    path: Path
    name: str


@dataclass
class RunSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    masks: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        n = len(self.done)
        out = [
            f"processed {n} image(s), skipped {len(self.skipped)} already finished, failed {len(self.failed)}",
            f"masks: {self.masks}" + (f" ({self.masks / n:.1f} per image)" if n else ""),
            f"time: {self.seconds:.1f} s" + (f" ({self.seconds / n:.2f} s per image)" if n else ""),
        ]
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
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            for f in found:
                jobs.setdefault(f.resolve(), ImageJob(f, str(f.relative_to(p).with_suffix(""))))
            if not found:
                missing.append((item, "folder holds no image files"))
        elif p.is_file():
            jobs.setdefault(p.resolve(), ImageJob(p, p.stem))
        else:
            matches = sorted(glob.glob(item, recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file()]
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


def output_path(out_dir: Path, name: str, fmt: str) -> Path:
    suffix = ".png" if fmt == "png" else ".json"
    return out_dir / f"{name}{suffix}"


def remove_partials(out_dir: Path) -> int:
    """Delete temporary files left by a killed run; returns how many."""
    n = 0
    if out_dir.is_dir():
        for f in out_dir.rglob(f".*{PARTIAL_SUFFIX}"):
            f.unlink(missing_ok=True)
            n += 1
    return n


def segment_folder(
    generator: SamAutomaticMaskGenerator,
    inputs: Iterable[str],
    out_dir: str | Path,
    fmt: str = "sa1b",
    save_overlay: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Run ``generator`` on every image of ``inputs`` and write one output per image.

    ``fmt``: ``sa1b`` (SA-1B JSON), ``coco`` (COCO instances JSON) or ``png`` (16-bit
    instance label map). ``save_overlay`` adds ``<name>.overlay.png``. The generator must use
    ``output_mode="coco_rle"``.
    """
    if generator.output_mode != "coco_rle":
        raise ValueError("segment_folder needs a generator with output_mode='coco_rle'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_partials(out)
    jobs, missing = collect_images(inputs)
    summary = RunSummary(failed=list(missing))
    start = time.perf_counter()
    bar = tqdm(jobs, desc="segany auto", unit="img", disable=not progress)
    for job in bar:
        target = output_path(out, job.name, fmt)
        if target.exists():
            summary.skipped.append(job.name)
            continue
        bar.set_postfix_str(job.name[-40:])
        try:
            image = load_image(job.path)
        except ImageError as exc:
            summary.failed.append((str(job.path), str(exc)))
            continue
        records = generator.generate(image)
        h, w = image.shape[:2]
        file_name = job.path.name
        if save_overlay:
            write_png(out / f"{job.name}.overlay.png", overlay(image, records))
        if fmt == "sa1b":
            write_json(target, sa1b_json(records, file_name, w, h))
        elif fmt == "coco":
            write_json(target, coco_json(records, file_name, w, h))
        elif fmt == "png":
            write_png(target, label_map(records, h, w))
        else:
            raise ValueError(f"unknown format {fmt!r}")
        summary.done.append(job.name)
        summary.masks += len(records)
    summary.seconds = time.perf_counter() - start
    return summary
