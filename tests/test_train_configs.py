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


def test_default_model_stages_share_schedule_and_output() -> None:
    """Stage 1 is resumed by the main config: same optimiser schedule, same out_dir."""
    root = CONFIGS[0].parent
    stage1, main = TrainConfig.load(root / "segany_tiny_cpu_stage1.yaml"), TrainConfig.load(root / "segany_tiny_cpu.yaml")
    assert stage1.optim == main.optim and stage1.train.out_dir == main.train.out_dir
    assert stage1.train.steps < main.train.steps and stage1.model == main.model
    assert (main.prompts.num_point_iters, main.prompts.no_point_iters) == (2, 2)
