"""Hugging Face checkpoints, with ``transformers`` itself as the oracle.

A ``transformers.SamModel`` with random weights is saved with ``save_pretrained`` (the way
``facebook/sam-vit-*`` files were made) and loaded into segany from the resulting
``model.safetensors``. Real files hold the prompt encoder's Fourier matrix only as
``shared_image_embedding.positional_embedding``: ``prompt_encoder.shared_embedding.*`` is a
tied alias that transformers drops on saving, and the converter used to require it. Masks,
IoU predictions and image embeddings are then compared with HF's own forward.

The vision tower is small (64-d, 2 blocks) but one segany's builder expresses: 512 px at
patch 8, so the 64x64 embedding grid, prompt encoder and mask decoder are SAM's.
"""

from __future__ import annotations

import pytest
import torch

from segany import SamPredictor, build_model
from segany.modeling.checkpoint import read_checkpoint

transformers = pytest.importorskip("transformers")

TOL = 1e-4
IMG, PATCH = 512, 8
PIXEL_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
PIXEL_STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


def _small_hf_config():
    vision = transformers.SamVisionConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        global_attn_indexes=[1],
        window_size=8,
        image_size=IMG,
        patch_size=PATCH,
        mlp_dim=256,  # mlp_ratio 4, the only ratio segany infers from a state dict
        output_channels=256,
    )
    prompt = transformers.SamPromptEncoderConfig(image_size=IMG, patch_size=PATCH, image_embedding_size=IMG // PATCH)
    # HF's port builds the two-way transformer's LayerNorms with eps=layer_norm_eps (1e-6 by
    # default) where the official model, whose weights these are, uses nn.LayerNorm's 1e-5;
    # with random weights that alone moves logits by ~3e-4. segany follows the official
    # model, so the oracle is configured to compute the official function.
    decoder = transformers.SamMaskDecoderConfig(layer_norm_eps=1e-5)
    return transformers.SamConfig(
        vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(), mask_decoder_config=decoder.to_dict()
    )


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Every weight random (HF initialises some to zeros/ones, e.g. the relative positions),
    at scales that keep activations sane; tied tensors stay tied."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if not t.is_floating_point():
                continue
            if "norm" in name and name.endswith("weight"):
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
            elif "positional_embedding" in name:
                t.copy_(torch.randn(t.shape, generator=g))
            elif t.ndim >= 2 and "rel_pos" not in name and "pos_embed" not in name:
                t.copy_(torch.randn(t.shape, generator=g) / max(t[0].numel(), 1) ** 0.5)
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))


@pytest.fixture(scope="module")
def hf_and_segany(tmp_path_factory):
    """(HF SamModel, segany Sam loaded from HF's saved file, path of that file)."""
    torch.manual_seed(0)
    hf = transformers.SamModel(_small_hf_config()).eval()
    _randomise(hf)
    out = tmp_path_factory.mktemp("hf_sam")
    hf.save_pretrained(out)
    path = out / "model.safetensors"
    assert path.is_file()
    ours = build_model("auto", path)
    return hf, ours, path


def test_saved_file_lacks_the_tied_alias(hf_and_segany):
    """The premise: what save_pretrained writes has only the shared_image_embedding name."""
    from safetensors import safe_open

    _, _, path = hf_and_segany
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert "shared_image_embedding.positional_embedding" in keys
    assert "prompt_encoder.shared_embedding.positional_embedding" not in keys


def test_converter_accepts_either_name(hf_and_segany):
    hf, ours, path = hf_and_segany
    gaussian = hf.shared_image_embedding.positional_embedding
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    from segany.modeling.convert_hf import convert_hf_state_dict

    assert "prompt_encoder.shared_embedding.positional_embedding" in state  # HF's in-memory form
    key = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    both = convert_hf_state_dict(state)
    only_alias = convert_hf_state_dict(
        {k: v for k, v in state.items() if k != "shared_image_embedding.positional_embedding"}
    )
    only_shared = convert_hf_state_dict(
        {k: v for k, v in state.items() if k != "prompt_encoder.shared_embedding.positional_embedding"}
    )
    for converted in (both, only_alias, only_shared):
        torch.testing.assert_close(converted[key], gaussian, rtol=0, atol=0)
    loaded, _ = read_checkpoint(path)
    assert set(loaded) == set(ours.state_dict())
    torch.testing.assert_close(ours.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix, gaussian,
                               rtol=0, atol=0)


def _input_image(h: int = IMG, w: int = 384) -> torch.Tensor:
    """A 1x3xHxW image already in the input frame (long side 512), values 0..255."""
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (1, 3, h, w), generator=g, dtype=torch.uint8)


def _hf_pixel_values(image: torch.Tensor) -> torch.Tensor:
    """HF's model input: normalised and zero-padded to the square, computed here directly."""
    x = (image.float() - PIXEL_MEAN) / PIXEL_STD
    return torch.nn.functional.pad(x, (0, IMG - x.shape[-1], 0, IMG - x.shape[-2]))


@pytest.fixture(scope="module")
def predictor_and_hf_embedding(hf_and_segany):
    hf, ours, _ = hf_and_segany
    image = _input_image()
    p = SamPredictor(ours)
    p.set_torch_image(image, (400, 300))
    with torch.no_grad():
        hf_embedding = hf.get_image_embeddings(_hf_pixel_values(image))
    return p, hf_embedding


def test_image_embedding_matches(predictor_and_hf_embedding):
    p, hf_embedding = predictor_and_hf_embedding
    assert p.features.shape == hf_embedding.shape == (1, 256, 64, 64)
    assert (p.features - hf_embedding).abs().max().item() <= TOL


def _hf_post_process(low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]):
    """HF's own mask post-processing (SamImageProcessor.post_process_masks), logits kept."""
    try:
        processor = transformers.SamImageProcessor()
    except Exception as exc:  # an image-processor backend transformers could not load
        pytest.skip(f"SamImageProcessor unavailable: {exc}")
    return processor.post_process_masks(
        [low_res], [original_size], [input_size], binarize=False, pad_size={"height": IMG, "width": IMG}
    )[0]


PROMPTS = {
    "one_point": dict(points=[[[250.0, 200.0]]], labels=[[1]]),
    "fg_bg_points": dict(points=[[[250.0, 200.0], [60.0, 420.0], [300.0, 30.0]]], labels=[[1, 0, 1]]),
    "box": dict(boxes=[[40.0, 60.0, 330.0, 470.0]]),
    "box_and_point": dict(points=[[[250.0, 200.0]]], labels=[[1]], boxes=[[40.0, 60.0, 330.0, 470.0]]),
}


@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("multimask", [True, False])
def test_masks_and_iou_match_hf_forward(hf_and_segany, predictor_and_hf_embedding, prompt, multimask):
    hf, _, _ = hf_and_segany
    p, hf_embedding = predictor_and_hf_embedding
    spec = PROMPTS[prompt]
    hf_kw: dict[str, torch.Tensor] = {}
    coords = labels = boxes = None
    if "points" in spec:
        coords = torch.tensor(spec["points"])  # 1xNx2, input frame
        labels = torch.tensor(spec["labels"])
        hf_kw["input_points"] = coords[:, None]  # batch x point_batch x N x 2
        hf_kw["input_labels"] = labels[:, None]
    if "boxes" in spec:
        boxes = torch.tensor(spec["boxes"])  # 1x4
        hf_kw["input_boxes"] = boxes[:, None]  # batch x boxes x 4
    with torch.no_grad():
        hf_out = hf(image_embeddings=hf_embedding, multimask_output=multimask, **hf_kw)
    hf_low = hf_out.pred_masks[:, 0]  # 1 x C x 256 x 256
    hf_iou = hf_out.iou_scores[:, 0]
    logits, iou, low = p.predict_torch(coords, labels, boxes=boxes, multimask_output=multimask, return_logits=True)
    assert low.shape == hf_low.shape and iou.shape == hf_iou.shape
    assert (low - hf_low).abs().max().item() <= TOL
    assert (iou - hf_iou).abs().max().item() <= TOL
    hf_logits = _hf_post_process(hf_low, p.input_size, p.original_size)
    assert logits.shape == hf_logits.shape == (1, iou.shape[1], 400, 300)
    assert (logits - hf_logits).abs().max().item() <= TOL
