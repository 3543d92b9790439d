"""The per-click ONNX decoder (cache graph + click graph) against the PyTorch predictor and
the official-contract graph, float32 within 1e-4."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from segany import SamPredictor, load_default_model  # noqa: E402
from segany.export.onnx import decoder_feeds, export_decoder  # noqa: E402
from segany.export.onnx_click import (  # noqa: E402
    CLICK_INPUTS,
    click_feeds,
    export_click_decoder,
    export_decoder_cache,
)
from segany.modeling.decoder_cache import IMAGE_FIELDS, DecoderImageCache  # noqa: E402

ATOL = 1e-4
# logits: 1e-4 near the mask threshold, plus 1e-5 of their size far from it (a sharper model's
# logits reach +-20, where float32 rounding through the decoder alone is ~1e-4; signs, i.e.
# masks, are decided near 0, where the tolerance stays 1e-4)
RTOL_LOGITS = 1e-5
PROMPTS = [
    {"points": [[240, 160]], "labels": [1]},
    {"points": [[100, 80], [300, 200], [50, 300]], "labels": [1, 0, 1]},
    {"points": [[200, 150]], "labels": [0], "box": [50, 40, 400, 300]},
    {"box": [10, 20, 470, 310]},
]
IDS = ["one-click", "three-points", "point+box", "box"]


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_default_model()


@pytest.fixture(scope="module")
def predictor(model):
    image = np.random.default_rng(0).integers(0, 256, (321, 481, 3), dtype=np.uint8)
    p = SamPredictor(model)
    p.set_image(image)
    return p


@pytest.fixture(scope="module")
def graphs(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_click")
    return {
        "cache": _session(export_decoder_cache(model, folder / "decoder_cache.onnx")),
        "click": _session(export_click_decoder(model, folder / "decoder_click.onnx")),
        "full": _session(export_decoder(model, folder / "decoder.onnx")),
    }


@pytest.fixture(scope="module")
def cache(graphs, predictor):
    return dict(zip(IMAGE_FIELDS, graphs["cache"].run(None, {"image_embeddings": predictor.features.numpy()})))


def _frame(predictor, prompt):
    tp = None if "points" not in prompt else predictor.transform.apply_coords(np.asarray(prompt["points"]), predictor.original_size)
    tb = None if "box" not in prompt else predictor.transform.apply_boxes(np.asarray(prompt["box"]), predictor.original_size)
    return tp, prompt.get("labels"), tb


def test_signatures(graphs):
    assert [i.name for i in graphs["cache"].get_inputs()] == ["image_embeddings"]
    assert [o.name for o in graphs["cache"].get_outputs()] == list(IMAGE_FIELDS)
    click = {i.name: i.shape for i in graphs["click"].get_inputs()}
    assert list(click) == CLICK_INPUTS
    assert click["keys"] == [1, 4096, 256] and click["up1_keys"] == [1, 4096, 256]
    assert click["t2i_k"] == [1, 8, 4096, 16] and click["i2t_q_t"] == [1, 128, 4096]
    assert isinstance(click["point_coords"][1], str)  # any number of points
    assert click["mask_input"] == [1, 1, 256, 256] and click["has_mask_input"] == [1]
    assert [o.name for o in graphs["click"].get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]


def test_cache_graph_matches_the_predictors_cache(cache, predictor):
    """The cache graph computes what the predictor keeps for the image."""
    with torch.no_grad():
        ref = DecoderImageCache.build(
            predictor.model.mask_decoder,
            predictor.features + predictor.model.prompt_encoder.no_mask_dense(1, (64, 64)),
            predictor.model.prompt_encoder.get_dense_pe(),
        )
    for name in IMAGE_FIELDS:
        np.testing.assert_allclose(cache[name], getattr(ref, name).numpy(), atol=ATOL, rtol=0, err_msg=name)


@pytest.mark.parametrize("prompt", PROMPTS, ids=IDS)
def test_click_graph_matches_pytorch_and_the_full_graph(graphs, cache, predictor, prompt):
    tp, labels, tb = _frame(predictor, prompt)
    masks, iou, low = graphs["click"].run(None, click_feeds(cache, tp, labels, predictor.original_size, box=tb))
    full = graphs["full"].run(None, decoder_feeds(predictor.features, tp, labels, predictor.original_size, box=tb))
    assert masks.shape == (1, 4, 321, 481)
    for ours, official in zip((masks, iou, low), full):
        np.testing.assert_allclose(ours, official, atol=ATOL, rtol=RTOL_LOGITS)
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


def test_mask_prompt_matches_pytorch_and_the_full_graph(graphs, cache, predictor):
    """A fed-back mask (the rank-16 cache update) gives what recomputing from the prompted
    image tokens gives: the official graph and the predictor."""
    _, _, low = predictor.predict(np.array([[240, 160]]), np.array([1]), multimask_output=True, return_logits=True)
    previous = low[1:2]
    points, labels = np.array([[240, 160], [100, 100]]), np.array([1, 0])
    tp = predictor.transform.apply_coords(points, predictor.original_size)
    masks, iou, low2 = graphs["click"].run(
        None, click_feeds(cache, tp, labels, predictor.original_size, mask_input=previous)
    )
    full = graphs["full"].run(
        None, decoder_feeds(predictor.features, tp, labels, predictor.original_size, mask_input=previous)
    )
    for ours, official in zip((masks, iou, low2), full):
        np.testing.assert_allclose(ours, official, atol=ATOL, rtol=RTOL_LOGITS)
    ref_masks, ref_iou, ref_low = predictor.predict(points, labels, mask_input=previous, multimask_output=False,
                                                    return_logits=True)
    np.testing.assert_allclose(masks[0, :1], ref_masks, atol=ATOL, rtol=RTOL_LOGITS)
    np.testing.assert_allclose(iou[0, :1], ref_iou, atol=ATOL, rtol=0)
    # has_mask_input 0 ignores whatever mask_input holds
    feeds = click_feeds(cache, tp, labels, predictor.original_size, mask_input=previous)
    feeds["has_mask_input"] = np.zeros(1, np.float32)
    ignored = graphs["click"].run(None, feeds)
    plain = graphs["click"].run(None, click_feeds(cache, tp, labels, predictor.original_size))
    for a, b in zip(ignored, plain):
        np.testing.assert_array_equal(a, b)


def test_single_mask_and_extra_metrics(model, cache, predictor, tmp_path):
    """The output options behave as the official-contract graph's (same postprocessing)."""
    options = {"return_single_mask": True, "use_stability_score": True, "return_extra_metrics": True}
    click = _session(export_click_decoder(model, tmp_path / "click.onnx", **options))
    full = _session(export_decoder(model, tmp_path / "full.onnx", **options))
    assert [o.name for o in click.get_outputs()] == [o.name for o in full.get_outputs()]
    for prompt in PROMPTS[:2]:  # one click (best multimask output) and several (mask 0)
        tp, labels, tb = _frame(predictor, prompt)
        ours = click.run(None, click_feeds(cache, tp, labels, predictor.original_size, box=tb))
        official = full.run(None, decoder_feeds(predictor.features, tp, labels, predictor.original_size, box=tb))
        assert ours[0].shape == (1, 1, 321, 481)
        for a, b in zip(ours, official):
            np.testing.assert_allclose(a, b, atol=1e-3, rtol=0)  # areas/stability: counts of pixels


def test_cache_of_the_wrong_grid_is_refused(model):
    decoder, pe = model.mask_decoder, model.prompt_encoder
    small = torch.zeros(1, 1024, 256)
    with pytest.raises(ValueError, match="1024 tokens"):
        DecoderImageCache.from_image_tensors(
            decoder, pe.get_dense_pe(), keys=small, t2i_k=small, t2i_v=small, i2t_q_t=small, up1_keys=small
        )


def test_export_command_writes_the_pair(tmp_path, capsys):
    from segany.cli import main

    click, cache = tmp_path / "click.onnx", tmp_path / "cache.onnx"
    args = ["export", "onnx", "--out", str(tmp_path / "dec.onnx"), "--return-single-mask"]
    assert main([*args, "--click-out", str(click), "--cache-out", str(cache)]) == 0
    assert "per-click decoder:" in capsys.readouterr().out
    assert [o.name for o in _session(cache).get_outputs()] == list(IMAGE_FIELDS)
    assert _session(click).get_outputs()[1].shape[1] == 1  # the options apply to the click graph too
    assert main([*args, "--click-out", str(click)]) != 0  # one without the other: refused
    assert "go together" in capsys.readouterr().err
