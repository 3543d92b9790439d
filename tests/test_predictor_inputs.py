"""Bad input to the predictor gets a clear error (or a documented conversion)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segany import SamPredictor
from segany.image_io import ImageError, load_image, to_rgb_uint8


def test_predict_before_set_image(small_model):
    p = SamPredictor(small_model)
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))
    with pytest.raises(RuntimeError, match="set_image"):
        p.get_image_embedding()


def test_grayscale_rgba_16bit_are_converted(small_model):
    p = SamPredictor(small_model)
    rgb = np.random.RandomState(0).randint(0, 255, (40, 60, 3), dtype=np.uint8)
    p.set_image(rgb)
    ref = p.features.clone()
    rgba = np.concatenate([rgb, np.full((40, 60, 1), 7, np.uint8)], axis=2)
    p.set_image(rgba)
    assert torch.equal(p.features, ref)  # alpha dropped
    with pytest.warns(UserWarning, match="16-bit"):
        p.set_image(rgb.astype(np.uint16) * 257)
    assert torch.equal(p.features, ref)  # exact 8 -> 16 -> 8 bit round trip
    gray = rgb[..., 0]
    p.set_image(gray)
    assert p.original_size == (40, 60)
    p.set_image(gray[..., None])
    assert p.is_image_set


def test_image_conversion_rules():
    assert to_rgb_uint8(np.ones((2, 2), bool)).max() == 255
    assert to_rgb_uint8(np.full((2, 2, 3), 0.5)).max() == 128
    with pytest.raises(ImageError, match="NaN"):
        to_rgb_uint8(np.full((2, 2, 3), np.nan))
    with pytest.raises(ImageError, match="expected"):
        to_rgb_uint8(np.full((2, 2, 3), 300.0))
    with pytest.raises(ImageError, match="shape"):
        to_rgb_uint8(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ImageError, match="shape"):
        to_rgb_uint8(np.zeros((2, 2, 3, 1), np.uint8))
    with pytest.raises(ImageError, match="numpy"):
        to_rgb_uint8([[1, 2]])  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="0..255"):
        to_rgb_uint8(np.full((2, 2), 1000, np.int32))
    with pytest.raises(ImageError, match="dtype"):
        to_rgb_uint8(np.zeros((2, 2), np.complex64))


def test_empty_and_degenerate_images(small_model):
    p = SamPredictor(small_model)
    with pytest.raises(ImageError, match="empty"):
        p.set_image(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="elongated"):
        p.set_image(np.zeros((1, 5000, 3), np.uint8))
    # a 1-pixel image is a valid (if silly) image: it gets a 1x1 mask
    p.set_image(np.full((1, 1, 3), 200, np.uint8))
    masks, scores, low = p.predict(point_coords=np.array([[0.5, 0.5]]), point_labels=np.array([1]))
    assert masks.shape == (3, 1, 1) and scores.shape == (3,) and low.shape == (3, 256, 256)


def test_bad_image_format_and_files(small_model, tmp_path):
    p = SamPredictor(small_model)
    with pytest.raises(ValueError, match="image_format"):
        p.set_image(np.zeros((4, 4, 3), np.uint8), image_format="HSV")
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(corrupt)
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("L", (300, 200)).save(big)
    with pytest.raises(ImageError, match="exceeds"):
        load_image(big, max_pixels=1000)
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(np.full((5, 6), 65535, np.uint16)).save(sixteen)
    with pytest.warns(UserWarning):
        assert load_image(sixteen).max() == 255


def test_set_torch_image_checks_shape(small_model):
    p = SamPredictor(small_model)
    with pytest.raises(ValueError, match="BCHW with long side 1024"):
        p.set_torch_image(torch.zeros(1, 3, 100, 100), (100, 100))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(point_coords=np.array([[10.0, 10.0]])), "point_labels must be supplied"),
        (dict(point_labels=np.array([1])), "without point_coords"),
        (dict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([2])), "must be 1"),
        (dict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([1, 0])), "does not match"),
        (dict(point_coords=np.array([[np.nan, 10.0]]), point_labels=np.array([1])), "NaN"),
        (dict(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0)), "empty"),
        (dict(point_coords=np.array([1.0, 2.0, 3.0]), point_labels=np.array([1])), "Kx2"),
        (dict(point_coords=np.array([["a", "b"]]), point_labels=np.array([1])), "numeric"),
        (dict(box=np.array([50.0, 10.0, 20.0, 40.0])), "x1 < x0"),
        (dict(box=np.array([10.0, 50.0, 20.0, 40.0])), "x1 < x0"),
        (dict(box=np.array([10.0, 10.0, 20.0])), "XYXY"),
        (dict(box=np.array([np.inf, 10.0, 20.0, 40.0])), "NaN or infinite"),
        (dict(mask_input=np.zeros((256, 256))), "mask_input must be 1x256x256"),
        (dict(mask_input=np.zeros((1, 64, 64))), "mask_input must be 1x256x256"),
        (dict(box=np.zeros((2, 4)) + [0, 0, 5, 5], point_coords=np.zeros((3, 1, 2)), point_labels=np.ones((3, 1))),
         "disagree"),
        (dict(box=np.array([10.0, 10.0, 20.0, 40.0]), multimask_output="yes"), "bool"),
        (dict(text_embedding=np.zeros(768)), "no text-prompt weights"),
    ],
)
def test_bad_prompts(small_predictor, kwargs, message):
    """What the official predictor cannot handle either is a clear ValueError. (Prompts outside
    the image and no prompt at all are accepted as the official accepts them: see
    tests/test_parity_official.py.)"""
    with pytest.raises(ValueError, match=message):
        small_predictor.predict(**kwargs)


def test_ignored_points_may_be_anywhere(small_predictor):
    """Label -1 marks padding; its coordinates are not checked (official semantics)."""
    masks, _, _ = small_predictor.predict(
        point_coords=np.array([[10.0, 10.0], [0.0, 0.0]]), point_labels=np.array([1, -1])
    )
    assert masks.shape == (3, 120, 160)
