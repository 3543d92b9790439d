"""``segany eval points | prompts | edges | proposals | instances | fairness | summary``: the zero-shot experiments.

Each sub-command evaluates a model (``--checkpoint/--model-type``, default: the shipped
segany model) on the eval splits of the project's data, shows a progress bar, uses fixed
seeds, and writes ``OUT/report.json``, ``OUT/report.md`` and PNG figures. ``--limit N``
evaluates N images per data set (drawn with the fixed seed) for quick, reduced runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import add_model_args, load_model_from_args


def _add_common(p: argparse.ArgumentParser, default_out: str) -> None:
    add_model_args(p)
    p.add_argument("--out", default=default_out, help=f"output folder for the report (default: {default_out})")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most N images per data set (reduced run)")
    p.add_argument("--seed", type=int, default=0, help="seed for subsampling and random clicks (default 0)")
    p.add_argument("--data-root", default=None, help="folder holding the data sets (default: ../shared/data)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--no-resume", action="store_true",
        help="recompute every image (default: images finished by an earlier, interrupted run into the same --out "
             "with the same model and settings are loaded from OUT/.resume)",
    )
    p.add_argument(
        "--partial", action="store_true",
        help="compute nothing: report the images already finished in OUT/.resume (e.g. while the full run goes on "
             "in another process); the report says how many of how many",
    )


def _add_datasets(p: argparse.ArgumentParser, default: Sequence[str], help_text: str) -> None:
    """``--datasets SPEC...`` of the experiments that take several data sets (points, prompts,
    fairness): one declaration, so they all take the specs of :func:`segany.eval.datasets.resolve`
    the same way; ``default`` is copied so that no two parsers share one list."""
    p.add_argument("--datasets", nargs="+", default=list(default), help=help_text)


def _add_zoom_in(p: argparse.ArgumentParser) -> None:
    """``--zoom-in`` and its settings (segany.zoom_in), shared by the commands that simulate clicks."""
    from ..zoom_in import ZoomInConfig

    d = ZoomInConfig()
    p.add_argument("--zoom-in", action="store_true",
                   help="answer later clicks on a crop around the object (RITM's zoom-in; changes results)")
    p.add_argument("--zoom-expansion", type=float, default=d.expansion,
                   help=f"zoom-in crop = the object's box times this (default {d.expansion})")
    p.add_argument("--zoom-min-crop", type=int, default=d.min_crop,
                   help=f"zoom-in crop side at least this many pixels (default {d.min_crop})")
    p.add_argument("--zoom-skip-clicks", type=int, default=d.skip_clicks,
                   help=f"clicks answered on the whole image before zooming (default {d.skip_clicks})")
    p.add_argument("--zoom-min-crop-fraction", type=float, default=d.min_crop_fraction,
                   help="zoom-in crop side at least this fraction of the image's longer side "
                   f"(default {d.min_crop_fraction})")


def zoom_in_config(args: argparse.Namespace) -> Any:
    """The ZoomInConfig of ``--zoom-in`` and its settings, or None without ``--zoom-in``."""
    from ..zoom_in import ZoomInConfig

    if not args.zoom_in:
        return None
    return ZoomInConfig(expansion=args.zoom_expansion, min_crop=args.zoom_min_crop, skip_clicks=args.zoom_skip_clicks,
                        min_crop_fraction=args.zoom_min_crop_fraction)


def register(subparsers: Any) -> None:
    # imported here, not at the top: every `segany` command line registers this parser
    from ..eval.datasets import DEFAULT_POINT_DATASETS

    parser = subparsers.add_parser("eval", help="zero-shot evaluation suite (paper section 7 / appendix D)")
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    parser.set_defaults(func=lambda a: (parser.print_help(), 2)[1])

    p = sub.add_parser("points", help="point-to-mask mIoU after 1-9 clicks, NoC@85/90 (7.1 / D.1)")
    _add_common(p, "eval_points")
    _add_datasets(
        p, DEFAULT_POINT_DATASETS,
        "grabcut coco_tiny dsb2018 cvppp_a1 (eval splits), sa1b:FOLDER or coco:IMAGE_DIR:ANN.json",
    )
    p.add_argument("--first-click", choices=("center", "random"), default="center")
    p.add_argument("--max-clicks", type=int, default=20, help="NoC cap (default 20)")
    p.add_argument("--no-mask-feedback", action="store_true",
                   help="decode every click from the clicks alone, without the previous mask's logits (the paper "
                   "feeds them; the official web demo does not)")
    _add_zoom_in(p)
    p.set_defaults(func=run_points)

    p = sub.add_parser("prompts", help="box / 1-point / 5-click mIoU next to GrabCut and box-fill baselines")
    _add_common(p, "eval_prompts")
    # the same default as `eval points`: --clicks-from reuses a points run's records per data set
    _add_datasets(p, DEFAULT_POINT_DATASETS, "as for `eval points`")
    p.add_argument(
        "--baselines",
        nargs="+",
        default=["grabcut", "box_fill"],
        choices=("grabcut", "box_fill", "none"),
        help="classical baselines scored on the same objects (default: grabcut box_fill; 'none' = model only)",
    )
    p.add_argument("--grabcut-iters", type=int, default=5, help="GrabCut iterations (default 5)")
    p.add_argument("--zoom-box", action="store_true",
                   help="answer each box on a crop around it (segany.zoom_in.BOX_ZOOM; one encoder pass a box)")
    _add_zoom_in(p)
    p.add_argument(
        "--grabcut-box-context",
        type=_grabcut_context,
        default=None,
        help="where box GrabCut runs: 'whole' image (default, the classic method) or the box grown by this "
        "many times its longer side (faster on small objects, weaker)",
    )
    p.add_argument(
        "--grabcut-click-context",
        type=_grabcut_context,
        default=1.0,
        help="where click GrabCut runs: the clicked region grown by this many times its longer side "
        "(default 1.0) or 'whole'",
    )
    p.add_argument(
        "--clicks-from",
        type=Path,
        default=None,
        metavar="DIR",
        help="read the model's 1-point / 5-click results from the records of an `eval points` run in DIR "
        "(same model, centre first clicks) instead of simulating them again; images it lacks are simulated",
    )
    p.set_defaults(func=run_prompts)

    p = sub.add_parser("edges", help="BSDS500 edge detection ODS/OIS/AP/R50 with Canny/Sobel baselines (7.2 / D.2)")
    _add_common(p, "eval_edges")
    p.add_argument("--split", default="test", help="BSDS500 split (default test, the benchmark's eval split)")
    p.add_argument("--nthresh", type=int, default=99, help="benchmark thresholds (default 99, as the official benchmark)")
    p.add_argument("--baselines", nargs="*", default=["canny", "sobel"], choices=("canny", "sobel"))
    p.add_argument("--no-model", action="store_true", help="score the baselines only")
    p.add_argument("--workers", type=int, default=1, help="processes for the benchmark matching (default 1)")
    p.add_argument("--points-per-side", type=int, default=None, help="override the preset's 16x16 grid (reduced runs)")
    p.set_defaults(func=run_edges)

    p = sub.add_parser("proposals", help="mask AR@1000 all/small/medium/large on coco_tiny val (7.3 / D.3)")
    _add_common(p, "eval_proposals")
    p.add_argument("--dataset", default="coco_tiny", help="coco_tiny or coco:IMAGE_DIR:ANN.json")
    p.add_argument("--points-per-side", type=int, default=None, help="override the preset's 64x64 grid")
    p.set_defaults(func=run_proposals)

    p = sub.add_parser("instances", help="box-prompted COCO mask AP (7.4 / D.4)")
    _add_common(p, "eval_instances")
    p.add_argument("--dataset", default="coco_tiny", help="coco_tiny or coco:IMAGE_DIR:ANN.json")
    p.add_argument("--detections", default=None, help="detector boxes as a COCO results JSON (default: ground-truth boxes)")
    p.add_argument("--score-threshold", type=float, default=0.0, help="drop detections scored below this")
    p.set_defaults(func=run_instances)

    p = sub.add_parser("fairness", help="mIoU at 1 and 3 points per metadata group with 95%% bootstrap CIs (section 6)")
    _add_common(p, "eval_fairness")
    _add_datasets(p, ["coco_tiny"], "as for `eval points`")
    p.add_argument("--group-by", nargs="+", default=["supercategory", "size"], help="metadata columns to group by")
    p.add_argument("--metadata", default=None, help="CSV with an 'image' column (image id) and more columns to group by")
    p.add_argument("--first-click", choices=("center", "random"), default="random", help="the paper uses random")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.set_defaults(func=run_fairness)

    p = sub.add_parser("summary", help="one page of headline tables from every report in a folder (computes nothing)")
    p.add_argument("runs", help="folder holding the eval reports, e.g. eval_full (its sub-folders are searched)")
    p.add_argument("--out", default=None, help="where summary.md / summary.json go (default: the runs folder)")
    p.set_defaults(func=run_summary)


def run_summary(args: argparse.Namespace) -> int:
    from ..eval import summary

    out = Path(args.out or args.runs)
    res = summary.write(Path(args.runs), out)
    for exp, s in res["experiments"].items():
        print(f"{exp:10s} {s['state']}")
    print(f"summary: {out / 'summary.md'}")
    return 0


def _grabcut_context(text: str) -> float | None:
    """``--grabcut-*-context``: a margin factor >= 0, or 'whole' (None) for the whole image."""
    if text.strip().lower() == "whole":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'whole', got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'whole', got {text!r}")
    return value


def _setup(args: argparse.Namespace) -> tuple[Any, dict[str, Any], str]:
    import torch

    from ..eval import report

    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    model = load_model_from_args(args)
    info = report.model_description(model, args.checkpoint)
    command = "segany " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["eval"] else "segany eval"
    return model, info, command


def _load_datasets(specs: list[str], args: argparse.Namespace) -> dict[str, list[Any]]:
    from ..eval import datasets

    out = {}
    for spec in specs:
        name, images = datasets.resolve(spec, args.data_root)
        out[name] = datasets.subsample(images, args.limit, args.seed)
    return out


def _done(out: Path, summary: str) -> int:
    print(summary)
    print(f"report: {out / 'report.md'}")
    return 0


def run_points(args: argparse.Namespace) -> int:
    from ..eval import points
    from ..predictor import SamPredictor

    data = _load_datasets(args.datasets, args)
    model, info, command = _setup(args)
    res = points.run(
        SamPredictor(model), data, Path(args.out), info, command, args.first_click, args.max_clicks, args.seed,
        not args.no_progress, resume_run=not args.no_resume, partial=args.partial,
        feed_mask=not args.no_mask_feedback, zoom_in=zoom_in_config(args),
    )
    m = res["mean"]["top"]
    return _done(Path(args.out), f"mean mIoU@1 {100 * m['mIoU']['1']:.1f}  @9 {100 * m['mIoU']['9']:.1f}  NoC@90 {m['NoC@90']:.2f}")


def run_prompts(args: argparse.Namespace) -> int:
    import cv2

    from ..eval import prompts
    from ..predictor import SamPredictor
    from ..zoom_in import BOX_ZOOM

    if "none" in args.baselines and len(args.baselines) > 1:
        raise ValueError("--baselines none cannot be combined with other baselines")
    baselines = [b for b in args.baselines if b != "none"]
    data = _load_datasets(args.datasets, args)
    model, info, command = _setup(args)
    cv2.setNumThreads(max(1, args.threads))
    res = prompts.run(
        SamPredictor(model), data, Path(args.out), info, command, baselines=baselines,
        grabcut_iters=args.grabcut_iters, grabcut_box_context=args.grabcut_box_context,
        grabcut_click_context=args.grabcut_click_context, seed=args.seed,
        show_progress=not args.no_progress, resume_run=not args.no_resume, partial=args.partial,
        clicks_from=args.clicks_from, zoom_box=BOX_ZOOM if args.zoom_box else None, zoom_clicks=zoom_in_config(args),
    )
    m = res["mean"]["mIoU"]
    line = "  ".join(
        f"{head} {100 * m[key]:.1f}" for key, head in (
            ("model_box", "model box"), ("grabcut_box", "GrabCut box"), ("model_1pt", "model 1pt"),
            ("grabcut_1pt", "GrabCut 1pt"), (f"model_{prompts.N_CLICKS}clicks", f"model {prompts.N_CLICKS}clk"),
            (f"grabcut_{prompts.N_CLICKS}clicks", f"GrabCut {prompts.N_CLICKS}clk"),
        ) if m[key] is not None
    )
    return _done(Path(args.out), "mean mIoU: " + line)


def run_edges(args: argparse.Namespace) -> int:
    from ..eval import edges

    model, info, command = (None, None, "segany eval edges") if args.no_model else _setup(args)
    if args.no_model:
        import torch

        torch.manual_seed(args.seed)
    res = edges.run(
        model, Path(args.out), info, command, split=args.split, nthresh=args.nthresh, baselines_=args.baselines,
        limit=args.limit, seed=args.seed, data_root=args.data_root, workers=args.workers,
        points_per_side=args.points_per_side, resume_run=not args.no_resume, partial=args.partial,
        show_progress=not args.no_progress,
    )
    line = "  ".join(f"{k} ODS {v['ODS']:.3f}" for k, v in res["methods"].items())
    return _done(Path(args.out), line)


def run_proposals(args: argparse.Namespace) -> int:
    from ..eval import proposals

    data = _load_datasets([args.dataset], args)
    model, info, command = _setup(args)
    name, images = next(iter(data.items()))
    res = proposals.run(
        model, name, images, Path(args.out), info, command, points_per_side=args.points_per_side,
        show_progress=not args.no_progress, resume_run=not args.no_resume, partial=args.partial,
    )
    return _done(Path(args.out), f"AR@1000 {res['AR@1000']['all']:.3f}")


def run_instances(args: argparse.Namespace) -> int:
    from ..eval import instances

    if args.partial:
        raise ValueError("eval instances is not resumable (it takes minutes): run it without --partial")
    data = _load_datasets([args.dataset], args)
    model, info, command = _setup(args)
    name, images = next(iter(data.items()))
    res = instances.run(
        model, name, images, Path(args.out), info, command, detections=args.detections,
        score_threshold=args.score_threshold, show_progress=not args.no_progress,
    )
    return _done(Path(args.out), f"mask AP {res['AP']['AP']:.3f}")


def run_fairness(args: argparse.Namespace) -> int:
    from ..eval import fairness
    from ..predictor import SamPredictor

    data = _load_datasets(args.datasets, args)
    model, info, command = _setup(args)
    res = fairness.run(
        SamPredictor(model), data, Path(args.out), info, command, group_by=args.group_by, metadata_csv=args.metadata,
        first=args.first_click, seed=args.seed, n_boot=args.bootstrap, show_progress=not args.no_progress,
        resume_run=not args.no_resume, partial=args.partial,
    )
    return _done(Path(args.out), f"{len(res['groups'])} group columns evaluated")
