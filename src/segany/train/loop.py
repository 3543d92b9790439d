"""The trainer: config, training step, checkpoints, resume, logging, DDP.

One *step* takes ``images_per_step`` images (per process), samples up to ``max_masks``
masks from each, runs the image encoder once per image and the 11-iteration prompt
episode (:mod:`.prompts`) for every mask, and backpropagates the loss averaged over
iterations (:mod:`.losses`) into the whole model.

Reproducibility: every random choice of step ``n`` comes from generators seeded with
``(seed, n, rank)``, so a run resumed from a checkpoint produces exactly the loss sequence
of an uninterrupted one. Checkpoints (model, optimiser, scheduler, step, RNG states) are
written to a temporary file and renamed; each also exports ``model.safetensors`` with the
model config embedded, the file ``segany predict --checkpoint`` and the default-model
loader read.

DDP: run under ``torchrun --nproc-per-node N``; each process takes its own images, the
gradients are averaged, rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..atomic_files import atomic_path, write_text_atomic
from ..data.crops import CropConfig, CropDataset, CropSample
from ..data.dataset import SA1BDataset, TrainSample
from ..modeling.registry import build_model, save_checkpoint
from ..modeling.sam import Sam
from .init import apply_attention_init
from .losses import LossConfig, downsample_targets, mask_iou, sam_loss
from .optim import OptimConfig, build_optimizer
from .prompts import PromptConfig, simulate_episode
from .synthetic import SyntheticConfig, pretrain_decoder_synthetic


class ConfigError(ValueError):
    """A training config is malformed."""


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _checked(where: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the field's type ``hint`` (and converted where YAML is
    ambiguous), so a bad config fails before the first step, naming the key.

    PyYAML reads ``1.0e9`` (no sign in the exponent) as a *string*; numeric strings are
    accepted for numeric fields for that reason. Lists become tuples for tuple fields."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _checked(where, value, option)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is not {_type_name(hint)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, str):
            try:
                value = float(value) if hint is float else int(value)
            except ValueError:
                kind = "a number" if hint is float else "an integer"
                raise ConfigError(f"{where} must be {kind}, got the string {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be {'an integer' if hint is int else 'a number'}, got {value!r}")
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ConfigError(f"{where} must be an integer, got {value!r}")
            return int(value)
        if not math.isfinite(float(value)):
            raise ConfigError(f"{where} must be finite, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_checked(f"{where}[{k}]", v, args[0]) for k, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} entries, got {value!r}")
        return tuple(_checked(f"{where}[{k}]", v, a) for k, (v, a) in enumerate(zip(value, args)))
    if origin is list or hint is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return list(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    return value


@dataclass(frozen=True)
class ModelSection:
    type: str = "segany_tiny"
    checkpoint: str | None = None  # official .pth / segany .safetensors to start from
    overrides: dict[str, Any] = field(default_factory=dict)  # SamConfig fields, e.g. drop_path_rate
    freeze_image_encoder: bool = False
    freeze_prompt_encoder: bool = False
    grad_checkpointing: bool = False
    init_seed: int = 0
    # "positional": decoder cross-attention keys start tied to queries (see train/init.py);
    # only used when training from scratch (no checkpoint)
    attention_init: str = "default"
    attention_init_gain: float = 3.0
    # start the prompt encoder and mask decoder from another checkpoint's (any model with
    # SAM's 256-d decoder), e.g. to give a new encoder an already-trained decoder
    decoder_from: str | None = None


@dataclass(frozen=True)
class DataSection:
    roots: list[Any] = field(default_factory=list)  # folders or {path, repeat}
    max_masks: int = 64
    max_area_frac: float = 0.9
    min_area_frac: float = 0.0  # drop masks smaller than this fraction of the image
    jitter: tuple[float, float] | None = None
    # training crops (data/crops.py): crop side in input-frame pixels; None = whole squares
    crop: int | None = None
    scale: tuple[float, float] = (0.5, 1.6)
    hflip: float = 0.5
    color_jitter: float = 0.3
    copy_paste: float = 0.3
    candidates: int = 24
    min_mask_px: int = 48
    # crops centred on one object at zoom-in's scales (data/crops.py: CropConfig.object_zoom)
    object_zoom: float = 0.0
    object_zoom_range: tuple[float, float] = (1.4, 3.0)
    object_zoom_max: float = 4.0
    holdout_every: int = 0  # N > 0: every N-th image of each folder is the validation set, never trained on

    def root_list(self) -> list[Any]:
        """``roots`` as the datasets take them: folders, or (folder, repeat) pairs. One
        reading for the trainer and for anything that rebuilds its validation set
        (``scripts/finish_piece.sh``)."""
        return [(r["path"], int(r.get("repeat", 1))) if isinstance(r, dict) else r for r in self.roots]


@dataclass(frozen=True)
class TrainSection:
    out_dir: str = "runs/train"
    steps: int = 1000
    images_per_step: int = 1
    seed: int = 0
    bf16: bool = False
    device: str = "auto"
    threads: int | None = None
    checkpoint_every_s: float = 300.0
    checkpoint_every_steps: int | None = None
    max_minutes: float | None = None  # stop (with a checkpoint) after this much wall time
    export: str | None = None  # also copy the weights here at every checkpoint
    export_dtype: str | None = None  # e.g. "float16": the exported copy's float type (half the size)
    val_every_steps: int | None = None  # score the held-out images (data.holdout_every) this often
    val_limit: int | None = None  # at most this many held-out images per validation
    loader_workers: int = 0  # threads preparing crops (GPU runs); 0 = in the training thread
    # with max_minutes: the last this many minutes run at lr x optim.decay_factor. A time-capped
    # run (the GPU script) cannot know its step count ahead, yet every piece should end with a drop
    final_decay_minutes: float | None = None


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # decoder pretraining stage
    train: TrainSection = field(default_factory=TrainSection)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        sections = {f.name: f.type for f in fields(cls)}
        unknown = set(d) - set(sections)
        if unknown:
            raise ConfigError(f"unknown config sections {sorted(unknown)}; expected {sorted(sections)}")
        kwargs = {}
        for f in fields(cls):
            section_cls = type(getattr(cls(), f.name))
            raw = d.get(f.name) or {}
            if not isinstance(raw, dict):
                raise ConfigError(f"config section {f.name!r} must be a mapping")
            known = {g.name for g in fields(section_cls)}
            bad = set(raw) - known
            if bad:
                raise ConfigError(f"unknown keys {sorted(bad)} in section {f.name!r}; known: {sorted(known)}")
            hints = typing.get_type_hints(section_cls)
            vals = {key: _checked(f"{f.name}.{key}", value, hints[key]) for key, value in raw.items()}
            kwargs[f.name] = section_cls(**vals)
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
        """Read a YAML config; ``overrides`` are ``section.key=value`` strings (YAML values)
        applied on top, e.g. ``train.bf16=true`` (how the GPU script reuses the CPU config)."""
        import yaml

        try:
            d = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"config {path} must be a YAML mapping of sections")
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            section, dot, name = key.strip().partition(".")
            if not sep or not dot or not section or not name:
                raise ConfigError(f"override {item!r} must look like section.key=value")
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from None
            target = d.setdefault(section, {}) or {}
            if not isinstance(target, dict):
                raise ConfigError(f"override {item!r}: section {section!r} is not a mapping")
            target[name] = value
            d[section] = target
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


# ----------------------------------------------------------------------------- the step


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


class SamTrainStep(nn.Module):
    """Wraps a Sam so one ``forward`` is a whole training step (what DDP needs)."""

    def __init__(self, sam: Sam, prompts: PromptConfig, loss: LossConfig) -> None:
        super().__init__()
        self.sam = sam
        self.prompts = prompts
        self.loss_config = loss

    def forward(self, samples: list[TrainSample | CropSample], generator: torch.Generator) -> dict[str, torch.Tensor]:
        sam = self.sam
        device = sam.device
        gt = torch.cat([s.masks for s in samples]).to(device)
        index = torch.cat([torch.full((len(s.masks),), k, dtype=torch.long) for k, s in enumerate(samples)]).to(device)
        valid = offsets = None
        if isinstance(samples[0], CropSample):
            images = torch.stack([s.normalised(sam.pixel_mean, sam.pixel_std, device) for s in samples])
            side = gt.shape[-1]
            sizes = torch.full((len(gt), 2), side, dtype=torch.long, device=device)
            valid = torch.stack([s.valid for s in samples]).to(device)[index]
            stride = sam.img_size // sam.prompt_encoder.image_embedding_size[0]
            free = max(0, (sam.img_size - side) // stride)
            offsets = torch.randint(0, free + 1, (len(samples), 2), generator=generator).to(device)[index]
        else:
            images = torch.stack([sam.preprocess(s.image.to(device)) for s in samples])
            sizes = torch.cat([torch.tensor([s.size] * len(s.masks), dtype=torch.long) for s in samples]).to(device)
        embeddings = sam.image_encoder(images)
        outputs = simulate_episode(
            sam, embeddings, index, gt, sizes, generator, self.prompts, valid=valid, pe_offsets=offsets
        )
        low_side = outputs[0].low_res.shape[-1]
        target = downsample_targets(gt, low_side)
        all_parts = [sam_loss(o.low_res, o.iou_pred, target, self.loss_config) for o in outputs]
        parts = [p for p, o in zip(all_parts, outputs) if o.trained]
        singles = [
            sam_loss(o.single_low_res, o.single_iou_pred, target, self.loss_config)["loss"]
            for o in outputs if o.trained and o.single_low_res is not None
        ]
        loss = torch.stack([p["loss"] for p in parts]).mean()
        if singles:  # the single-output token on the same single prompts: one more term
            loss = loss + torch.stack(singles).mean()
        with torch.no_grad():
            first, last = outputs[0], outputs[-1]
            best = first.iou_pred.argmax(dim=1)
            rows = torch.arange(len(best), device=best.device)
            iou_first_selected = mask_iou(first.low_res[rows, best].float(), target).mean()
        return {
            "loss": loss,
            "focal": torch.stack([p["focal"] for p in parts]).mean(),
            "dice": torch.stack([p["dice"] for p in parts]).mean(),
            "iou_mse": torch.stack([p["iou_mse"] for p in parts]).mean(),
            "iou_first": all_parts[0]["iou"].detach(),  # best of the 3 outputs (the trained one)
            "iou_first_selected": iou_first_selected,  # the output the IoU head would pick
            "iou_last": mask_iou(last.low_res[:, 0].float(), target).mean(),
            "masks": torch.tensor(float(len(gt))),
        }


# ----------------------------------------------------------------------------- trainer


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device(name: str) -> torch.device:
    """The training device; a CUDA device always carries an index (this process's GPU:
    LOCAL_RANK), since ``torch.cuda.set_device`` refuses a bare "cuda"."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def build_sam_for_training(section: ModelSection) -> Sam:
    """The model to train: a fresh one (seeded init) or an official/segany checkpoint."""
    with torch.random.fork_rng():
        torch.manual_seed(section.init_seed)
        sam = build_model(section.type, section.checkpoint, **section.overrides)
    if section.checkpoint is None:
        apply_attention_init(sam, section.attention_init, section.attention_init_gain)
    if section.decoder_from and section.checkpoint is None:  # a whole checkpoint has its own decoder
        load_decoder_from(sam, section.decoder_from)
    return prepare_for_training(sam, section)


def load_decoder_from(sam: Sam, path: str | os.PathLike) -> None:
    """Copy the prompt encoder and mask decoder weights of checkpoint ``path`` into ``sam``."""
    from ..modeling.registry import CheckpointError, read_checkpoint

    state, _ = read_checkpoint(path)
    parts = {k: v for k, v in state.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    own = {k: v for k, v in sam.state_dict().items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    missing = [k for k in own if k not in parts and not k.startswith("prompt_encoder.text_projection.")]
    wrong = [k for k in own if k in parts and parts[k].shape != own[k].shape]
    if missing or wrong:
        raise CheckpointError(f"decoder_from {path}: {'missing ' + missing[0] if missing else 'shape of ' + wrong[0]} does not fit")
    sam.load_state_dict({k: v.to(own[k].dtype) for k, v in parts.items() if k in own}, strict=False)


def prepare_for_training(sam: Sam, section: ModelSection) -> Sam:
    """Train mode, gradient checkpointing and frozen parts as the model section asks."""
    sam.train()
    sam.image_encoder.grad_checkpointing = bool(section.grad_checkpointing)
    if section.freeze_image_encoder:
        sam.image_encoder.requires_grad_(False)
    if section.freeze_prompt_encoder:
        sam.prompt_encoder.requires_grad_(False)
    return sam


class Trainer:
    """Trains a Sam per a :class:`TrainConfig`; ``run()`` returns the last metrics."""

    def __init__(
        self, config: TrainConfig, resume: bool = False, show_progress: bool = True, sam: Sam | None = None
    ) -> None:
        """``sam`` trains a model built elsewhere (e.g. a custom architecture) instead of
        the one the config's model section describes."""
        self.config = config
        self.resume = resume
        self.show_progress = show_progress
        tcfg = config.train
        if tcfg.threads:
            torch.set_num_threads(int(tcfg.threads))
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.rank, self.world = _rank_world()
        self.device = _device(tcfg.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True  # fixed crop sizes: pick the fastest conv kernels once
        self.out_dir = Path(tcfg.out_dir)
        self.ckpt_path = self.out_dir / "checkpoint.pt"
        self.metrics_path = self.out_dir / "metrics.jsonl"
        built = build_sam_for_training(config.model) if sam is None else prepare_for_training(sam, config.model)
        self.sam = built.to(self.device)
        roots = config.data.root_list()
        if not roots:
            raise ConfigError("data.roots is empty: give at least one SA-1B folder")
        dcfg = config.data
        self.dataset: SA1BDataset | CropDataset
        if dcfg.crop is not None:
            self.dataset = CropDataset(roots, self.sam.img_size, CropConfig(
                crop=dcfg.crop, scale=dcfg.scale, hflip=dcfg.hflip, color_jitter=dcfg.color_jitter,
                copy_paste=dcfg.copy_paste, max_masks=dcfg.max_masks, candidates=dcfg.candidates,
                min_mask_px=dcfg.min_mask_px, max_area_frac=dcfg.max_area_frac, object_zoom=dcfg.object_zoom,
                object_zoom_range=tuple(dcfg.object_zoom_range), object_zoom_max=dcfg.object_zoom_max,
            ), holdout_every=dcfg.holdout_every)
        else:
            self.dataset = SA1BDataset(
                roots,
                img_size=self.sam.img_size,
                max_masks=dcfg.max_masks,
                max_area_frac=dcfg.max_area_frac,
                min_area_frac=dcfg.min_area_frac,
                jitter=dcfg.jitter,
                seed=tcfg.seed,
            )
        self._pool = None
        if tcfg.loader_workers > 0:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(tcfg.loader_workers, thread_name_prefix="segany-load")
            # one more thread prepares the next step's crops while this step computes (a GPU
            # otherwise idles while the loaders work); a separate executor, so a step's map
            # over the pool never waits behind itself
            self._feeder = ThreadPoolExecutor(1, thread_name_prefix="segany-feed")
        self._ahead: dict[int, Any] = {}
        self._late_decay = False
        self.val_set = None
        if dcfg.holdout_every and tcfg.val_every_steps:
            from .validation import validation_set

            self.val_set = validation_set(roots, self.sam.img_size, dcfg.holdout_every)
        self.val_path = self.out_dir / "val.jsonl"
        self.step_module: nn.Module = SamTrainStep(self.sam, config.prompts, config.loss)
        if self.world > 1:
            self.step_module = nn.parallel.DistributedDataParallel(
                self.step_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        self.optimizer, self.scheduler = build_optimizer(self.sam, config.optim)
        self.step = 0
        self._stop = False

    # ---------------------------------------------------------------- data order
    def _indices(self, step: int) -> list[int]:
        """Images of ``step`` for this rank: epochs are seeded permutations of the data."""
        n = len(self.dataset)
        per = self.config.train.images_per_step
        out = []
        for j in range(per):
            flat = (step * self.world + self.rank) * per + j
            epoch, pos = divmod(flat, n)
            perm = np.random.default_rng([self.config.train.seed, epoch]).permutation(n)
            out.append(int(perm[pos]))
        return out

    def _load_one(self, idx: int, rng: np.random.Generator) -> TrainSample | CropSample | None:
        s = self.dataset.load(idx, rng)
        tries = 0
        while len(s.masks) == 0 and tries < 10:  # jitter cropped every mask away: redraw
            s = self.dataset.load(int(rng.integers(len(self.dataset))), rng)
            tries += 1
        return s if len(s.masks) else None

    def _samples(self, step: int) -> list[TrainSample | CropSample]:
        """The step's samples. Crops draw from one generator per image (seeded by step, rank
        and slot), so ``loader_workers`` threads can prepare them in parallel with the same
        result; whole-square samples keep one generator per step."""
        seed = _step_seed(self.config.train.seed, step, self.rank)
        indices = self._indices(step)
        if isinstance(self.dataset, CropDataset):
            rngs = [np.random.default_rng([seed, j]) for j in range(len(indices))]
            if self._pool is not None:
                loaded = list(self._pool.map(self._load_one, indices, rngs))
            else:
                loaded = [self._load_one(i, r) for i, r in zip(indices, rngs)]
        else:
            rng = np.random.default_rng(seed)
            loaded = [self._load_one(i, rng) for i in indices]
        return [s for s in loaded if s is not None]

    def _step_samples(self) -> list[TrainSample | CropSample]:
        """This step's samples; with loader threads, the next step's are started before
        returning. Samples depend only on the step number, so prefetching changes nothing."""
        if self._pool is None:
            return self._samples(self.step)
        future = self._ahead.pop(self.step, None)
        if future is None:
            future = self._feeder.submit(self._samples, self.step)
        self._ahead = {self.step + 1: self._feeder.submit(self._samples, self.step + 1)}
        return future.result()

    def _scale_lr(self, factor: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] *= factor

    # ---------------------------------------------------------------- checkpoints
    def save(self) -> None:
        if self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.sam.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "rng": {"torch": torch.get_rng_state()},
            "config": json.dumps(self.config.to_dict()),
        }
        with atomic_path(self.ckpt_path) as tmp:
            torch.save(state, tmp)
        if getattr(self.sam, "config", None) is None:
            return  # a custom model without a SamConfig: only checkpoint.pt describes it
        meta = {"train_step": str(self.step), "train_config": json.dumps(self.config.to_dict())}
        save_checkpoint(self.sam, self.out_dir / "model.safetensors", extra_meta=meta)
        if self.config.train.export:
            dtype = getattr(torch, self.config.train.export_dtype) if self.config.train.export_dtype else None
            save_checkpoint(self.sam, self.config.train.export, extra_meta=meta, dtype=dtype)

    def load(self) -> None:
        """Restore model, optimiser, scheduler, step and RNG from ``checkpoint.pt``."""
        if not self.ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {self.ckpt_path}")
        state = torch.load(self.ckpt_path, map_location=self.device, weights_only=True)
        self.sam.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        for log in (self.metrics_path, self.val_path):
            if self.rank == 0 and log.is_file():
                # drop log lines of steps after the checkpoint: they are about to be redone
                kept = [
                    line for line in log.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= self.step
                ]
                write_text_atomic(log, "".join(line + "\n" for line in kept))

    # ---------------------------------------------------------------- synthetic stage
    def _synthetic_stage(self) -> None:
        """Pretrain the decoder on synthetic scenes (train/synthetic.py) before step 0, log it
        to ``synthetic.jsonl`` and checkpoint, so ``--resume`` never repeats it. With DDP every
        rank runs the same seeded stage and ends with identical weights."""
        log: list[dict] = []
        summary = pretrain_decoder_synthetic(
            self.sam, self.config.synthetic, self.config.loss, self.config.prompts,
            show_progress=self.show_progress and self.rank == 0, log=log,
        )
        self.sam.train()
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.out_dir / "synthetic.jsonl", "".join(json.dumps(r) + "\n" for r in log))
            print(f"synthetic decoder stage: {self.config.synthetic.steps} steps, last-100 IoU {summary['iou']:.3f}", flush=True)
        self.save()

    # ---------------------------------------------------------------- loop
    def train_step(self) -> dict[str, float]:
        seed = _step_seed(self.config.train.seed, self.step, self.rank)
        torch.manual_seed(seed)  # drop path and anything else using the global RNG
        generator = torch.Generator().manual_seed(seed)
        samples = self._step_samples()
        self.sam.train()
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.train.bf16):
            out = self.step_module(samples, generator)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        clip = self.config.optim.grad_clip
        if clip:
            torch.nn.utils.clip_grad_norm_(self.sam.parameters(), clip)
        self.optimizer.step()
        self.scheduler.step()
        if self._late_decay:  # LambdaLR sets lr from the base each step: scale it again
            self._scale_lr(self.config.optim.decay_factor)
        self.step += 1
        metrics = {k: float(v.detach()) for k, v in out.items()}
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        metrics["sec"] = time.perf_counter() - t0
        return metrics

    def _log(self, metrics: dict[str, float]) -> None:
        if self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({"step": self.step, "time": round(time.time(), 1), **metrics}) + "\n")

    def _validate(self) -> None:
        if self.rank != 0:
            return
        from .validation import validate

        t0 = time.perf_counter()
        result = validate(self.sam, self.val_set, seed=self.config.train.seed, limit=self.config.train.val_limit)
        record = {"step": self.step, "time": round(time.time(), 1), **result, "sec": round(time.perf_counter() - t0, 1)}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.val_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def run(self) -> dict[str, float]:
        tcfg = self.config.train
        if self.resume:
            self.load()
        elif self.rank == 0:
            for log in (self.metrics_path, self.val_path):
                if log.exists():
                    log.unlink()
        previous = signal.getsignal(signal.SIGTERM)

        def _stop(signum: int, frame: Any) -> None:
            self._stop = True

        try:
            signal.signal(signal.SIGTERM, _stop)
        except ValueError:  # not the main thread
            previous = None
        if not self.resume and self.config.synthetic.steps > 0:
            self._synthetic_stage()
        start = last_save = time.time()
        metrics: dict[str, float] = {}
        bar = tqdm(total=tcfg.steps, initial=self.step, desc="train", disable=not self.show_progress or self.rank != 0)
        try:
            while self.step < tcfg.steps and not self._stop:
                metrics = self.train_step()
                if not math.isfinite(metrics["loss"]):
                    raise FloatingPointError(f"loss became {metrics['loss']} at step {self.step}")
                self._log(metrics)
                if self.val_set is not None and self.step % int(tcfg.val_every_steps) == 0:
                    self._validate()
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", iou=f"{metrics['iou_last']:.3f}")
                due_steps = tcfg.checkpoint_every_steps and self.step % tcfg.checkpoint_every_steps == 0
                due_time = time.time() - last_save >= tcfg.checkpoint_every_s
                if due_steps or due_time:
                    self.save()
                    last_save = time.time()
                elapsed = time.time() - start
                if tcfg.max_minutes is not None and elapsed >= 60 * tcfg.max_minutes:
                    break
                if (
                    tcfg.max_minutes is not None and tcfg.final_decay_minutes
                    and not self._late_decay and elapsed >= 60 * (tcfg.max_minutes - tcfg.final_decay_minutes)
                ):
                    self._late_decay = True
                    self._scale_lr(self.config.optim.decay_factor)
            self.save()
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return metrics


def train(
    config: TrainConfig | str | os.PathLike,
    resume: bool = False,
    init_from: str | os.PathLike | None = None,
    **train_overrides: Any,
) -> dict[str, float]:
    """Train per a config (object or YAML path); ``train_overrides`` replace ``train:`` keys;
    ``init_from`` replaces ``model.checkpoint`` (the weights a fresh run starts from)."""
    if not isinstance(config, TrainConfig):
        config = TrainConfig.load(config)
    if init_from is not None:
        config = replace(config, model=replace(config.model, checkpoint=str(init_from)))
    if train_overrides:
        config = replace(config, train=replace(config.train, **train_overrides))
    return Trainer(config, resume=resume).run()
