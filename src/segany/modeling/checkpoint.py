"""Checkpoint files: reading, checking them against a model, loading and saving.

Loading never unpickles code (``torch.load(weights_only=True)`` or safetensors). A file is
untrusted input, so before a model is built from it its config (segany metadata, or else
inferred from the tensor shapes) is type-checked and compared with the file's own tensors,
and loading is strict: a checkpoint that does not fit says which model it looks like and
the first key where it differs. Hugging Face ``SamModel`` files are renamed on reading
(``convert_hf.py``).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..atomic_files import atomic_path
from .config import EMBEDDING_GRID, MODEL_CONFIGS, SamConfig
from .convert_hf import HFLayoutError, convert_hf_state_dict, is_hf_layout
from .sam import Sam


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not fit the requested model."""


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
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
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
            with warnings.catch_warnings():
                # torch warns about pickle protocols before refusing; the refusal is the message
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
            state = _unwrap(obj, path)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        # torch's own text suggests weights_only=False, i.e. running the file's code: never
        text = " ".join(str(exc).split())
        what = text.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0] if "WeightsUnpickler error:" in text else ""
        raise CheckpointError(
            f"cannot read checkpoint {path}: it holds pickled Python objects other than tensors, and files with "
            f"pickled code are refused (they could run code when loaded){f': {what}' if what else ''}"
        ) from None
    except Exception as exc:  # corrupted zip, truncated file, ...
        raise CheckpointError(
            f"cannot read checkpoint {path}: {_read_error(exc)}"
            " (expected an official sam_vit_*.pth, a segany .safetensors or a training checkpoint;"
            " files with pickled code are refused)"
        ) from None
    if not state:
        raise CheckpointError(f"checkpoint {path} holds no tensors")
    if is_hf_layout(state):
        try:
            state = convert_hf_state_dict(state)
        except HFLayoutError as exc:
            raise CheckpointError(str(exc)) from None
    return state, meta


def _read_error(exc: BaseException) -> str:
    """A short, one-line account of why a checkpoint file could not be parsed (library
    messages run to paragraphs; the first sentence says what happened)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, EOFError) or "failed finding central directory" in text or "file not fully covered" in text:
        return f"the file is truncated or corrupted ({type(exc).__name__})"
    first = text.split(". ")[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


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


# --------------------------------------------------- which model a file holds


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
    depth = 1 + max(_block_indices(state, "image_encoder.blocks."), default=-1)
    for name, cfg in MODEL_CONFIGS.items():
        if (cfg.encoder_embed_dim, cfg.encoder_depth, cfg.patch_size) == (dim, depth, patch):
            return name
    return f"an unregistered ViT (dim {dim}, depth {depth}, patch {patch})"


def config_from_state(
    state: dict[str, torch.Tensor], meta: dict[str, str] | None = None, describe: str = "checkpoint"
) -> SamConfig:
    """Recover the config of a checkpoint: from segany metadata, else from its shapes.

    Metadata is untrusted input: a few hundred bytes can ask for a model of any size, so a
    config read from it is type-checked and compared with the tensors of the file (see
    :func:`check_config_against_state`) before anyone builds the model.
    """
    if meta and "segany_config" in meta:
        cfg = config_from_metadata(meta["segany_config"], describe)
        check_config_against_state(cfg, state, describe)
        return cfg
    try:
        return _config_from_shapes(state)
    except CheckpointError:
        raise
    except (KeyError, IndexError, ValueError) as exc:
        raise CheckpointError(
            f"cannot infer a model from {describe}: its tensors do not form a SAM image encoder "
            f"({type(exc).__name__}: {exc})"
        ) from None


def _config_from_shapes(state: dict[str, torch.Tensor]) -> SamConfig:
    guess = guess_model_type(state)
    if guess in MODEL_CONFIGS:
        cfg = MODEL_CONFIGS[guess]
    else:
        w = state.get("image_encoder.patch_embed.proj.weight")
        if w is None:
            raise CheckpointError(f"cannot infer a model from this state dict: {guess}")
        dim, patch = int(w.shape[0]), int(w.shape[-1])
        depth = 1 + max(_block_indices(state, "image_encoder.blocks."), default=-1)
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


def _block_indices(state: dict[str, torch.Tensor], prefix: str) -> set[int]:
    """The integer indices ``i`` of keys ``prefix + "i." ...`` (other keys are ignored, so a
    stray key cannot turn into an ``int()`` traceback)."""
    out = set()
    for k in state:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                out.add(int(head))
    return out


# ---------------------------- untrusted metadata, checked against the tensors


# Field -> (kind, minimum). Kinds: "int", "float", "ints" (list of ints), "str", "dict",
# "int?" (int or null). Bounds are sanity limits on what a file may ask for; the real limit is
# that every shape must match the file's own tensors (check_config_against_state).
_META_FIELDS: dict[str, tuple[str, float]] = {
    "encoder_embed_dim": ("int", 0),
    "encoder_depth": ("int", 0),
    "encoder_num_heads": ("int", 0),
    "encoder_global_attn_indexes": ("ints", 0),
    "img_size": ("int", 1),
    "patch_size": ("int", 1),
    "window_size": ("int", 0),
    "mlp_ratio": ("float", 0),
    "text_embed_dim": ("int?", 1),
    "drop_path_rate": ("float", 0),
    "extra": ("dict", 0),
    "encoder_type": ("str", 0),
    "cnn_widths": ("ints", 1),
    "cnn_depths": ("ints", 0),
    "cnn_global_blocks": ("int", 0),
}


def config_from_metadata(text: Any, describe: str = "checkpoint") -> SamConfig:
    """Parse and type-check the ``segany_config`` metadata of a segany ``.safetensors`` file.

    Why not ``SamConfig.from_json``: that trusts its input, so a wrong type ends in a
    ``TypeError`` deep in model building; here every field is checked and a bad one raises a
    :class:`CheckpointError` that names it. Unknown fields are ignored (newer files).
    """
    where = f"{describe}: metadata segany_config"
    if not isinstance(text, str):
        raise CheckpointError(f"{where} must be a JSON string, got {type(text).__name__}")
    try:
        d = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{where} is not valid JSON ({exc})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{where} must be a JSON object, got {type(d).__name__}")
    values: dict[str, Any] = {}
    for key, (kind, minimum) in _META_FIELDS.items():
        if key not in d:
            continue
        v = d[key]
        ok = True
        if kind in ("int", "int?"):
            if v is None and kind == "int?":
                values[key] = None
                continue
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= minimum
        elif kind == "float":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= minimum
            v = float(v) if ok else v
        elif kind == "ints":
            ok = isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= minimum for x in v)
            v = tuple(v) if ok else v
        elif kind == "str":
            ok = isinstance(v, str)
        elif kind == "dict":
            ok = isinstance(v, dict)
        if not ok:
            want = {
                "int": f"an integer >= {minimum:g}",
                "int?": f"null or an integer >= {minimum:g}",
                "float": f"a finite number >= {minimum:g}",
                "ints": f"a list of integers >= {minimum:g}",
                "str": "a string",
                "dict": "an object",
            }[kind]
            raise CheckpointError(f"{where}: field {key!r} must be {want}, got {json.dumps(v)[:60]}")
        values[key] = v
    return SamConfig(**values)


def check_config_against_state(config: SamConfig, state: dict[str, torch.Tensor], describe: str = "checkpoint") -> None:
    """Refuse a config whose shapes differ from the tensors it is meant to hold.

    Why before building: the model is allocated from the config, so metadata asking for an
    8192-d x 64-block encoder in a 628-byte file would allocate until memory runs out before
    ``load_into`` could notice. Every field that decides an encoder tensor's shape is checked
    here against the file; the error names the field.
    """

    def shape(key: str) -> tuple[int, ...] | None:
        t = state.get(key)
        return None if t is None else tuple(int(n) for n in t.shape)

    def fail(field_name: str, value: Any, detail: str) -> CheckpointError:
        return CheckpointError(
            f"{describe}: metadata field {field_name}={value!r} does not match the file's tensors: {detail}"
        )

    if config.img_size % config.patch_size or config.img_size // config.patch_size != EMBEDDING_GRID:
        raise fail("img_size", config.img_size, f"img_size/patch_size must be {EMBEDDING_GRID} (patch_size {config.patch_size})")
    if config.encoder_type == "vit":
        _check_vit(config, shape, state, fail)
    elif config.encoder_type == "cnn":
        _check_cnn(config, shape, state, fail)
    else:
        raise fail("encoder_type", config.encoder_type, "expected 'vit' or 'cnn'")
    text = shape("prompt_encoder.text_projection.0.weight")
    if config.text_embed_dim is not None and (text is None or text[1] != config.text_embed_dim):
        found = "no text projection" if text is None else f"prompt_encoder.text_projection.0.weight has shape {text}"
        raise fail("text_embed_dim", config.text_embed_dim, found)


def _check_vit(config: SamConfig, shape: Callable[[str], tuple[int, ...] | None], state: dict[str, torch.Tensor], fail: Callable[..., CheckpointError]) -> None:
    dim, patch = config.encoder_embed_dim, config.patch_size
    w = shape("image_encoder.patch_embed.proj.weight")
    if w is None:
        raise fail("encoder_type", "vit", "the file has no image_encoder.patch_embed.proj.weight (not a ViT encoder)")
    if w[0] != dim:
        raise fail("encoder_embed_dim", dim, f"image_encoder.patch_embed.proj.weight has shape {w}")
    if w != (dim, 3, patch, patch):
        raise fail("patch_size", patch, f"image_encoder.patch_embed.proj.weight has shape {w}")
    blocks = _block_indices(state, "image_encoder.blocks.")
    if blocks != set(range(config.encoder_depth)):
        raise fail("encoder_depth", config.encoder_depth, f"the file holds {len(blocks)} encoder blocks")
    heads = config.encoder_num_heads
    rel = shape("image_encoder.blocks.0.attn.rel_pos_h") if blocks else None
    if heads < 1 or dim % heads or (rel is not None and rel[1] != dim // heads):
        raise fail("encoder_num_heads", heads, f"image_encoder.blocks.0.attn.rel_pos_h has shape {rel} for dim {dim}")
    globals_ = set(config.encoder_global_attn_indexes)
    if not globals_ <= blocks:
        raise fail("encoder_global_attn_indexes", list(config.encoder_global_attn_indexes), f"the encoder has {len(blocks)} blocks")
    for i in sorted(blocks):
        r = shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")
        want = 2 * EMBEDDING_GRID - 1 if i in globals_ else 2 * config.window_size - 1
        if r is not None and r[0] != want:
            field_name, value = (
                ("encoder_global_attn_indexes", list(config.encoder_global_attn_indexes))
                if (i in globals_) != (r[0] == 2 * EMBEDDING_GRID - 1)
                else ("window_size", config.window_size)
            )
            raise fail(field_name, value, f"image_encoder.blocks.{i}.attn.rel_pos_h has shape {r}")
        lin1 = shape(f"image_encoder.blocks.{i}.mlp.lin1.weight")
        if lin1 is not None and lin1 != (int(dim * config.mlp_ratio), dim):
            raise fail("mlp_ratio", config.mlp_ratio, f"image_encoder.blocks.{i}.mlp.lin1.weight has shape {lin1}")


def _check_cnn(config: SamConfig, shape: Callable[[str], tuple[int, ...] | None], state: dict[str, torch.Tensor], fail: Callable[..., CheckpointError]) -> None:
    widths, depths = tuple(config.cnn_widths), tuple(config.cnn_depths)
    if len(widths) != 5:
        raise fail("cnn_widths", list(widths), "needs 5 entries (strides 2, 4, 8, 16, 32)")
    if len(depths) != 4:
        raise fail("cnn_depths", list(depths), "needs 4 entries (strides 4, 8, 16, 32)")
    stem = shape("image_encoder.stem.0.weight")
    if stem is None:
        raise fail("encoder_type", "cnn", "the file has no image_encoder.stem.0.weight (not a CNN encoder)")
    if stem != (widths[0], 3, 3, 3):
        raise fail("cnn_widths", list(widths), f"image_encoder.stem.0.weight has shape {stem}")
    for k, stage in enumerate(("stage4", "stage8", "stage16", "stage32")):
        down = shape(f"image_encoder.{stage}.0.0.weight")
        if down != (widths[k + 1], widths[k], 3, 3):
            raise fail("cnn_widths", list(widths), f"image_encoder.{stage}.0.0.weight has shape {down}")
        n = len(_block_indices(state, f"image_encoder.{stage}.") - {0})
        if n != depths[k]:
            raise fail("cnn_depths", list(depths), f"{stage} holds {n} residual blocks")
    n_ctx = len(_block_indices(state, "image_encoder.context."))
    if n_ctx != config.cnn_global_blocks:
        raise fail("cnn_global_blocks", config.cnn_global_blocks, f"the file holds {n_ctx} global blocks")


# --------------------------------------------------------- loading and saving


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
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
