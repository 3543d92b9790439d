"""``segany auto``: segment everything in files, folders and globs (resumable).

    segany auto photos/ more/*.jpg --out masks/ --preset data-engine --overlay

One SA-1B JSON per image by default (``--format coco`` or ``png`` for the others); images
already finished in ``--out`` by the same model with the same settings are skipped; outputs
of other settings stop the run before any work (use a new ``--out``, or ``--overwrite`` to
recompute them); unreadable images are listed at the end and make the exit status 1.
``--blur`` (off by default) also writes each image beside its output with faces and licence
plates blurred -- the form to release, as SA-1B was (paper appendix F) -- and logs what was
blurred in ``OUT/blur_log.jsonl``; the originals are never touched (docs/datasets.md, Privacy).
``--ray [ADDRESS]`` shards the images over Ray workers (one model each, ``--ray-workers``,
``--ray-gpus-per-worker``) with the same outputs, layout and resuming (docs/automatic.md).
With the embedded default model and neither ``--preset`` nor a threshold option, the
thresholds calibrated for that model are used (preset ``segany-default``, one note says so):
the official ones keep none of its masks. ``--preset default`` gives the official ones.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..automatic.outputs import FORMATS
from ..automatic.presets import DEFAULT_MODEL_PRESET, PRESETS, THRESHOLD_KEYS, calibrated_for, preset
from .common import add_model_args, load_model_from_args
from .data_blur import add_detector_options, detector_from_args

if TYPE_CHECKING:
    from ..data.detectors import Detector

# (flag, type, help); defaults come from the preset, then the generator's own defaults.
KNOBS: list[tuple[str, type, str]] = [
    ("points_per_side", int, "grid points per image side (default 32)"),
    ("points_per_batch", int, "points decoded at once (default 64)"),
    ("pred_iou_thresh", float, "keep masks with predicted IoU above this (default 0.88)"),
    ("stability_score_thresh", float, "keep masks with stability score at least this (default 0.95)"),
    ("stability_score_offset", float, "logit offset of the stability score (default 1.0)"),
    ("box_nms_thresh", float, "box IoU for NMS within a crop (default 0.7)"),
    ("crop_n_layers", int, "zoomed-in crop layers; layer k has 2^k x 2^k crops (default 0)"),
    ("crop_nms_thresh", float, "box IoU for NMS across crops (default 0.7)"),
    ("crop_overlap_ratio", float, "crop overlap as a fraction of the short side (default 512/1500)"),
    ("crop_n_points_downscale_factor", int, "grid side divided by this per crop layer (default 1)"),
    ("min_mask_region_area", int, "fill holes / drop islands smaller than this many px (default 0: off)"),
    ("max_mask_fraction", float, "drop masks covering more than this fraction of the image (default off)"),
    ("max_masks", int, "keep at most this many masks, by mean of IoU and stability (default all)"),
]


# Accepted range of every numeric knob: (low, high, low_open, high_open); None = unbounded.
# Why caps on the sizes: cost grows with points_per_side^2 per crop and with 4^crop_n_layers
# crops (layer 5 alone is 1024 crops), so a typo would run for days or exhaust memory; the
# paper's settings (32 points, 2 crop layers, 64 points for proposals) are far inside them.
LIMITS: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "points_per_side": (1, 128, False, False),
    "points_per_batch": (1, 1024, False, False),
    "pred_iou_thresh": (None, 1.0, False, False),  # <= 0 turns the filter off
    "stability_score_thresh": (0.0, 1.0, False, False),
    "stability_score_offset": (0.0, 1000.0, True, False),
    "box_nms_thresh": (0.0, 1.0, False, False),
    "crop_n_layers": (0, 4, False, False),
    "crop_nms_thresh": (0.0, 1.0, False, False),
    "crop_overlap_ratio": (0.0, 1.0, False, True),
    "crop_n_points_downscale_factor": (1, 128, False, False),
    "min_mask_region_area": (0, 10**9, False, False),
    "max_mask_fraction": (0.0, 1.0, True, False),
    "max_masks": (1, 10**6, False, False),
}
MAX_THREADS = 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "auto",
        help="segment everything in images, folders or globs (SA-1B JSON per image)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or glob patterns")
    p.add_argument(
        "--out",
        required=True,
        help="output folder (created; images finished in it with the same model and settings are skipped)",
    )
    p.add_argument("--format", choices=FORMATS, default="sa1b", help="sa1b JSON, coco JSON, or 16-bit label png")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="paper settings (docs/automatic.md). Default: 'default' (the official thresholds), except "
        f"for the embedded default model without threshold options: {DEFAULT_MODEL_PRESET!r}, its calibrated ones",
    )
    p.add_argument("--overlay", action="store_true", help="also write <name>.overlay.png with every mask coloured")
    p.add_argument(
        "--blur",
        action="store_true",
        help="also write each image, faces and licence plates blurred, beside its output, for release "
        "(default off; log: OUT/blur_log.jsonl; see docs/datasets.md, Privacy)",
    )
    add_detector_options(p, "--blur-detector")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute images whose outputs in --out were made with other settings or another model "
        "(default: refuse to mix them)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray = p.add_argument_group("Ray (segany[ray]; docs/automatic.md, On a Ray cluster)")
    ray.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="shard the images over Ray workers, one model each: ADDRESS of the cluster's head "
        "(host:6379, or 'auto'); without it $RAY_ADDRESS, a cluster running here, or a new local one. "
        "Inputs and --out must be on a file system all nodes share. Give it after the inputs, or "
        "as --ray=ADDRESS",
    )
    ray.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help="Ray workers (default: as many as the cluster's CPUs, or GPUs, hold; at most one per image)",
    )
    ray.add_argument(
        "--ray-cpus-per-worker",
        type=float,
        default=None,
        metavar="C",
        help="CPUs each worker reserves, and its torch threads unless --threads (default 1)",
    )
    ray.add_argument(
        "--ray-gpus-per-worker",
        type=float,
        default=None,
        metavar="G",
        help="GPUs each worker reserves (e.g. 1, or 0.5 for two per GPU); > 0 runs the workers on "
        "cuda, else on cpu (--device is not used with --ray; default 0)",
    )
    for name, typ, text in KNOBS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None, help=text)
    add_model_args(p)
    p.set_defaults(func=run)


def generator_kwargs(args: argparse.Namespace) -> dict:
    """Preset settings overridden by every knob given on the command line."""
    overrides = {name: getattr(args, name) for name, _, _ in KNOBS if getattr(args, name) is not None}
    return preset(preset_name(args), **overrides)


def uses_default_model(args: argparse.Namespace) -> bool:
    """Whether :func:`load_model_from_args` will load the embedded default model."""
    return args.checkpoint is None and args.model_type in (None, "default_segany")


def preset_name(args: argparse.Namespace) -> str:
    """``--preset``, or when none is given: the default model's calibrated thresholds for the
    embedded default model (trained weights shipped, no threshold option given), else the
    official settings.

    Why: the official filters (tuned for SAM ViT-H) keep no mask of the small default model,
    so ``segany auto photo.jpg`` would write nothing. An explicit ``--preset`` or threshold
    always wins, and the generator class keeps the official defaults (drop-in parity)."""
    if args.preset is not None:
        return args.preset
    from ..default_model import default_weights_path

    if (
        uses_default_model(args)
        and DEFAULT_MODEL_PRESET in PRESETS
        and default_weights_path() is not None
        and all(getattr(args, key, None) is None for key in THRESHOLD_KEYS)
    ):
        return DEFAULT_MODEL_PRESET
    return "default"


def preset_note(args: argparse.Namespace) -> str | None:
    """The line ``segany auto`` prints when it chose the default model's thresholds itself
    (None when it did not), saying which values and how to get the official ones."""
    if args.preset is not None or preset_name(args) != DEFAULT_MODEL_PRESET:
        return None
    from ..default_model import default_weights_path

    values = ", ".join(f"{key} {PRESETS[DEFAULT_MODEL_PRESET][key]:g}" for key in THRESHOLD_KEYS)
    note = (
        f"note: the embedded default model uses its calibrated thresholds (--preset {DEFAULT_MODEL_PRESET}: "
        f"{values}); --preset default for the official ones"
    )
    weights = default_weights_path()
    if weights is not None and not calibrated_for(weights):
        note += (
            "; they were calibrated on other weights than the shipped ones: rerun "
            "scripts/calibrate_auto.py runs/sa1b_train/*"
        )
    return note


def validate_knobs(kwargs: dict[str, Any]) -> None:
    """Refuse a NaN, infinite or out-of-range value of any numeric knob, naming the flag.

    Why: NaN compares false with everything, so ``--pred-iou-thresh nan`` silently drops every
    mask (or, through ``> 0.0`` checks, silently turns a filter off); huge sizes run forever."""
    for name, value in kwargs.items():
        if name not in LIMITS or value is None:
            continue
        flag = "--" + name.replace("_", "-")
        lo, hi, lo_open, hi_open = LIMITS[name]
        if not math.isfinite(float(value)):
            raise ValueError(f"{flag} must be a finite number, got {value}")
        bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
        bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
        if bad_lo or bad_hi:
            left = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
            right = "" if hi is None else f"{'<' if hi_open else '<='} {hi:g}"
            raise ValueError(f"{flag} must be {' and '.join(x for x in (left, right) if x)}, got {value:g}")


def model_name(args: argparse.Namespace) -> str:
    """How the run's record names the model (for people; the check uses the weights' hash)."""
    if args.checkpoint is not None:
        return Path(args.checkpoint).name
    return "embedded default"


def run(args: argparse.Namespace) -> int:
    import torch

    from ..automatic.folder import check_plan, collect_images, segment_folder
    from ..automatic.generator import SamAutomaticMaskGenerator

    if args.threads is not None:
        if not 1 <= args.threads <= MAX_THREADS:
            raise ValueError(f"--threads must be between 1 and {MAX_THREADS}, got {args.threads}")
    kwargs = generator_kwargs(args)
    validate_knobs(kwargs)
    ray_options = ray_settings(args)  # a missing Ray or a bad --ray-* value stops us here
    note = preset_note(args)  # after the option checks: a refused command prints only its error
    if note is not None:
        print(note, file=sys.stderr)
    jobs, _ = collect_images(args.inputs)
    check_plan(jobs, args.out, args.format, args.overlay)  # before the model is loaded
    release = release_plan(jobs, args) if args.blur else None
    blur_detector = detector_from_args(args) if args.blur else None  # a missing face model stops us here
    if ray_options is not None:
        from ..automatic.ray_runner import segment_folder_ray

        summary = segment_folder_ray(
            args.inputs,
            args.out,
            generator_kwargs=kwargs,
            model_factory=worker_model_factory(args, ray_options["gpus_per_worker"] > 0),
            fmt=args.format,
            save_overlay=args.overlay,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            model_name=model_name(args),
            threads=args.threads,
            ray_init_kwargs={"include_dashboard": False, "logging_level": logging.WARNING},
            **ray_options,
        )
    else:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        model = load_model_from_args(args)
        generator = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **kwargs)
        summary = segment_folder(
            generator,
            args.inputs,
            args.out,
            fmt=args.format,
            save_overlay=args.overlay,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            model_name=model_name(args),
        )
    for line in summary.lines():
        print(line, file=sys.stderr if line.startswith(("failed", "  ")) else sys.stdout)
    if release is not None:
        print(release_blurred(release, args, blur_detector))
    return 1 if summary.failed else 0


def ray_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--ray`` and ``--ray-*`` as :func:`segment_folder_ray` arguments (None without ``--ray``).

    Checked before anything is loaded: ``--ray-*`` without ``--ray``, a value out of range, or
    ``--ray`` where Ray is not installed is a one-line error."""
    given = {
        "workers": args.ray_workers,
        "cpus_per_worker": args.ray_cpus_per_worker,
        "gpus_per_worker": args.ray_gpus_per_worker,
    }
    if args.ray is None:
        for key, value in given.items():
            if value is not None:
                raise ValueError(f"--ray-{key.replace('_per_', '-per-')} needs --ray")
        return None
    if args.ray and Path(args.ray).exists():
        raise ValueError(
            f"--ray took {args.ray!r} as the cluster address: put --ray after the inputs, or write --ray=ADDRESS"
        )
    workers, cpus, gpus = given["workers"], given["cpus_per_worker"], given["gpus_per_worker"]
    if workers is not None and not 1 <= workers <= 100_000:
        raise ValueError(f"--ray-workers must be between 1 and 100000, got {workers}")
    if cpus is not None and not (math.isfinite(cpus) and 0 < cpus <= MAX_THREADS):
        raise ValueError(f"--ray-cpus-per-worker must be > 0 and <= {MAX_THREADS}, got {cpus:g}")
    if gpus is not None and not (math.isfinite(gpus) and 0 <= gpus <= 64):
        raise ValueError(f"--ray-gpus-per-worker must be between 0 and 64, got {gpus:g}")
    from ..automatic.ray_runner import import_ray

    import_ray()
    return {
        "address": args.ray or None,
        "workers": workers,
        "cpus_per_worker": 1.0 if cpus is None else cpus,
        "gpus_per_worker": 0.0 if gpus is None else gpus,
    }


def worker_model_factory(args: argparse.Namespace, on_gpu: bool) -> Any:
    """What each Ray worker calls to build the model the single-process run would load: the
    same loader and arguments (an absolute ``--checkpoint``: workers may start in another
    folder), on the GPU Ray gives the worker or on its CPU. Picklable: no weights travel."""
    import functools

    checkpoint = args.checkpoint
    if checkpoint is not None and Path(checkpoint).exists():
        checkpoint = str(Path(checkpoint).resolve())
    worker_args = argparse.Namespace(
        model_type=args.model_type,
        checkpoint=checkpoint,
        device="cuda" if on_gpu else "cpu",
        dtype=getattr(args, "dtype", None),
    )
    return functools.partial(load_model_from_args, worker_args)


def release_plan(jobs: list, args: argparse.Namespace) -> list[tuple[Path, Path, str, Path]]:
    """``--blur``: ``(image, blurred copy, its name in the log, the image's output)`` per
    image. The copy goes beside the output under the name the output's ``file_name`` gives
    it; checked before the model loads (no copy may land on an input, on another copy or on
    an output of this run)."""
    from ..automatic.folder import output_path, overlay_path
    from ..data.blur import BlurJob, check_jobs

    out = Path(args.out)
    plan = []
    for job in jobs:
        name = Path(job.name).parent / job.path.name
        plan.append((job.path, out / name, str(name), output_path(out, job.name, args.format)))
    taken = [p[3] for p in plan] + ([overlay_path(out, job.name) for job in jobs] if args.overlay else [])
    check_jobs([BlurJob(src, dst, name) for src, dst, name, _ in plan], taken=taken)
    return plan


def release_blurred(
    plan: list[tuple[Path, Path, str, Path]], args: argparse.Namespace, detector: Detector | None = None
) -> str:
    """``--blur``, after the run: blur the images whose outputs exist (made now or by an
    earlier run); those already blurred and logged by an earlier run are left as they are.
    ``detector``: the one ``--blur-detector`` / ``--face-model`` chose (made from them if None)."""
    from ..data.blur import LOG_NAME, blur_release, describe

    detector = detector if detector is not None else detector_from_args(args)
    finished = [(src, dst, name) for src, dst, name, output in plan if output.is_file()]
    summary = blur_release(finished, Path(args.out) / LOG_NAME, detector=detector, progress=not args.no_progress)
    return "blurred copies: " + describe(summary)
