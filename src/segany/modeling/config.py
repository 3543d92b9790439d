"""What each model is: :class:`SamConfig` and the registered configurations.

A config is plain data (no torch): it is what ``build.py`` builds from, what a segany
checkpoint stores as metadata, and what ``checkpoint.py`` checks a file's tensors against.
It lives below both so that building (which may load a checkpoint) and checkpoint
validation (which must know the registered shapes) can share it without importing each other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

PROMPT_EMBED_DIM = 256
EMBEDDING_GRID = 64  # the decoder always works on a 64x64 embedding and 256x256 low-res masks

# fields that JSON turns into lists and the dataclass keeps as tuples
_TUPLE_FIELDS = ("encoder_global_attn_indexes", "cnn_widths", "cnn_depths")


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
        """Trusting inverse of :meth:`to_json`; untrusted file metadata goes through
        ``checkpoint.config_from_metadata`` instead, which type-checks every field."""
        d = json.loads(text)
        for key in _TUPLE_FIELDS:
            if key in d:
                d[key] = tuple(d[key])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


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
