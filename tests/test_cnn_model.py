"""segany_cnn (the default model's architecture), its training crops and crop-mode training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segany import SamPredictor
from segany.data.crops import CropConfig, CropDataset
from segany.data.sa1b import write_record
from segany.modeling.build import build_model
from segany.modeling.checkpoint import config_from_state, guess_model_type, read_checkpoint, save_checkpoint
from segany.modeling.cnn_encoder import ImageEncoderCNN
from segany.train.loop import TrainConfig, Trainer
from segany.train.prompts import window_pe

SMALL_CNN = {"cnn_widths": [8, 8, 16, 16, 32], "cnn_depths": [1, 1, 1, 1], "cnn_global_blocks": 1}


@pytest.fixture(scope="module")
def small_cnn():
    torch.manual_seed(0)
    return build_model("segany_cnn", cnn_widths=(8, 8, 16, 16, 32), cnn_depths=(1, 1, 1, 1), cnn_global_blocks=1)


def test_embedding_is_sams_grid(small_cnn):
    with torch.no_grad():
        out = small_cnn.image_encoder(torch.zeros(1, 3, 512, 512))
    assert out.shape == (1, 256, 64, 64)
    with torch.no_grad():  # fully convolutional: a 256 px crop gives a 32x32 grid
        assert small_cnn.image_encoder(torch.zeros(2, 3, 256, 256)).shape == (2, 256, 32, 32)
    with pytest.raises(ValueError, match="divisible by 32"):
        small_cnn.image_encoder(torch.zeros(1, 3, 500, 512))


def test_full_size_fits_the_shipping_budget(tmp_path):
    sam = build_model("segany_cnn")
    path = tmp_path / "m.safetensors"
    save_checkpoint(sam, path, dtype=torch.float16)
    assert path.stat().st_size < 30e6  # <= 30 MB in float16
    state, meta = read_checkpoint(path)
    assert config_from_state(state, meta).encoder_type == "cnn"
    assert guess_model_type(state) == "segany_cnn"
    again = build_model("auto", path)
    assert isinstance(again.image_encoder, ImageEncoderCNN)
    with pytest.raises(ValueError, match="does not fit"):
        build_model("vit_b", path)


def test_checkpoint_round_trip_and_predictor(small_cnn, tmp_path):
    path = tmp_path / "small.safetensors"
    save_checkpoint(small_cnn, path)
    loaded = build_model("auto", path)
    image = np.random.default_rng(0).integers(0, 255, (300, 420, 3), dtype=np.uint8)
    outs = []
    for model in (small_cnn, loaded):
        p = SamPredictor(model)
        p.set_image(image)
        outs.append(p.predict(point_coords=np.array([[100, 80]]), point_labels=np.array([1])))
    assert outs[0][0].shape == (3, 300, 420)
    np.testing.assert_allclose(outs[0][2], outs[1][2], atol=1e-5)


def test_window_pe_is_a_slice_of_the_grid_encoding():
    pe = torch.randn(1, 4, 8, 8)
    offsets = torch.tensor([[0, 0], [3, 1], [4, 4]])
    win = window_pe(pe, offsets, 4)
    for k, (x, y) in enumerate(offsets.tolist()):
        torch.testing.assert_close(win[k], pe[0, :, y : y + 4, x : x + 4])


@pytest.fixture(scope="module")
def coded_folder(tmp_path_factory):
    """Images whose object pixels are coded in the red channel, so a crop's masks can be
    checked against its own pixels (any shift between image and masks shows)."""
    root = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(1)
    for n in range(3):
        h, w = 300 + 40 * n, 420 - 30 * n
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 1:] = rng.integers(0, 255, (h, w, 2))
        yy, xx = np.mgrid[:h, :w]
        masks = [
            (yy - h / 2) ** 2 / (h / 4) ** 2 + (xx - w / 3) ** 2 / (w / 5) ** 2 < 1,
            (np.abs(yy - h / 3) < h / 6) & (np.abs(xx - 0.7 * w) < w / 8),
        ]
        for m in masks:
            img[m, 0] = 255
        Image.fromarray(img).save(root / f"im{n}.png")
        write_record(root / "sa", n + 1, root / f"im{n}.png", masks, (h, w))
    return root / "sa"


def test_crops_keep_masks_on_their_pixels(coded_folder):
    config = CropConfig(crop=128, scale=(0.3, 1.5), hflip=0.5, color_jitter=0.0, copy_paste=0.0, min_mask_px=1)
    data = CropDataset([coded_folder], img_size=256, config=config)
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(12):
        sample = data.load(int(rng.integers(len(data))), rng)
        red = sample.image[0].numpy() >= 128  # where the object pixels landed
        for mask in sample.masks.numpy():
            near = red & (np.abs(np.arange(128)[None] - np.nonzero(mask)[1].mean()) < 128)
            inter = (mask & near).sum()
            assert inter / max(mask.sum(), 1) > 0.97  # the mask lies on object pixels
            checked += 1
        union = sample.masks.numpy().any(axis=0)
        assert (red & ~union).sum() <= 0.03 * max(red.sum(), 1) + 4 or len(sample.masks) < 2
    assert checked > 5


def test_object_zoom_crops_centre_one_object_at_zoom_in_scale(coded_folder):
    """An object-zoom crop keeps masks on their pixels, holds the object's centre in its middle half
    at 1/e of the input side, and always trains on that object."""
    config = CropConfig(crop=128, hflip=0.5, color_jitter=0.0, copy_paste=0.0, min_mask_px=1, max_masks=8,
                        object_zoom=1.0, object_zoom_range=(1.5, 2.5), object_zoom_max=10.0, max_area_frac=1.0)
    data = CropDataset([coded_folder], img_size=256, config=config)
    rng = np.random.default_rng(4)
    for k in range(8):
        sample = data.load(k % len(data), rng)
        red = sample.image[0].numpy() >= 128
        masks = sample.masks.numpy()
        assert len(masks) >= 1
        for mask in masks:
            assert (mask & red).sum() / max(mask.sum(), 1) > 0.97
        # some mask's box centre lies in the middle half of the window (the zoomed object, maybe clipped)
        centres = []
        for mask in masks:
            ys, xs = np.nonzero(mask)
            centres.append(((xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2))
        assert any(20 <= cx <= 108 and 20 <= cy <= 108 for cx, cy in centres)


def test_object_zoom_scale_and_cap():
    """The map scales the object's box side to input side / e, capped at object_zoom_max x the whole-image scale."""
    import types

    data = types.SimpleNamespace(img_size=512, config=CropConfig(crop=256, hflip=0.0, object_zoom=1.0,
                                                                   object_zoom_range=(2.0, 2.0), object_zoom_max=4.0))
    m = CropDataset._zoom_matrix(data, 400, 600, (100.0, 100.0, 300.0, 200.0), np.random.default_rng(0))
    assert m[0, 0] == pytest.approx(512 / (200 * 2.0))  # box side 200 -> 256 px
    cx = 200 * m[0, 0] + m[0, 2] - 0.5 * m[0, 0] + 0.5  # the box centre in the window (pixel-centre convention)
    assert 0.25 * 256 <= cx <= 0.75 * 256
    tiny = CropDataset._zoom_matrix(data, 400, 600, (10.0, 10.0, 14.0, 14.0), np.random.default_rng(0))
    assert tiny[0, 0] == pytest.approx(4.0 * 512 / 600)  # capped


def test_object_zoom_off_keeps_the_random_stream(coded_folder):
    """object_zoom=0 draws no extra random numbers: crops of earlier configs are unchanged."""
    from segany.data.crops import _warp
    from segany.image_io import load_image

    off = CropDataset([coded_folder], 256, CropConfig(crop=128, object_zoom=0.0, color_jitter=0.0, copy_paste=0.0))
    sample = off.load(1, np.random.default_rng(7))
    image = load_image(off.record(1).image_path)
    # the first draws are the whole-image map's, as before object zoom existed
    m = off._matrix(*image.shape[:2], np.random.default_rng(7))
    assert np.array_equal(sample.image.permute(1, 2, 0).numpy(), _warp(image, m, 128).astype(np.float32))


def test_copy_paste_adds_an_occluding_object(coded_folder):
    config = CropConfig(crop=128, scale=(1.0, 1.0), hflip=0.0, color_jitter=0.0, copy_paste=1.0, min_mask_px=1, max_masks=8)
    data = CropDataset([coded_folder], img_size=256, config=config)
    sample = data.load(0, np.random.default_rng(3))
    masks = sample.masks.numpy()
    pasted = masks[-1]
    assert pasted.sum() > 0
    assert not (masks[:-1] & pasted).any()  # the pasted object occludes what is under it


def test_holdout_split_is_disjoint(coded_folder):
    train = CropDataset([(coded_folder, 2)], 256, CropConfig(crop=128), holdout_every=3, split="train")
    val = CropDataset([(coded_folder, 2)], 256, CropConfig(crop=128), holdout_every=3, split="val")
    assert len(val) == 1 and len(train) == 4
    assert not set(train.paths) & set(val.paths)


def _crop_config(folder, out_dir, steps):
    return TrainConfig.from_dict({
        "model": {"type": "segany_cnn", "overrides": dict(SMALL_CNN)},
        "data": {"roots": [str(folder)], "crop": 128, "max_masks": 2, "copy_paste": 0.5, "min_mask_px": 8},
        "prompts": {"num_point_iters": 0, "no_point_iters": 0, "nograd_clicks": 2},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "weight_decay": 0.0, "grad_clip": 1.0},
        "train": {"out_dir": str(out_dir), "steps": steps, "seed": 5, "checkpoint_every_s": 1e9, "images_per_step": 2},
    })


def test_crop_training_resumes_exactly(coded_folder, tmp_path):
    Trainer(_crop_config(coded_folder, tmp_path / "full", 4), show_progress=False).run()
    Trainer(_crop_config(coded_folder, tmp_path / "split", 2), show_progress=False).run()
    Trainer(_crop_config(coded_folder, tmp_path / "split", 4), resume=True, show_progress=False).run()
    logs = [
        [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("full", "split")
    ]
    assert [r["step"] for r in logs[1]] == [1, 2, 3, 4]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    assert all(np.isfinite(r["loss"]) for r in logs[0])


def test_validation_is_logged(coded_folder, tmp_path):
    cfg = _crop_config(coded_folder, tmp_path / "v", 2)
    d = cfg.to_dict()
    d["data"]["holdout_every"] = 3
    d["train"].update(val_every_steps=1, export=str(tmp_path / "v" / "half.safetensors"), export_dtype="float16")
    Trainer(TrainConfig.from_dict(d), show_progress=False).run()
    rows = [json.loads(line) for line in (tmp_path / "v" / "val.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.0 <= r["val_point"] <= 1.0 and r["val_masks"] > 0 for r in rows)
    for r in rows:  # the per-source means add back up to the pooled one
        sources = [k.split("/", 1)[1] for k in r if k.startswith("val_masks/")]
        assert sources and sum(r[f"val_masks/{s}"] for s in sources) == r["val_masks"]
        pooled = sum(r[f"val_point/{s}"] * r[f"val_masks/{s}"] for s in sources) / r["val_masks"]
        assert pooled == pytest.approx(r["val_point"])
    state, _ = read_checkpoint(tmp_path / "v" / "half.safetensors")
    assert state["mask_decoder.iou_token.weight"].dtype == torch.float16


@pytest.mark.parametrize("single", [False, True])
def test_single_token_is_trained_on_single_prompts(coded_folder, single):
    """With ``single_token_on_first`` the first prompt's pass also trains mask 0 (what
    ``multimask_output=False`` returns), from the same decoder pass."""
    from segany.train.loop import SamTrainStep
    from segany.train.losses import LossConfig
    from segany.train.prompts import PromptConfig

    torch.manual_seed(0)
    sam = build_model("segany_cnn", **{k: tuple(v) if isinstance(v, list) else v for k, v in SMALL_CNN.items()})
    sam.train()
    data = CropDataset([coded_folder], 256, CropConfig(crop=128, min_mask_px=8))
    samples = [data.load(0, np.random.default_rng(0))]
    prompts = PromptConfig(num_point_iters=0, no_point_iters=0, single_token_on_first=single)
    out = SamTrainStep(sam, prompts, LossConfig())(samples, torch.Generator().manual_seed(0))
    out["loss"].backward()
    heads = sam.mask_decoder.output_hypernetworks_mlps  # head k only shapes mask k
    trained = [h.layers[0].weight.grad for h in heads[1:]]  # the lowest-loss one of masks 1-3
    assert sum(float(g.abs().sum()) for g in trained if g is not None) > 0
    grad0 = heads[0].layers[0].weight.grad
    assert (grad0 is not None and grad0.abs().sum() > 0) == single
