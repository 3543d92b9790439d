"""Checkpoint loading: official .pth unchanged, safetensors, HF layout, and clear failures."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch

from segany import CheckpointError, build_model, sam_model_registry, save_checkpoint
from segany.modeling.checkpoint import guess_model_type, read_checkpoint
from segany.modeling.convert_hf import convert_hf_state_dict, official_to_hf_key


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(0)
    model = build_model("vit_b", encoder_depth=2, encoder_global_attn_indexes=(1,))
    return model.state_dict()


def test_official_names_and_shapes_match_reference(twin_models):
    ours, ref, _ = twin_models
    o, r = ours.state_dict(), ref.state_dict()
    assert list(o) == list(r)
    assert all(o[k].shape == r[k].shape for k in o)


def test_registry_has_official_and_segany_entries():
    for key in ("default", "vit_h", "vit_l", "vit_b", "segany_tiny"):
        assert callable(sam_model_registry[key])


def test_pth_roundtrip_through_registry(tmp_path, twin_models):
    ours, _, state = twin_models
    path = tmp_path / "sam_vit_b_small.pth"
    torch.save(state, path)
    model = build_model("vit_b", path, encoder_depth=2, encoder_global_attn_indexes=(1,))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_full_size_official_layout_loads_via_registry(tmp_path):
    """A full vit_b state dict saved like the official files loads with the official call."""
    torch.manual_seed(0)
    state = build_model("vit_b").state_dict()
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(state, path)
    model = sam_model_registry["vit_b"](checkpoint=str(path))
    assert torch.equal(model.image_encoder.pos_embed, state["image_encoder.pos_embed"])


def test_safetensors_roundtrip_with_config(tmp_path):
    torch.manual_seed(1)
    model = build_model("segany_tiny")
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path)
    loaded = build_model("auto", path)
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_wrong_model_type_names_the_type_and_key(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(build_model("segany_tiny").state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        build_model("vit_b", path)
    msg = str(info.value)
    assert "looks like segany_tiny" in msg
    assert "image_encoder." in msg and "first mismatch" in msg


def test_truncated_file_is_a_clear_error(tmp_path, tiny_state):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(tiny_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_checkpoint(path)


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError):
        read_checkpoint(junk)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")


class _Evil:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pwned')",))


def test_pickled_code_is_refused(tmp_path):
    """weights_only loading: a checkpoint carrying code fails cleanly and runs nothing."""
    path = tmp_path / "evil.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1), "x": _Evil()}, path, pickle_module=pickle)
    assert zipfile.is_zipfile(path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_checkpoint(path)


def test_nan_weights_are_rejected(tmp_path, tiny_state):
    bad = dict(tiny_state)
    bad["mask_decoder.iou_token.weight"] = torch.full_like(bad["mask_decoder.iou_token.weight"], float("nan"))
    path = tmp_path / "nan.pth"
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match="non-finite"):
        build_model("vit_b", path, encoder_depth=2, encoder_global_attn_indexes=(1,))


def test_training_checkpoint_wrapper_is_unwrapped(tmp_path, tiny_state):
    path = tmp_path / "train.pt"
    torch.save({"model": tiny_state, "step": 10}, path)
    state, _ = read_checkpoint(path)
    assert set(state) == set(tiny_state)


def test_guess_model_type():
    torch.manual_seed(0)
    assert guess_model_type(build_model("segany_tiny").state_dict()) == "segany_tiny"
    assert "not a SAM" in guess_model_type({"foo": torch.zeros(1)})


def test_hf_layout_converts(tmp_path, tiny_state):
    """A synthetic state dict in the transformers SamModel layout (facebook/sam-vit-*)."""
    hf = {official_to_hf_key(k): v for k, v in tiny_state.items()}
    hf["shared_image_embedding.positional_embedding"] = hf["prompt_encoder.shared_embedding.positional_embedding"].clone()
    # spot-check the HF names we expect to see in facebook/sam-vit-base
    for name in (
        "vision_encoder.layers.0.layer_norm1.weight",
        "vision_encoder.patch_embed.projection.weight",
        "vision_encoder.neck.conv1.weight",
        "mask_decoder.upscale_conv1.weight",
        "mask_decoder.iou_prediction_head.proj_in.weight",
        "mask_decoder.output_hypernetworks_mlps.0.proj_out.weight",
        "mask_decoder.transformer.layers.0.layer_norm1.weight",
        "mask_decoder.transformer.layer_norm_final_attn.weight",
        "prompt_encoder.point_embed.0.weight",
        "prompt_encoder.mask_embed.conv3.weight",
    ):
        assert name in hf, name
    back = convert_hf_state_dict(hf)
    assert set(back) == set(tiny_state)
    assert all(torch.equal(back[k], tiny_state[k]) for k in back)
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in hf.items()}, str(path))
    model = build_model("vit_b", path, encoder_depth=2, encoder_global_attn_indexes=(1,))
    assert torch.equal(model.mask_decoder.iou_token.weight, tiny_state["mask_decoder.iou_token.weight"])


def test_float16_safetensors_loads_back_as_float32(tmp_path):
    """Half-precision shipping (how the default model is stored): half the bytes, fp32 model."""
    torch.manual_seed(0)
    model = build_model("segany_tiny")
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save_checkpoint(model, full)
    save_checkpoint(model, half, dtype=torch.float16)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    loaded = build_model("auto", half)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype, k
        if a.is_floating_point():
            assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), k


def test_export_safetensors_command(tmp_path, capsys):
    from segany.cli import main

    src = tmp_path / "src.safetensors"
    torch.manual_seed(0)
    save_checkpoint(build_model("segany_tiny"), src)
    out = tmp_path / "out" / "half.safetensors"
    assert main(["export", "safetensors", "--checkpoint", str(src), "--out", str(out), "--dtype", "float16", "--note", "x"]) == 0
    assert out.is_file() and "float16" in capsys.readouterr().out
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert f.metadata()["note"] == "x" and "segany_config" in f.metadata()
