"""Every shipped example training config parses and describes a buildable model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from segany.modeling.config import MODEL_CONFIGS
from segany.train.loop import ConfigError, TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "src" / "segany" / "configs").glob("*.yaml"))


def test_there_are_example_configs() -> None:
    assert {p.stem for p in CONFIGS} >= {"segany_tiny_cpu", "finetune_vit_b", "sam_paper_vit_h"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses(path: Path) -> None:
    cfg = TrainConfig.load(path)
    assert cfg.model.type in MODEL_CONFIGS
    assert cfg.train.steps > 0 and cfg.optim.lr > 0
    assert all(s > 0 for s in cfg.optim.decay_steps)  # a stage config may stop before its decays
    assert cfg.optim.warmup_steps < cfg.train.steps
    assert cfg.data.roots, "a config must name its data"
    # 1 first prompt + num_point_iters error points + no_point_iters mask-only iterations
    assert cfg.prompts.num_point_iters >= 0 and cfg.prompts.no_point_iters in (0, 1, 2)


def test_default_model_config_trains_from_scratch_with_positional_attention() -> None:
    """The default model's recipe: from scratch, decoder attention started as a positional kernel,
    episodes of the first prompt plus error-region points with mask feedback."""
    cfg = TrainConfig.load(CONFIGS[0].parent / "segany_tiny_cpu.yaml")
    assert cfg.model.type == "segany_tiny" and cfg.model.checkpoint is None
    assert cfg.model.attention_init == "positional" and cfg.model.attention_init_gain > 1
    assert cfg.prompts.num_point_iters >= 1 and max(cfg.optim.decay_steps) < cfg.train.steps


CNN = CONFIGS[0].parent / "segany_cnn_cpu.yaml"


def test_cnn_default_recipe() -> None:
    """The default model's current recipe: CNN encoder, crops, RITM-style clicks, a held-out
    validation set carved from the train splits, fp16 export."""
    cfg = TrainConfig.load(CNN)
    assert MODEL_CONFIGS[cfg.model.type].encoder_type == "cnn"
    assert cfg.data.crop and cfg.data.crop % 32 == 0 and cfg.data.holdout_every > 0
    assert cfg.prompts.nograd_clicks > 0 and cfg.data.copy_paste > 0
    assert cfg.train.export_dtype == "float16" and cfg.train.val_every_steps


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.checkpoint_every_s=soon", "train.checkpoint_every_s must be a number"),
        ("train.bf16=1", "train.bf16 must be true or false"),
        ("train.steps=2.5", "train.steps must be an integer"),
        ("optim.lr=.nan", "optim.lr must be finite"),
        ("data.scale=[0.5]", "data.scale must have 2 entries"),
        ("optim.decay_steps=[10, x]", "optim.decay_steps[1] must be an integer"),
        ("data.roots=3", "data.roots must be a list"),
        ("train", "must look like section.key=value"),
    ],
)
def test_bad_values_fail_before_training(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig.load(CNN, [override])


def test_yaml_exponent_strings_are_numbers() -> None:
    """PyYAML reads 1.0e9 (no exponent sign) as a string; it must still be a float here."""
    cfg = TrainConfig.load(CNN, ["train.checkpoint_every_s=1.0e9", "train.bf16=true", "train.images_per_step=64"])
    assert cfg.train.checkpoint_every_s == 1e9 and cfg.train.bf16 is True and cfg.train.images_per_step == 64
