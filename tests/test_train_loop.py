"""The trainer end to end: overfitting one image, resume reproducing an uninterrupted run,
checkpoint contents, config errors and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segany.data.sa1b import write_record
from segany.modeling.registry import build_model
from segany.train.loop import ConfigError, TrainConfig, Trainer
from test_train_prompts import narrow_sam

STEPS = 60
TINY = {
    "encoder_embed_dim": 32, "encoder_depth": 1, "encoder_num_heads": 1,
    "encoder_global_attn_indexes": [0], "img_size": 128, "patch_size": 2, "window_size": 8,
}


@pytest.fixture(scope="module")
def one_image(tmp_path_factory):
    """A 96x128 image with two flat-coloured shapes on a noisy background, and their masks."""
    root = tmp_path_factory.mktemp("sa1b")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, (96, 128, 3), dtype=np.uint8)
    a = np.zeros((96, 128), bool)
    a[10:50, 15:60] = True
    yy, xx = np.mgrid[:96, :128]
    b = (yy - 65) ** 2 + (xx - 90) ** 2 < 22**2
    img[a] = (230, 40, 40)
    img[b] = (40, 200, 230)
    Image.fromarray(img).save(root / "img.png")
    write_record(root / "sa", 1, root / "img.png", [a, b], (96, 128))
    return root / "sa"


def _config(folder, out_dir, **train) -> TrainConfig:
    return TrainConfig.from_dict({
        "model": {"type": "segany_tiny", "overrides": dict(TINY)},
        "data": {"roots": [str(folder)], "max_masks": 2},
        "prompts": {"num_point_iters": train.pop("num_point_iters", 8)},
        "optim": {"lr": train.pop("lr", 1e-3), "warmup_steps": 2, "weight_decay": 0.0, "grad_clip": 1.0},
        "train": {"out_dir": str(out_dir), "steps": 4, "seed": 3, "checkpoint_every_s": 1e9, **train},
    })


def _log(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_overfits_one_image(one_image, tmp_path):
    """The full 11-iteration recipe on one image (narrow model): loss falls, IoU rises."""
    cfg = _config(one_image, tmp_path / "run", steps=STEPS, lr=3e-3)
    Trainer(cfg, show_progress=False, sam=narrow_sam()).run()
    log = _log(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    loss = [r["loss"] for r in log]
    iou = [r["iou_last"] for r in log]
    assert np.mean(loss[-5:]) < 0.6 * np.mean(loss[:5])
    assert np.mean(iou[-5:]) > np.mean(iou[:5]) + 0.3
    print("loss", [round(x, 3) for x in loss[:3]], [round(x, 3) for x in loss[-3:]])
    print("iou", [round(x, 3) for x in iou[:3]], [round(x, 3) for x in iou[-3:]])


def test_resume_reproduces_the_loss_sequence(one_image, tmp_path):
    full = _config(one_image, tmp_path / "full", steps=4)
    Trainer(full, show_progress=False, sam=narrow_sam()).run()
    half = _config(one_image, tmp_path / "split", steps=2)
    Trainer(half, show_progress=False, sam=narrow_sam()).run()
    rest = _config(one_image, tmp_path / "split", steps=4)
    Trainer(rest, resume=True, show_progress=False, sam=narrow_sam(seed=1)).run()  # weights come from the checkpoint
    a, b = _log(tmp_path / "full"), _log(tmp_path / "split")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["iou_last"] for r in a] == [r["iou_last"] for r in b]


def test_checkpoint_contents_and_export(one_image, tmp_path):
    """A registry model (real decoder, tiny encoder) checkpoints and exports safetensors."""
    cfg = _config(one_image, tmp_path / "run", steps=1, num_point_iters=1, export=str(tmp_path / "w.safetensors"))
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "max_masks": 1}})
    Trainer(cfg, show_progress=False).run()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 1
    assert {"model", "optimizer", "scheduler", "rng", "config"} <= set(state)
    assert state["scheduler"]["last_epoch"] == 1
    model = build_model("auto", tmp_path / "w.safetensors")
    assert model.img_size == 128
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state["model"][k])
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_frozen_encoder_stays_fixed(one_image, tmp_path):
    cfg = _config(one_image, tmp_path / "run", steps=1)
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "freeze_image_encoder": True}})
    t = Trainer(cfg, show_progress=False, sam=narrow_sam())
    before = {k: v.clone() for k, v in t.sam.image_encoder.state_dict().items()}
    dec_before = t.sam.mask_decoder.iou_token.weight.clone()
    t.run()
    for k, v in t.sam.image_encoder.state_dict().items():
        assert torch.equal(v, before[k])
    assert not torch.equal(t.sam.mask_decoder.iou_token.weight, dec_before)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown config sections"):
        TrainConfig.from_dict({"modle": {}})
    with pytest.raises(ConfigError, match="unknown keys \\['lrr'\\]"):
        TrainConfig.from_dict({"optim": {"lrr": 1}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrainConfig.load(bad)
    with pytest.raises(ConfigError, match="data.roots is empty"):
        Trainer(TrainConfig.from_dict({"model": {"overrides": dict(TINY)}}), show_progress=False)


def test_shipped_configs_parse():
    from pathlib import Path

    import segany

    configs = sorted((Path(segany.__file__).parent / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        TrainConfig.load(path)


def test_cli_train(one_image, tmp_path, capsys):
    import yaml

    from segany.cli import main

    cfg = _config(one_image, tmp_path / "run", steps=1, num_point_iters=1).to_dict()
    cfg["data"]["max_masks"] = 1
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--steps", "1"]) == 0
    assert "loss=" in capsys.readouterr().out
    assert main(["train", str(path), "--resume", "--steps", "2"]) == 0
    assert [r["step"] for r in _log(tmp_path / "run")] == [1, 2]
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2


def test_loader_threads_and_prefetch_change_nothing(one_image, tmp_path):
    """loader_workers (with the next step's samples prepared while a step computes, the GPU
    script's setting) reproduces the single-threaded run's loss sequence exactly."""
    plain = _config(one_image, tmp_path / "plain", steps=3)
    Trainer(plain, show_progress=False, sam=narrow_sam()).run()
    threaded = _config(one_image, tmp_path / "threaded", steps=3, loader_workers=2)
    Trainer(threaded, show_progress=False, sam=narrow_sam()).run()
    a, b = _log(tmp_path / "plain"), _log(tmp_path / "threaded")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["masks"] for r in a] == [r["masks"] for r in b]


def test_final_decay_minutes_drops_the_lr_for_the_end_of_a_timed_run(one_image, tmp_path):
    """With max_minutes, the last final_decay_minutes run at lr x decay_factor (here the whole
    run: the drop starts after the first step, which is logged at the full lr)."""
    cfg = _config(one_image, tmp_path / "run", steps=3, max_minutes=60.0, final_decay_minutes=60.0)
    Trainer(cfg, show_progress=False, sam=narrow_sam()).run()
    lrs = [r["lr"] for r in _log(tmp_path / "run")]
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[1:] == pytest.approx([1e-4, 1e-4])
    off = _config(one_image, tmp_path / "off", steps=3, max_minutes=60.0, final_decay_minutes=1.0)
    Trainer(off, show_progress=False, sam=narrow_sam()).run()
    assert [r["lr"] for r in _log(tmp_path / "off")] == pytest.approx([1e-3] * 3)


def test_cuda_device_gets_this_process_index(monkeypatch):
    """`train.device=cuda` names this process's GPU (torch.cuda.set_device refuses a bare
    "cuda", which is how the first GPU run failed); no GPU is needed to build the name."""
    from segany.train.loop import _device

    assert _device("cuda") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _device("cuda") == torch.device("cuda", 1)
    assert _device("cuda:3") == torch.device("cuda", 3)
    assert _device("cpu") == torch.device("cpu")
