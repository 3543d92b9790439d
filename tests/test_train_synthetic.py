"""Synthetic decoder pretraining: scene properties, weights copied back, trainer integration."""

from __future__ import annotations

import json

import torch

from segany.modeling.registry import build_model
from segany.train.loop import TrainConfig, Trainer
from segany.train.synthetic import SyntheticConfig, pretrain_decoder_synthetic, synthetic_scenes
from test_train_loop import TINY, one_image  # noqa: F401  (fixture)


def test_scenes_are_normalised_and_targets_are_regions() -> None:
    g = torch.Generator().manual_seed(0)
    emb, target = synthetic_scenes(6, 8, g, dim=32)
    assert emb.shape == (6, 32, 8, 8) and target.shape == (6, 64, 64) and target.dtype == torch.bool
    assert torch.allclose(emb.mean(1), torch.zeros(6, 8, 8), atol=1e-5)
    assert torch.allclose(emb.std(1), torch.ones(6, 8, 8), atol=1e-4)
    frac = target.flatten(1).float().mean(1)
    assert (frac > 0).all() and (frac <= 0.9 + 1e-6).all()
    again = synthetic_scenes(6, 8, torch.Generator().manual_seed(0), dim=32)
    assert torch.equal(again[0], emb) and torch.equal(again[1], target)  # seeded


def test_pretraining_updates_the_decoder_only_and_keeps_the_model_usable() -> None:
    torch.manual_seed(0)
    sam = build_model("segany_tiny", encoder_depth=1)
    enc = {k: v.clone() for k, v in sam.image_encoder.state_dict().items()}
    dec = {k: v.clone() for k, v in sam.mask_decoder.state_dict().items()}
    log: list[dict] = []
    out = pretrain_decoder_synthetic(sam, SyntheticConfig(steps=3, grid=8, masks_per_step=2), show_progress=False, log=log)
    assert len(log) == 3 and set(out) == {"loss", "iou"}
    assert all(torch.equal(v, sam.image_encoder.state_dict()[k]) for k, v in enc.items())
    assert any(not torch.equal(v, sam.mask_decoder.state_dict()[k]) for k, v in dec.items())
    assert sam.prompt_encoder.image_embedding_size == (64, 64)  # the model's own grid is untouched
    sam.eval()
    with torch.no_grad():
        emb = torch.randn(1, 256, 64, 64)
        sparse, dense = sam.prompt_encoder(points=(torch.tensor([[[10.0, 20.0]]]), torch.ones(1, 1)), boxes=None, masks=None)
        low, iou = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True)
    assert low.shape == (1, 3, 256, 256) and torch.isfinite(low).all()


def test_trainer_runs_the_stage_once_and_resume_skips_it(tmp_path, one_image) -> None:  # noqa: F811
    cfg = TrainConfig.from_dict({
        "model": {"type": "segany_tiny", "overrides": dict(TINY), "attention_init": "positional"},
        "data": {"roots": [str(one_image)], "max_masks": 1},
        "prompts": {"num_point_iters": 0, "no_point_iters": 0},
        "synthetic": {"steps": 2, "grid": 8, "masks_per_step": 2},
        "train": {"out_dir": str(tmp_path / "run"), "steps": 1, "checkpoint_every_s": 1e9},
    })
    Trainer(cfg, show_progress=False).run()
    lines = (tmp_path / "run" / "synthetic.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    stamp = (tmp_path / "run" / "synthetic.jsonl").stat().st_mtime_ns
    cfg2 = TrainConfig.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "steps": 2}})
    Trainer(cfg2, resume=True, show_progress=False).run()
    assert (tmp_path / "run" / "synthetic.jsonl").stat().st_mtime_ns == stamp
