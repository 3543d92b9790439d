"""Model configurations, building, and checkpoint loading.

``sam_model_registry`` is the official plain-dict registry (``"default"``, ``"vit_h"``,
``"vit_l"``, ``"vit_b"``) plus segany's own models. Builders take ``checkpoint=`` exactly as
the official ones do; loading never unpickles code (``weights_only=True`` or safetensors)
and a checkpoint that does not fit says which model it looks like and where it differs.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cnn_encoder import ImageEncoderCNN
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .transformer import TwoWayTransformer

PROMPT_EMBED_DIM = 256
EMBEDDING_GRID = 64  # the decoder always works on a 64x64 embedding and 256x256 low-res masks


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not fit the requested model."""


@dataclass(frozen=True)
class SamConfig:
    """Everything needed to build a Sam model; stored in segany checkpoints' metadata."""

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    text_embed_dim: int | None = None
    drop_path_rate: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # "vit": SAM's ViT (the fields above); "cnn": segany's convolutional encoder
    # (modeling/cnn_encoder.py; patch_size is its output stride, 8)
    encoder_type: str = "vit"
    cnn_widths: tuple[int, ...] = (32, 64, 128, 224, 320)
    cnn_depths: tuple[int, ...] = (1, 2, 3, 2)
    cnn_global_blocks: int = 2

    def to_json(self) -> str:
        d = asdict(self)
        for key in _TUPLE_FIELDS:
            d[key] = list(getattr(self, key))
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SamConfig:
        d = json.loads(text)
        for key in _TUPLE_FIELDS:
            if key in d:
                d[key] = tuple(d[key])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


_TUPLE_FIELDS = ("encoder_global_attn_indexes", "cnn_widths", "cnn_depths")

MODEL_CONFIGS: dict[str, SamConfig] = {
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    # segany's own CPU-sized model: 512 px input, 8 px patches -> the same 64x64 embedding,
    # so the prompt encoder, decoder, low-res masks and ONNX signature are unchanged.
    "segany_tiny": SamConfig(
        encoder_embed_dim=192,
        encoder_depth=6,
        encoder_num_heads=3,
        encoder_global_attn_indexes=(2, 5),
        img_size=512,
        patch_size=8,
        window_size=16,
    ),
    # segany's default model since 2026-12: a residual CNN + FPN + detail path to a stride-8
    # embedding (modeling/cnn_encoder.py), again 64x64 for a 512 px input
    "segany_cnn": SamConfig(
        encoder_embed_dim=0,
        encoder_depth=0,
        encoder_num_heads=0,
        encoder_global_attn_indexes=(),
        img_size=512,
        patch_size=8,
        encoder_type="cnn",
    ),
}


def build_from_config(config: SamConfig) -> Sam:
    """Build an (uninitialised-weights) Sam in eval mode from a config."""
    if config.img_size // config.patch_size != EMBEDDING_GRID:
        raise ValueError(
            f"img_size/patch_size must be {EMBEDDING_GRID} (got {config.img_size}/{config.patch_size})"
        )
    if config.encoder_type == "cnn":
        encoder: nn.Module = ImageEncoderCNN(
            img_size=config.img_size,
            widths=tuple(config.cnn_widths),
            depths=tuple(config.cnn_depths),
            global_blocks=config.cnn_global_blocks,
            out_chans=PROMPT_EMBED_DIM,
        )
    elif config.encoder_type != "vit":
        raise ValueError(f"unknown encoder_type {config.encoder_type!r} (expected 'vit' or 'cnn')")
    else:
        encoder = _build_vit(config)
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(EMBEDDING_GRID, EMBEDDING_GRID),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=16,
            text_embed_dim=config.text_embed_dim,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=PROMPT_EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )
    sam.config = config  # type: ignore[assignment]
    sam.eval()
    return sam


def _build_vit(config: SamConfig) -> ImageEncoderViT:
    return ImageEncoderViT(
        depth=config.encoder_depth,
        embed_dim=config.encoder_embed_dim,
        img_size=config.img_size,
        mlp_ratio=config.mlp_ratio,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=config.encoder_num_heads,
        patch_size=config.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=tuple(config.encoder_global_attn_indexes),
        window_size=config.window_size,
        out_chans=PROMPT_EMBED_DIM,
        drop_path_rate=config.drop_path_rate,
    )


def build_model(
    model_type: str = "vit_h", checkpoint: str | os.PathLike | None = None, **overrides: Any
) -> Sam:
    """Build a registered model type, optionally overriding config fields (e.g.
    ``encoder_depth=2`` for tests, ``text_embed_dim=768``) and loading a checkpoint.

    ``model_type="auto"`` takes the type from the checkpoint itself.
    """
    if model_type == "auto":
        if checkpoint is None:
            raise ValueError("model_type='auto' needs a checkpoint")
        state, meta = read_checkpoint(checkpoint)
        config = config_from_state(state, meta)
        if overrides:
            config = replace(config, **overrides)
        sam = build_from_config(config)
        load_into(sam, state, describe=str(checkpoint))
        return sam
    if model_type == "default":
        model_type = "vit_h"
    if model_type not in MODEL_CONFIGS:
        raise ValueError(f"unknown model type {model_type!r}; choose from {sorted(MODEL_CONFIGS)}")
    config = MODEL_CONFIGS[model_type]
    if overrides:
        config = replace(config, **overrides)
    sam = build_from_config(config)
    if checkpoint is not None:
        state, _ = read_checkpoint(checkpoint)
        load_into(sam, state, describe=str(checkpoint), expected_type=model_type)
    return sam


def build_sam_vit_h(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_model("vit_h", checkpoint)


def build_sam_vit_l(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_model("vit_l", checkpoint)


def build_sam_vit_b(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_model("vit_b", checkpoint)


def build_segany_tiny(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_model("segany_tiny", checkpoint)


def build_segany_cnn(checkpoint: str | os.PathLike | None = None) -> Sam:
    return build_model("segany_cnn", checkpoint)


build_sam = build_sam_vit_h

sam_model_registry: dict[str, Callable[..., Sam]] = {
    "default": build_sam_vit_h,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "segany_tiny": build_segany_tiny,
    "segany_cnn": build_segany_cnn,
}


# --------------------------------------------------------------------------- reading files


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a state dict from ``.pth``/``.pt`` (weights only) or ``.safetensors``.

    Accepts plain state dicts, training checkpoints that wrap it under ``"model"`` or
    ``"state_dict"``, and the Hugging Face ``SamModel`` key layout (converted). Returns the
    state dict and the safetensors metadata (empty for ``.pth``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    meta: dict[str, str] = {}
    try:
        is_safetensors = path.suffix == ".safetensors" or (
            not zipfile.is_zipfile(path) and _looks_like_safetensors(path)
        )
        if is_safetensors:
            from safetensors import safe_open

            state = {}
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                for k in f.keys():
                    state[k] = f.get_tensor(k)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            state = _unwrap(obj, path)
    except CheckpointError:
        raise
    except Exception as exc:  # corrupted zip, truncated file, pickle with code, ...
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            " (expected an official sam_vit_*.pth, a segany .safetensors or a training checkpoint;"
            " files with pickled code are refused)"
        ) from None
    if not state:
        raise CheckpointError(f"checkpoint {path} holds no tensors")
    from .convert_hf import convert_hf_state_dict, is_hf_layout

    if is_hf_layout(state):
        state = convert_hf_state_dict(state)
    return state, meta


def _looks_like_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            return 1 < n < (1 << 30) and f.read(1) == b"{"
    except OSError:
        return False


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return {k.removeprefix("module."): v for k, v in tensors.items()}
    raise CheckpointError(f"checkpoint {path} is not a state dict (found {type(obj).__name__})")


def guess_model_type(state: dict[str, torch.Tensor]) -> str:
    """Name the registered model whose shapes this state dict has, or describe it."""
    w = state.get("image_encoder.patch_embed.proj.weight")
    if w is None and "image_encoder.stem.0.weight" in state:
        return "segany_cnn"
    if w is None:
        if any(k.startswith("mask_decoder.") for k in state):
            return "a decoder-only state dict (no image_encoder)"
        return "not a SAM model"
    dim, patch = int(w.shape[0]), int(w.shape[-1])
    depth = 1 + max((int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks.")), default=-1)
    for name, cfg in MODEL_CONFIGS.items():
        if (cfg.encoder_embed_dim, cfg.encoder_depth, cfg.patch_size) == (dim, depth, patch):
            return name
    return f"an unregistered ViT (dim {dim}, depth {depth}, patch {patch})"


def config_from_state(state: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> SamConfig:
    """Recover the config of a checkpoint: from segany metadata, else from its shapes."""
    if meta and "segany_config" in meta:
        return SamConfig.from_json(meta["segany_config"])
    guess = guess_model_type(state)
    if guess in MODEL_CONFIGS:
        cfg = MODEL_CONFIGS[guess]
    else:
        w = state.get("image_encoder.patch_embed.proj.weight")
        if w is None:
            raise CheckpointError(f"cannot infer a model from this state dict: {guess}")
        dim, patch = int(w.shape[0]), int(w.shape[-1])
        depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks."))
        head_dim = int(state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
        global_idx = tuple(
            i for i in range(depth)
            if state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] == 2 * EMBEDDING_GRID - 1
        )
        window = (int(state[f"image_encoder.blocks.{min(set(range(depth)) - set(global_idx), default=0)}.attn.rel_pos_h"].shape[0]) + 1) // 2
        cfg = SamConfig(dim, depth, dim // head_dim, global_idx, img_size=patch * EMBEDDING_GRID,
                        patch_size=patch, window_size=window)
    if "prompt_encoder.text_projection.0.weight" in state:
        cfg = replace(cfg, text_embed_dim=int(state["prompt_encoder.text_projection.0.weight"].shape[1]))
    return cfg


def load_into(
    model: Sam,
    state: dict[str, torch.Tensor],
    describe: str = "state dict",
    expected_type: str | None = None,
) -> None:
    """Load ``state`` strictly, turning any mismatch into a :class:`CheckpointError` that
    names the model the checkpoint looks like and the first differing key."""
    own = model.state_dict()
    problems: list[str] = []
    for k, v in own.items():
        if k not in state:
            if k.startswith("prompt_encoder.text_projection."):
                continue  # optional head: absent in official checkpoints, stays as built
            problems.append(f"missing key {k!r}")
        elif tuple(state[k].shape) != tuple(v.shape):
            problems.append(f"key {k!r} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
    for k in state:
        if k not in own:
            problems.append(f"unexpected key {k!r}")
    if problems:
        looks = guess_model_type(state)
        want = expected_type or "this model"
        raise CheckpointError(
            f"{describe} does not fit {want}: it looks like {looks}; first mismatch: {problems[0]}"
            f" ({len(problems)} mismatches in all)"
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{describe} has non-finite values in {bad[0]!r}: the file is corrupted")
    model.load_state_dict(state, strict=False)


def save_checkpoint(
    model: Sam,
    path: str | os.PathLike,
    extra_meta: dict[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write a segany ``.safetensors`` checkpoint atomically, with its config as metadata.

    ``dtype`` (e.g. ``torch.float16``) stores the floating-point tensors in that type: half the
    size for shipping; loading casts them back to the model's dtype.
    """
    from safetensors.torch import save_file

    path = Path(path)
    config: SamConfig = getattr(model, "config", None) or config_from_state(model.state_dict())
    meta = {"segany_config": config.to_json(), "format": "segany-sam-v1"}
    if extra_meta:
        meta.update({k: str(v) for k, v in extra_meta.items()})
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
