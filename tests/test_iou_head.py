"""The IoU-head refit (segany.train.iou_head, scripts/refit_iou_head.py): its decode is the
decoder's, its samples are seeded per image, the fit lowers the loss and changes the head only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segany.data.sa1b import write_record
from segany.modeling.build import build_model
from segany.modeling.checkpoint import read_checkpoint, save_checkpoint
from segany.train.iou_head import (
    PROMPT_KINDS,
    IoUSamples,
    collect_samples,
    decode_all_outputs,
    fit_head,
    head_report,
    top_pick_iou,
)
from segany.train.prompts import FOREGROUND, PAD
from segany.train.validation import whole_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_cnn():
    torch.manual_seed(0)
    return build_model("segany_cnn", cnn_widths=(8, 8, 16, 16, 32), cnn_depths=(1, 1, 1, 1), cnn_global_blocks=1).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Five photos with two ellipse/box objects each (every 5th image is held out)."""
    root = tmp_path_factory.mktemp("iou_head")
    rng = np.random.default_rng(0)
    for n in range(5):
        h, w = 200 + 20 * n, 260
        yy, xx = np.mgrid[:h, :w]
        masks = [
            (yy - h / 2) ** 2 / (h / 4) ** 2 + (xx - w / 3) ** 2 / (w / 5) ** 2 < 1,
            (np.abs(yy - h / 3) < h / 6) & (np.abs(xx - 0.75 * w) < w / 9),
        ]
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        img[masks[0]] += 120
        img[masks[1], 2] = 250
        Image.fromarray(img).save(root / f"im{n}.png")
        write_record(root / "sa", n + 1, root / f"im{n}.png", masks, (h, w))
    return root / "sa"


def test_decode_all_outputs_is_the_decoders_computation(small_cnn):
    sam = small_cnn
    emb = torch.randn(1, 256, 64, 64)
    coords = torch.tensor([[[100.0, 120.0], [0.0, 0.0]], [[300.0, 40.0], [0.0, 0.0]]])
    labels = torch.tensor([[FOREGROUND, PAD], [FOREGROUND, PAD]])
    with torch.no_grad():
        logits, scores, features = decode_all_outputs(sam, emb, coords, labels)
        sparse, dense = sam.prompt_encoder(points=(coords[:, :1], labels[:, :1]), boxes=None, masks=None)
        want_logits, want_scores = sam.mask_decoder.predict_masks(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense)
    assert logits.shape == (2, 4, 256, 256) and features.shape == (2, 256)
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores, want_scores, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sam.mask_decoder.iou_prediction_head(features), scores)


def test_samples_are_seeded_per_image_and_hold_every_prompt_kind(small_cnn, folder):
    ds = whole_images([folder], small_cnn.img_size, holdout_every=5, split="train")
    assert len(ds) == 4
    both = collect_samples(small_cnn, ds, [0, 2])
    alone = collect_samples(small_cnn, ds, [2])
    assert len(both) == 2 * 2 * len(PROMPT_KINDS)  # 2 images x 2 masks x 3 prompts
    assert set(both.kind.tolist()) == {0, 1, 2} and set(both.image.tolist()) == {0, 2}
    part = both.subset(both.image == 2)
    torch.testing.assert_close(part.features, alone.features)
    torch.testing.assert_close(part.actual, alone.actual)
    assert both.actual.shape == (len(both), 4)
    assert ((both.actual >= 0) & (both.actual <= 1)).all()
    held_out = whole_images([folder], small_cnn.img_size, holdout_every=5, split="val")
    assert len(held_out) == 1 and held_out.paths[0] not in ds.paths


def test_fit_lowers_the_loss_and_leaves_the_model_alone(small_cnn, folder):
    ds = whole_images([folder], small_cnn.img_size, holdout_every=5, split="train")
    samples = collect_samples(small_cnn, ds)
    head = small_cnn.mask_decoder.iou_prediction_head
    before = {k: v.clone() for k, v in head.state_dict().items()}
    fitted = fit_head(head, samples, epochs=60, lr=1e-3)
    assert head_report(fitted, samples)["mse"] < 0.5 * head_report(head, samples)["mse"]
    for k, v in head.state_dict().items():
        assert torch.equal(v, before[k]), "fit_head changed the model's own head"
    assert fitted is not head


def test_top_pick_reads_the_best_scored_multimask_output():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.2], [0.0, 0.3, 0.2, 0.8]])  # output 0 is never picked
    actual = torch.tensor([[1.0, 0.2, 0.6, 0.9], [0.5, 0.1, 0.4, 0.7]])
    torch.testing.assert_close(top_pick_iou(scores, actual), torch.tensor([0.6, 0.7]))
    s = IoUSamples(torch.zeros(2, 256), actual, torch.tensor([0, 0]), torch.tensor([0, 1]))
    assert len(IoUSamples.cat([s, s])) == 4


def test_script_collects_fits_and_writes_a_model_with_only_the_head_changed(small_cnn, folder, tmp_path):
    weights = tmp_path / "w.safetensors"
    save_checkpoint(small_cnn, weights)
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{type: segany_cnn}}\ndata: {{roots: [{folder}], holdout_every: 5}}\n")
    script = [sys.executable, str(ROOT / "scripts" / "refit_iou_head.py")]
    common = ["--config", str(config)]
    for split, out in (("val", "val.pt"), ("train", "train.pt")):
        subprocess.run([*script, "collect", str(weights), "--split", split, "--out", str(tmp_path / out), *common],
                       check=True, capture_output=True)
    refit = tmp_path / "refit.safetensors"
    run = subprocess.run([*script, "fit", str(weights), "--train", str(tmp_path / "train.pt"), "--val",
                          str(tmp_path / "val.pt"), "--epochs", "5", "--dtype", "float32", "--out", str(refit), *common],
                         check=True, capture_output=True, text=True)
    assert '"before"' in run.stdout and '"after"' in run.stdout
    old, _ = read_checkpoint(weights)
    new, meta = read_checkpoint(refit)
    assert "iou_head_refit" in meta
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith("mask_decoder.iou_prediction_head.") for k in changed)
    # samples of other weights are refused
    other = tmp_path / "other.safetensors"
    save_checkpoint(build_model("segany_cnn", cnn_widths=(8, 8, 16, 16, 32), cnn_depths=(1, 1, 1, 1),
                                cnn_global_blocks=1), other)
    bad = subprocess.run([*script, "fit", str(other), "--train", str(tmp_path / "train.pt"), "--val",
                          str(tmp_path / "val.pt"), "--out", str(tmp_path / "x.safetensors"), *common],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "other weights" in bad.stderr
