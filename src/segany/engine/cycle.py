"""The model-in-the-loop cycle (paper section 4): export the accepted masks, fine-tune, evaluate, register.

In the paper's data engine the model was retrained six times during the assisted-manual
stage, each time on the masks collected so far, and annotation got faster with each model.
One :func:`run_cycle` is one such retraining:

1. export the store's accepted (not deleted) masks as an SA-1B folder
   (:func:`segany.engine.export.export_dataset`) into ``OUT/data``;
2. fine-tune the base model on them, optionally mixed with the base config's own training
   roots (``with_base_data``: new masks alone overfit a small set), by writing a training
   config (``OUT/train_config.yaml``, derived from an existing one such as
   ``segany/configs/segany_cnn_cpu.yaml``) and running the one training loop,
   :class:`segany.train.loop.Trainer`, into ``OUT/train``;
3. evaluate the new weights with ``segany eval points``' runner
   (:func:`segany.eval.points.run`) on the chosen eval splits into ``OUT/eval``
   (``OUT/eval_base`` for the base too, with ``eval_base``);
4. register the weights as a new model version in the store's registry
   (:mod:`segany.engine.versions`), with its parent, data counts, metrics and how it was
   made. ``segany serve --model-version NAME`` then serves it and every mask saved records
   NAME, so the next cycle's report shows what the new model changed.

Everything that can be checked is checked before the (long) training starts: the name is
free, the base loads, the config and its base data exist, the eval data sets resolve. The
version is registered only once training and evaluation have finished, so a failed or
interrupted cycle registers nothing.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic_files import write_text_atomic
from .store import ModelVersionRow, Store
from .versions import VersionError, check_name, get_version, register, resolve_base

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "segany_cnn_cpu.yaml"  # the default model's own recipe
FINE_TUNE_LR_SCALE = 0.1  # the cycle's learning rate relative to the base config's peak


class CycleError(ValueError):
    """A cycle that cannot run as asked (bad name, empty store, missing data)."""


@dataclass(frozen=True)
class CycleOptions:
    """One retraining, as ``segany engine cycle`` takes it.

    ``train_overrides`` are ``section.key=value`` strings applied to the derived training
    config last (as ``segany train --set``), e.g. ``train.images_per_step=2``.
    """

    base: str  # a registered version, "default" or a checkpoint file
    out: Path
    name: str | None = None  # default: the name of the ``out`` folder
    config: Path = DEFAULT_CONFIG
    steps: int = 200
    with_base_data: bool = False
    repeat: int = 1  # how many times the exported folder is listed among the training roots
    train_overrides: list[str] = field(default_factory=list)
    eval_datasets: list[str] = field(default_factory=lambda: ["grabcut"])
    limit: int | None = None  # images per eval data set
    data_root: Path | None = None  # where the eval data sets live (default: ../shared/data)
    max_clicks: int = 20
    seed: int = 0
    eval_base: bool = False  # also evaluate the base model on the same images (before/after)
    device: str = "cpu"  # where the evaluation runs (training: the config's train.device)
    show_progress: bool = True


def run_cycle(store: Store, options: CycleOptions, command: str = "segany engine cycle") -> ModelVersionRow:
    """One model-in-the-loop cycle (module docstring); returns the registered version's row."""
    from ..data import sa1b
    from ..eval import datasets as eval_datasets
    from ..train.loop import ConfigError, TrainConfig

    out = Path(options.out)
    name = check_name(options.name or out.resolve().name)
    if options.steps < 1:
        raise CycleError(f"--steps must be at least 1, got {options.steps}")
    if options.repeat < 1:
        raise CycleError(f"--repeat must be at least 1, got {options.repeat}")
    if options.limit is not None and options.limit < 1:
        raise CycleError(f"--limit must be at least 1, got {options.limit}")
    try:
        get_version(store, name)
    except VersionError:
        pass
    else:
        raise CycleError(f"model version {name!r} is already registered; give another --name or --out")
    for v in store.model_versions():
        if Path(v.weights).resolve().is_relative_to(out.resolve()):
            raise CycleError(f"--out {out} holds the weights of registered version {v.name!r}; use a new folder")
    base = resolve_base(store, options.base)
    try:
        base_config = TrainConfig.load(options.config)
    except ConfigError as exc:
        raise CycleError(str(exc)) from None
    base_roots = list(base_config.data.roots) if options.with_base_data else []
    for root in base_roots:
        path = Path(root["path"] if isinstance(root, dict) else root)
        if not path.is_dir():
            raise CycleError(f"--with-base-data: data root {path} of {options.config} does not exist")
    evals = {}
    for spec in options.eval_datasets:
        try:
            ds_name, images = eval_datasets.resolve(spec, options.data_root)
        except (OSError, ValueError) as exc:
            raise CycleError(f"eval data set {spec!r}: {exc}") from None
        evals[ds_name] = eval_datasets.subsample(images, options.limit, options.seed)
    if not evals:
        raise CycleError("give at least one eval data set")
    data_dir = out / "data"
    config = _training_config(base_config, options, data_dir / "sa1b", base.weights, out)

    seconds: dict[str, float] = {}
    t0 = time.time()
    skipped: list[dict[str, Any]] = []
    from .export import export_dataset

    counts = export_dataset(store, data_dir, skipped=skipped)
    if counts["masks"] == 0:
        raise CycleError("the store holds no accepted masks to train on")
    by_source: Counter[str] = Counter()
    for record in sorted((data_dir / "sa1b").glob("*.json")):
        by_source.update(str(a.get("source", "unknown")) for a in sa1b.load_json(record)["annotations"])
    seconds["export"] = time.time() - t0

    t0 = time.time()
    train_metrics = _train(config)
    weights = (out / "train" / "model.safetensors").resolve()
    seconds["train"] = time.time() - t0

    t0 = time.time()
    metrics: dict[str, Any] = {"train": {k: train_metrics[k] for k in ("loss", "iou_last") if k in train_metrics}}
    model = _load(weights, options.device)
    metrics["points"] = _evaluate(model, evals, out / "eval", str(weights), options, command)
    if options.eval_base:
        metrics["base_points"] = _evaluate(
            base.model.to(options.device), evals, out / "eval_base", str(base.weights), options, command
        )
    seconds["eval"] = time.time() - t0

    row = ModelVersionRow(
        name=name,
        parent=base.parent,
        weights=str(weights),
        created_at=time.time(),
        images=int(counts["images"]),
        masks=int(counts["masks"]),
        by_source=dict(sorted(by_source.items())),
        metrics=metrics,
        details={
            "base_weights": str(base.weights),
            "base_config": str(options.config),
            "train_config": str((out / "train_config.yaml").resolve()),
            "steps": options.steps,
            "train_overrides": list(options.train_overrides),
            "with_base_data": options.with_base_data,
            "base_roots": [r if isinstance(r, str) else dict(r) for r in base_roots],
            "repeat": options.repeat,
            "export": str(data_dir.resolve()),
            "skipped": len(skipped),
            "eval": {
                "datasets": list(options.eval_datasets),
                "limit": options.limit,
                "max_clicks": options.max_clicks,
                "seed": options.seed,
                "report": str((out / "eval" / "report.md").resolve()),
            },
            "seconds": {k: round(v, 2) for k, v in seconds.items()},
        },
    )
    return register(store, row)


def _training_config(base: Any, options: CycleOptions, folder: Path, weights: Path, out: Path) -> Any:
    """The fine-tuning config: ``base`` (a TrainConfig) with the exported folder as data, the
    base weights as the start, ``OUT/train`` as the output; written to ``OUT/train_config.yaml``
    (the record of what was run, and what ``segany train`` can rerun).

    What changes and why: no synthetic decoder stage and no ``decoder_from`` (a whole
    checkpoint is the start); no in-loop validation (step 3 evaluates); no export copy (the
    base config's would overwrite another run's file); the warm-up capped at a tenth of the
    steps, so a short fine-tune is not all warm-up; the peak learning rate scaled by
    ``FINE_TUNE_LR_SCALE``, since this fine-tunes a trained model. The base data's hold-out rule is kept
    only with the base data, whose validation images must stay unseen; alone, every
    exported mask is trained on.
    """
    import yaml

    from ..train.loop import ConfigError, TrainConfig

    d = base.to_dict()
    roots: list[Any] = [{"path": str(folder.resolve()), "repeat": options.repeat}]
    if options.with_base_data:
        roots += d["data"]["roots"]
    else:
        d["data"]["holdout_every"] = 0
    d["data"]["roots"] = roots
    d["model"].update(type="auto", checkpoint=str(weights), decoder_from=None)
    d["synthetic"]["steps"] = 0
    d["optim"]["warmup_steps"] = min(int(d["optim"]["warmup_steps"]), options.steps // 10)
    # a fine-tune of a trained model, not a run from scratch: a tenth of the recipe's peak
    # rate. On the default model, going back from 6e-5 to the peak 6e-4 took its held-out
    # box IoU from 0.569 to 0.500 within 370 steps (piece 3 in docs/training.md, where the
    # prompt mix changed too); ``--set optim.lr=...`` overrides
    d["optim"]["lr"] = float(d["optim"]["lr"]) * FINE_TUNE_LR_SCALE
    d["train"].update(
        out_dir=str((out / "train").resolve()),
        steps=options.steps,
        export=None,
        export_dtype=None,
        val_every_steps=None,
        seed=options.seed,
    )
    path = out / "train_config.yaml"
    out.mkdir(parents=True, exist_ok=True)
    header = f"# written by segany engine cycle from {options.config}\n"
    write_text_atomic(path, header + yaml.safe_dump(d, sort_keys=False))
    try:
        config = TrainConfig.load(path, overrides=options.train_overrides)
    except ConfigError as exc:
        raise CycleError(f"--set: {exc}") from None
    if Path(config.train.out_dir).resolve() != (out / "train").resolve():
        raise CycleError("--set train.out_dir: the cycle trains into OUT/train")
    write_text_atomic(path, header + yaml.safe_dump(config.to_dict(), sort_keys=False))  # with the --set values
    return config


def _train(config: Any) -> dict[str, float]:
    from ..train.loop import Trainer

    return Trainer(config).run()


def _load(weights: Path, device: str) -> Any:
    from ..modeling.registry import build_model

    model = build_model("auto", weights)
    model.is_trained = True  # type: ignore[assignment]
    return model.to(device).eval()


def _evaluate(
    model: Any, evals: dict[str, list], out: Path, weights: str, options: CycleOptions, command: str
) -> dict[str, Any]:
    """``eval points`` on ``evals`` into ``out``; the headline numbers for the registry."""
    from ..eval import points, report
    from ..predictor import SamPredictor

    result = points.run(
        SamPredictor(model),
        evals,
        out,
        report.model_description(model, weights),
        command,
        max_clicks=options.max_clicks,
        seed=options.seed,
        show_progress=options.show_progress,
    )

    def headline(r: dict[str, Any]) -> dict[str, Any]:
        top = r["top"]
        return {"mIoU": top["mIoU"], "NoC@85": top["NoC@85"], "NoC@90": top["NoC@90"]}

    return {
        "datasets": {
            n: {"images": r["images"], "objects": r["objects"], **headline(r)} for n, r in result["datasets"].items()
        },
        "mean": headline(result["mean"]),
        "report": str((out / "report.md").resolve()),
    }


def describe(row: ModelVersionRow) -> str:
    """A few lines about a new version, for the terminal."""
    mean = row.metrics.get("points", {}).get("mean", {})
    miou = mean.get("mIoU", {})
    line = (
        f"registered model version {row.name} (parent {row.parent}): {row.masks} masks on {row.images} images "
        f"({', '.join(f'{k} {v}' for k, v in row.by_source.items())})"
    )
    if miou:
        line += f"\neval points: mIoU@1 {100 * miou['1']:.1f}  @5 {100 * miou['5']:.1f}  NoC@90 {mean['NoC@90']:.2f}"
    base = row.metrics.get("base_points", {}).get("mean", {})
    if base:
        line += (
            f"\nbase       : mIoU@1 {100 * base['mIoU']['1']:.1f}  @5 {100 * base['mIoU']['5']:.1f}  "
            f"NoC@90 {base['NoC@90']:.2f}"
        )
    return line + f"\nweights: {row.weights}\nserve it: segany serve IMAGES --db DB --model-version {row.name}"


def row_json(row: ModelVersionRow) -> str:
    return json.dumps(row.to_json(), indent=2)
