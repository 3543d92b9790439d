"""ONNX export: onnxruntime outputs match the PyTorch predictor within 1e-4 (float32)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from segany import SamPredictor, load_default_model  # noqa: E402
from segany.export.onnx import (  # noqa: E402
    DECODER_INPUTS,
    SamOnnxEncoder,
    decoder_feeds,
    export_decoder,
    export_encoder,
)

ATOL = 1e-4
# logits: 1e-4 near the mask threshold, plus 1e-5 of their size far from it (a sharper model's
# logits reach +-20, where float32 rounding through the decoder alone is ~1e-4; signs, i.e.
# masks, are decided near 0, where the tolerance stays 1e-4)
RTOL_LOGITS = 1e-5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_default_model()


@pytest.fixture(scope="module")
def predictor(model):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (321, 481, 3), dtype=np.uint8)
    p = SamPredictor(model)
    p.set_image(image)
    return p


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def decoder(model, tmp_path_factory):
    path = export_decoder(model, tmp_path_factory.mktemp("onnx") / "decoder.onnx")
    return _session(path)


def _run(sess, predictor, points=None, labels=None, box=None, mask_input=None):
    tp = None if points is None else predictor.transform.apply_coords(np.asarray(points), predictor.original_size)
    tb = None if box is None else predictor.transform.apply_boxes(np.asarray(box), predictor.original_size)
    feeds = decoder_feeds(predictor.features, tp, labels, predictor.original_size, box=tb, mask_input=mask_input)
    return sess.run(None, feeds)


def test_signature_matches_the_official_model(decoder):
    inputs = {i.name: i.shape for i in decoder.get_inputs()}
    assert list(inputs) == DECODER_INPUTS
    assert inputs["image_embeddings"] == [1, 256, 64, 64]
    assert inputs["point_coords"][0] == 1 and inputs["point_coords"][2] == 2
    assert isinstance(inputs["point_coords"][1], str)  # dynamic number of points
    assert inputs["mask_input"] == [1, 1, 256, 256]
    assert inputs["has_mask_input"] == [1] and inputs["orig_im_size"] == [2]
    assert [o.name for o in decoder.get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]


@pytest.mark.parametrize(
    "prompt",
    [
        {"points": [[240, 160]], "labels": [1]},
        {"points": [[100, 80], [300, 200], [50, 300]], "labels": [1, 0, 1]},
        {"points": [[200, 150]], "labels": [0], "box": [50, 40, 400, 300]},
        {"box": [10, 20, 470, 310]},
    ],
    ids=["one-click", "three-points", "point+box", "box"],
)
def test_decoder_matches_pytorch(decoder, predictor, prompt):
    masks, iou, low = _run(decoder, predictor, prompt.get("points"), prompt.get("labels"), prompt.get("box"))
    assert masks.shape == (1, 4, 321, 481)
    for multimask, sl in ((True, slice(1, None)), (False, slice(0, 1))):
        ref_masks, ref_iou, ref_low = predictor.predict(
            point_coords=None if "points" not in prompt else np.array(prompt["points"]),
            point_labels=None if "labels" not in prompt else np.array(prompt["labels"]),
            box=None if "box" not in prompt else np.array(prompt["box"]),
            multimask_output=multimask,
            return_logits=True,
        )
        np.testing.assert_allclose(masks[0, sl], ref_masks, atol=ATOL, rtol=RTOL_LOGITS)
        np.testing.assert_allclose(iou[0, sl], ref_iou, atol=ATOL, rtol=0)
        np.testing.assert_allclose(low[0, sl], ref_low, atol=ATOL, rtol=RTOL_LOGITS)


def test_mask_input_is_fed_back(decoder, predictor):
    _, _, low = _run(decoder, predictor, [[240, 160]], [1])
    prev = low[0, 1:2]
    masks, iou, low2 = _run(decoder, predictor, [[240, 160], [100, 100]], [1, 0], mask_input=prev)
    ref_masks, ref_iou, ref_low = predictor.predict(
        np.array([[240, 160], [100, 100]]), np.array([1, 0]), mask_input=prev, multimask_output=False, return_logits=True
    )
    np.testing.assert_allclose(masks[0, :1], ref_masks, atol=ATOL, rtol=RTOL_LOGITS)
    np.testing.assert_allclose(iou[0, :1], ref_iou, atol=ATOL, rtol=0)
    # has_mask_input=0 must ignore the mask completely
    _, _, low_nomask = _run(decoder, predictor, [[240, 160], [100, 100]], [1, 0])
    assert not np.allclose(low2, low_nomask)


def test_single_mask_stability_and_extra_metrics(model, predictor, tmp_path):
    path = export_decoder(
        model, tmp_path / "single.onnx", return_single_mask=True, use_stability_score=True, return_extra_metrics=True
    )
    sess = _session(path)
    names = [o.name for o in sess.get_outputs()]
    assert names == ["masks", "iou_predictions", "low_res_masks", "stability_scores", "areas"]
    # one click: the multimask output with the best score (here: the stability score)
    masks, score, low, stab, areas = _run(sess, predictor, [[240, 160]], [1])
    assert masks.shape == (1, 1, 321, 481)
    _, _, ref_low = predictor.predict(np.array([[240, 160]]), np.array([1]), multimask_output=True, return_logits=True)
    ref_stab = (ref_low > 1.0).sum((1, 2)) / np.maximum((ref_low > -1.0).sum((1, 2)), 1)
    best = int(np.argmax(ref_stab))
    np.testing.assert_allclose(low[0, 0], ref_low[best], atol=ATOL, rtol=RTOL_LOGITS)
    np.testing.assert_allclose(score[0, 0], ref_stab[best], atol=1e-3)
    np.testing.assert_allclose(stab[0, 0], ref_stab[best], atol=1e-3)
    assert areas[0, 0] == (masks[0, 0] > 0).sum()
    # several prompts: the single-output mask 0
    masks, _, low, _, _ = _run(sess, predictor, [[240, 160], [60, 60]], [1, 0])
    _, _, ref0 = predictor.predict(np.array([[240, 160], [60, 60]]), np.array([1, 0]), multimask_output=False, return_logits=True)
    np.testing.assert_allclose(low[0, 0], ref0[0], atol=ATOL, rtol=RTOL_LOGITS)


def test_quantized_decoder_is_smaller_and_close(model, predictor, decoder, tmp_path):
    full = export_decoder(model, tmp_path / "full.onnx")
    quant = export_decoder(model, tmp_path / "q.onnx", quantize=True)
    assert quant.stat().st_size < 0.5 * full.stat().st_size
    _, _, low_q = _run(_session(quant), predictor, [[240, 160]], [1])
    _, _, low_f = _run(decoder, predictor, [[240, 160]], [1])
    # uint8 weights: a small relative error, never a different mask altogether
    err = np.abs(low_q - low_f).mean() / (np.abs(low_f).mean() + 1e-12)
    assert err < 0.2, err


def test_encoder_export_matches_pytorch(model, tmp_path):
    size = model.img_size
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.standard_normal((1, 3, size, size)).astype(np.float32))
    sess = _session(export_encoder(model, tmp_path / "encoder.onnx"))
    assert [i.name for i in sess.get_inputs()] == ["image"]
    (emb,) = sess.run(None, {"image": image.numpy()})
    with torch.no_grad():
        ref = model.image_encoder(image).numpy()
    assert emb.shape == (1, 256, 64, 64)
    np.testing.assert_allclose(emb, ref, atol=ATOL, rtol=0)


@pytest.mark.slow  # ~20 s: two encoder runs in each runtime at sizes other than the traced one
def test_encoder_with_preprocess_takes_any_image_size(model, tmp_path):
    sess = _session(export_encoder(model, tmp_path / "encoder_pre.onnx", with_preprocess=True))
    wrapper = SamOnnxEncoder(model, with_preprocess=True).eval()
    rng = np.random.default_rng(2)
    for h, w in ((300, 200), (137, 455)):  # sizes other than the traced example
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        (emb,) = sess.run(None, {"input_image": image})
        with torch.no_grad():
            ref = wrapper(torch.from_numpy(image)).numpy()
        # ONNX Resize and torch's interpolate of 0..255 values differ by ~6e-5 after
        # normalisation (float32 rounding), which 6 encoder blocks amplify to ~2e-4
        np.testing.assert_allclose(emb, ref, atol=5e-4, rtol=0)
    # the graph's resize + normalise + pad is the model's own preprocessing geometry
    padded = wrapper.preprocess(torch.from_numpy(image))
    assert padded.shape == (1, 3, model.img_size, model.img_size)
    new_w = int(w * model.img_size / max(h, w) + 0.5)
    assert torch.all(padded[..., new_w:] == 0) and torch.any(padded[..., new_w - 1] != 0)


def test_export_command(tmp_path, capsys):
    from segany.cli import main

    out = tmp_path / "sub" / "dec.onnx"
    assert main(["export", "onnx", "--out", str(out), "--return-single-mask", "--check"]) == 0
    printed = capsys.readouterr().out
    assert "decoder:" in printed and "onnxruntime decoder latency" in printed
    sess = _session(out)
    assert sess.get_outputs()[1].shape[1] == 1  # one mask
    assert not list(out.parent.glob("*.tmp"))  # written via a temp file, then renamed
