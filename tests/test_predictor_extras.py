"""segany's additions to the predictor: batched prompts, several images, embedding files,
text prompts. Each batched form must equal the one-at-a-time official form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segany import SamPredictor, build_model


def test_n_boxes_in_one_call_equal_separate_calls(small_predictor):
    boxes = np.array([[10, 10, 80, 90], [50, 20, 150, 110], [0, 0, 160, 120]], dtype=float)
    masks, scores, low = small_predictor.predict(box=boxes, multimask_output=False, return_logits=True)
    assert masks.shape == (3, 1, 120, 160) and scores.shape == (3, 1) and low.shape == (3, 1, 256, 256)
    for i, b in enumerate(boxes):
        m, s, lo = small_predictor.predict(box=b, multimask_output=False, return_logits=True)
        assert np.abs(m - masks[i]).max() < 1e-4
        assert np.abs(s - scores[i]).max() < 1e-5
        assert np.abs(lo - low[i]).max() < 1e-4


def test_batch_of_point_sets(small_predictor):
    coords = np.array([[[20, 30], [100, 60]], [[70, 70], [10, 100]]], dtype=float)
    labels = np.array([[1, 0], [1, 1]])
    masks, scores, _ = small_predictor.predict(point_coords=coords, point_labels=labels)
    assert masks.shape == (2, 3, 120, 160)
    for i in range(2):
        m, s, _ = small_predictor.predict(point_coords=coords[i], point_labels=labels[i])
        assert (m == masks[i]).mean() > 0.9999
        assert np.abs(s - scores[i]).max() < 1e-5


def test_boxes_share_points_and_mask_inputs(small_predictor):
    boxes = np.array([[10, 10, 80, 90], [50, 20, 150, 110]], dtype=float)
    _, _, low = small_predictor.predict(box=boxes, multimask_output=False)
    masks, _, _ = small_predictor.predict(
        box=boxes, point_coords=np.array([[40.0, 50.0]]), point_labels=np.array([1]), mask_input=low,
        multimask_output=False,
    )
    assert masks.shape == (2, 1, 120, 160)


def test_several_images_each_with_prompts(small_model):
    rng = np.random.RandomState(2)
    images = [rng.randint(0, 255, (90, 140, 3), dtype=np.uint8), rng.randint(0, 255, (130, 70, 3), dtype=np.uint8)]
    prompts = [
        {"point_coords": np.array([[30.0, 40.0]]), "point_labels": np.array([1])},
        {"box": np.array([[5, 5, 60, 100], [10, 20, 30, 40]], dtype=float)},
    ]
    p = SamPredictor(small_model)
    p.set_images(images)
    batch = p.predict_batch(prompts, return_logits=True)
    single = SamPredictor(small_model)
    for image, prompt, (m, s, lo) in zip(images, prompts, batch):
        single.set_image(image)
        m1, s1, lo1 = single.predict(**prompt, return_logits=True)
        assert m.shape == m1.shape
        assert np.abs(m - m1).max() < 1e-3
        assert np.abs(s - s1).max() < 1e-4
        assert np.abs(lo - lo1).max() < 1e-4
    with pytest.raises(ValueError, match="2 images"):
        p.predict_batch(prompts[:1])
    with pytest.raises(ValueError, match="unknown keys"):
        p.predict_batch([{"boxes": 1}, {}])


def test_embedding_file_roundtrip(small_predictor, small_model, tmp_path):
    path = tmp_path / "emb.safetensors"
    small_predictor.save_embedding(path)
    assert path.is_file() and not (tmp_path / "emb.safetensors.tmp").exists()
    kw = dict(point_coords=np.array([[60.0, 40.0]]), point_labels=np.array([1]), return_logits=True)
    expected = small_predictor.predict(**kw)
    fresh = SamPredictor(small_model)
    fresh.load_embedding(path)
    assert fresh.original_size == small_predictor.original_size
    assert fresh.input_size == small_predictor.input_size
    for a, b in zip(fresh.predict(**kw), expected):
        assert np.array_equal(a, b)
    torch.manual_seed(99)
    other = SamPredictor(build_model("vit_b", encoder_depth=1, encoder_global_attn_indexes=(0,)))
    with pytest.raises(ValueError, match="different image encoder"):
        other.load_embedding(path)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read"):
        fresh.load_embedding(tmp_path / "junk.safetensors")


def test_text_prompt_with_text_head():
    torch.manual_seed(0)
    model = build_model("vit_b", encoder_depth=1, encoder_global_attn_indexes=(0,), text_embed_dim=768)
    p = SamPredictor(model)
    p.set_image(np.random.RandomState(0).randint(0, 255, (64, 64, 3), dtype=np.uint8))
    text = np.random.RandomState(1).randn(768)
    text /= np.linalg.norm(text)
    masks, scores, low = p.predict(text_embedding=text)
    assert masks.shape == (3, 64, 64)
    with_point = p.predict(text_embedding=text, point_coords=np.array([[5.0, 5.0]]), point_labels=np.array([1]))
    assert not np.allclose(with_point[1], scores)
    batched = p.predict(text_embedding=np.stack([text, -text]))
    assert batched[0].shape == (2, 3, 64, 64)
    assert np.allclose(batched[1][0], scores, atol=1e-5)
    with pytest.raises(ValueError, match="text_embedding must be"):
        p.predict(text_embedding=np.zeros((1, 1, 768)))


def test_reset_and_properties(small_model):
    p = SamPredictor(small_model)
    p.set_image(np.zeros((10, 20, 3), np.uint8))
    assert p.is_image_set and p.original_size == (10, 20) and p.input_size == (512, 1024)
    assert p.get_image_embedding().shape == (1, 256, 64, 64)
    p.reset_image()
    assert not p.is_image_set and p.features is None
