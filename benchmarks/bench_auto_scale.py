"""``segany auto`` throughput on Ray: images per minute with 1 and 2 workers vs one process.

Every configuration segments the same real photos (read in place from
``../shared/data/coco_tiny/train2017``) with the embedded default model into its own fresh
output folder, in one run of this script, so the single-process baseline is measured under
the same machine load as the Ray runs; each Ray run's outputs are checked byte for byte
against the baseline's.

What each Ray worker holds: one copy of the model (weights loaded once per worker, when it
starts) and one torch thread per reserved CPU; the driver sends only image *paths* and gets
back (name, number of masks), each worker reads its own images and writes its own outputs,
so no image or mask crosses the object store.

    python benchmarks/bench_auto_scale.py --quick      # 4 photos, 8x8 grid
    python benchmarks/bench_auto_scale.py --images 16  # 32x32 grid (the default preset)

Columns: ``run s`` is the whole call (for Ray: connecting, starting the workers, loading the
model in each); ``img/min`` counts only the segmenting loop (``RunSummary.seconds``: for Ray
from the first worker being ready, while the others may still be loading), the rate a long
run approaches; ``x`` is that rate over the single-process one. A local cluster with as many
CPUs as the most workers asked for is started once; each worker and the baseline run one
torch thread, so N workers need N free cores to approach N times the baseline.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from segany.automatic import SamAutomaticMaskGenerator
from segany.automatic.folder import segment_folder
from segany.automatic.ray_runner import import_ray, segment_folder_ray
from segany.default_model import load_default_model

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_tiny" / "train2017"


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 photos, 8x8 grid")
    ap.add_argument("--images", type=int, default=16, help="photos to segment (default 16)")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts (default 1 2)")
    args = ap.parse_args()
    n_images, pps = (4, 8) if args.quick else (args.images, args.points_per_side)
    photos = sorted(PHOTOS.glob("*.jpg"))[:n_images]
    if len(photos) < n_images:
        raise SystemExit(f"needs {n_images} photos in {PHOTOS}")
    inputs = [str(p) for p in photos]
    settings = {"points_per_side": pps}
    ray = import_ray()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.set_num_threads(1)
        t = time.perf_counter()
        generator = SamAutomaticMaskGenerator(load_default_model(), output_mode="coco_rle", **settings)
        base = segment_folder(generator, inputs, Path(tmp) / "single", progress=False, model_name="embedded default")
        base_wall = time.perf_counter() - t
        base_rate = 60 * len(base.done) / base.seconds
        expected = snapshot(Path(tmp) / "single")
        rows.append(("single process", base_wall, base.seconds, base_rate, 1.0, "-"))
        ray.init(
            num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
        )
        try:
            for n in args.workers:
                out = Path(tmp) / f"ray{n}"
                t = time.perf_counter()
                s = segment_folder_ray(
                    inputs, out, generator_kwargs=settings, model_name="embedded default", workers=n, progress=False
                )
                wall = time.perf_counter() - t
                rate = 60 * len(s.done) / s.seconds
                same = "yes" if snapshot(out) == expected else "NO"
                rows.append((f"ray, {n} worker{'s' if n > 1 else ''}", wall, s.seconds, rate, rate / base_rate, same))
        finally:
            ray.shutdown()
    print(f"{n_images} photos from {PHOTOS}, {pps}x{pps} grid, embedded default model, 1 torch thread per worker")
    print("(per worker: the model loaded once at start; images streamed as paths, read and written by the worker)\n")
    print("| run | run s | loop s | img/min | x | same bytes |")
    print("|---|---|---|---|---|---|")
    for name, wall, loop, rate, ratio, same in rows:
        print(f"| {name} | {wall:.1f} | {loop:.1f} | {rate:.1f} | {ratio:.2f} | {same} |")


if __name__ == "__main__":
    main()
