"""Every shipped example training config parses and describes a buildable model."""

from __future__ import annotations

from pathlib import Path

import pytest

from segany.modeling.registry import MODEL_CONFIGS
from segany.train.loop import TrainConfig

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
