"""Half-precision inference: ``model.to(torch.bfloat16)`` (or float16), then the predictor.

A half model used to fail with a dtype mismatch at the first prompt. Now the predictor feeds
the encoder in its dtype, the prompt encoder/decoder never mix dtypes, and scores and logits
come back as float32 numpy arrays. By default a half model decodes through a float32 copy of
its (small) prompt encoder and decoder, because the decoder's logits sit close to the
threshold; ``decoder_dtype=`` forces a half-precision decoder, which must work too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segany
from segany import SamPredictor, build_model

GRABCUT = Path("/work/shared/data/grabcut")
if not GRABCUT.is_dir():
    GRABCUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "grabcut"


def _image(h: int = 120, w: int = 160) -> np.ndarray:
    return np.random.RandomState(1).randint(0, 255, (h, w, 3), dtype=np.uint8)


def _half_model(name: str, dtype: torch.dtype) -> segany.Sam:
    """A small random model of ``name`` moved to ``dtype`` (fixed seed)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        kw = dict(encoder_depth=1, encoder_global_attn_indexes=(0,)) if name == "vit_b" else {}
        return build_model(name, **kw).to(dtype)


def _check_outputs(out: tuple, n_masks: int, shape: tuple[int, int], logits: bool = False) -> None:
    masks, scores, low = out
    assert masks.dtype == (np.float32 if logits else np.bool_) and masks.shape == (n_masks, *shape)
    assert scores.dtype == np.float32 and scores.shape == (n_masks,) and np.isfinite(scores).all()
    assert low.dtype == np.float32 and low.shape == (n_masks, 256, 256) and np.isfinite(low).all()


@pytest.mark.parametrize("name", ["vit_b", "segany_cnn"])
@pytest.mark.parametrize("decoder_dtype", [None, torch.bfloat16], ids=["fp32-decoder", "bf16-decoder"])
def test_bf16_end_to_end(name, decoder_dtype):
    model = _half_model(name, torch.bfloat16)
    p = SamPredictor(model, decoder_dtype=decoder_dtype)
    image = _image()
    p.set_image(image)
    assert p.get_image_embedding().dtype == torch.bfloat16
    point = dict(point_coords=np.array([[50.0, 60.0]]), point_labels=np.array([1]))
    out = p.predict(**point)
    _check_outputs(out, 3, image.shape[:2])
    _check_outputs(p.predict(box=np.array([10.0, 10.0, 100.0, 90.0]), multimask_output=False), 1, image.shape[:2])
    _check_outputs(p.predict(**point, mask_input=out[2][:1], return_logits=True), 3, image.shape[:2], logits=True)
    _check_outputs(p.predict(), 3, image.shape[:2])
    boxes = np.array([[10.0, 10.0, 100.0, 90.0], [0.0, 0.0, 50.0, 50.0]])
    masks, scores, low = p.predict(box=boxes)
    assert masks.shape == (2, 3, *image.shape[:2]) and scores.dtype == np.float32
    coords = torch.tensor([[[200.0, 300.0]]])
    t_masks, t_iou, t_low = p.predict_torch(coords, torch.tensor([[1]]), return_logits=True)
    assert t_masks.dtype == t_iou.dtype == t_low.dtype == torch.float32


def test_bf16_batched_forward_and_modules():
    """The official Sam.forward contract and the modules themselves run in bf16."""
    model = _half_model("vit_b", torch.bfloat16)
    g = torch.Generator().manual_seed(2)
    out = model(
        [{"image": torch.rand(3, 1024, 768, generator=g) * 255, "original_size": (400, 300),
          "point_coords": torch.tensor([[[500.0, 400.0]]]), "point_labels": torch.tensor([[1]]),
          "mask_inputs": torch.randn(1, 1, 256, 256, generator=g)}],
        multimask_output=True,
    )[0]
    assert out["masks"].shape == (1, 3, 400, 300) and out["masks"].dtype == torch.bool
    assert torch.isfinite(out["iou_predictions"].float()).all()
    sparse, dense = model.prompt_encoder(points=None, boxes=None, masks=None)
    assert sparse.shape == (1, 0, 256) and sparse.dtype == dense.dtype == torch.bfloat16
    assert model.prompt_encoder.get_dense_pe().dtype == torch.bfloat16


def test_float16_decoder():
    """float16 on the decoder side (fp16 convolutions on CPU are too slow to test the
    encoder here): an fp32 embedding decoded by a model moved to float16 afterwards."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("vit_b", encoder_depth=1, encoder_global_attn_indexes=(0,))
    p = SamPredictor(model)
    image = _image()
    p.set_image(image)
    point = dict(point_coords=np.array([[50.0, 60.0]]), point_labels=np.array([1]), return_logits=True)
    ref = p.predict(**point)
    model.half()
    for decoder_dtype in (None, torch.float16):
        p.decoder_dtype = decoder_dtype
        out = p.predict(**point)
        _check_outputs(out, 3, image.shape[:2], logits=True)
        for a, b in zip(out, ref):
            assert np.abs(a - b).max() < 0.05


def test_float32_decoder_copy_follows_the_weights():
    """The float32 copy that a bf16 model decodes with is rebuilt when its weights change."""
    model = _half_model("vit_b", torch.bfloat16)
    p = SamPredictor(model)
    p.set_image(_image())
    point = dict(point_coords=np.array([[50.0, 60.0]]), point_labels=np.array([1]), return_logits=True)
    before = p.predict(**point)
    with torch.no_grad():
        model.mask_decoder.iou_prediction_head.layers[-1].bias.add_(1.0)
        model.mask_decoder.output_upscaling[0].bias.add_(0.5)
    after = p.predict(**point)
    fresh = SamPredictor(model)
    fresh.set_image(_image())
    expected = fresh.predict(**point)
    assert np.abs(after[1] - before[1]).min() > 0.5
    for a, b in zip(after, expected):
        np.testing.assert_array_equal(a, b)


def _grabcut_photos(n: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    images = GRABCUT / "images"
    if not images.is_dir():
        pytest.skip(f"GrabCut photos not found at {images}")
    out = []
    for path in sorted(images.iterdir())[:n]:
        mask_path = GRABCUT / "masks" / f"{path.stem}.png"
        if not mask_path.is_file():
            continue
        gt = np.asarray(Image.open(mask_path))
        gt = (gt[..., 0] if gt.ndim == 3 else gt) == 255
        out.append((path.name, np.asarray(Image.open(path).convert("RGB")), gt))
    return out


def _centre(gt: np.ndarray) -> np.ndarray:
    """The object's centre: its pixel farthest from the background (the centre of mass of a
    non-convex object can lie outside it)."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(gt)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([[float(x), float(y)]])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_bf16_masks_match_fp32_on_real_photos():
    """bf16 inference on CPU gives masks within IoU 0.97 of fp32 on real photos.

    The shipped trained model, one click at each object's centre, the mask the predictor
    ranks first (the one a user is shown). Measured with the step-9,139 weights: the same
    mask ranked first on all four photos, IoU 0.977 / 0.985 / 0.988 / 0.995 (bf16 keeps 8
    bits of mantissa; the differences sit on weak edges). The step-7,852 weights stayed
    above 0.98."""
    photos = _grabcut_photos(4)
    fp32 = segany.load_default_model(warn=False)
    if not getattr(fp32, "is_trained", False):
        pytest.skip("no trained default weights shipped")
    bf16 = segany.load_default_model(warn=False).to(torch.bfloat16)
    p32, p16 = SamPredictor(fp32), SamPredictor(bf16)
    for name, image, gt in photos:
        p32.set_image(image)
        p16.set_image(image)
        kw = dict(point_coords=_centre(gt), point_labels=np.array([1]))
        m32, s32, _ = p32.predict(**kw)
        m16, s16, _ = p16.predict(**kw)
        assert np.abs(s16 - s32).max() < 0.01, name
        iou = _iou(m16[int(np.argmax(s16))], m32[int(np.argmax(s32))])
        assert iou >= 0.97, f"{name}: IoU(bf16, fp32) = {iou:.4f}"
