"""The positional attention init: tied, scaled q/k projections make the decoder's first
image->token attention depend on the distance to the prompt, which default init does not."""

from __future__ import annotations

import math

import pytest
import torch

from segany.modeling.registry import build_model
from segany.train.init import apply_attention_init, cross_attentions
from segany.train.loop import ModelSection, build_sam_for_training
from segany.train.prompts import embed_prompt_tokens


def _attention_distance_corr(sam) -> float:
    """Correlation, over the 64x64 grid, between the layer-0 image->token attention to a
    point prompt's token and minus the distance to that point (mean over points)."""
    torch.manual_seed(1)
    pe = sam.prompt_encoder
    dec = sam.mask_decoder
    layer = dec.transformer.layers[0]
    grid = pe.image_embedding_size[0]
    side = pe.input_image_size[0]
    pts = torch.tensor([[[100.0, 80.0]], [[400.0, 300.0]], [[250.0, 450.0]], [[60.0, 420.0]]])
    toks = embed_prompt_tokens(pe, pts, torch.ones(4, 1, dtype=torch.long))
    out = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight]).unsqueeze(0).expand(4, -1, -1)
    tokens = torch.cat([out, toks], 1)
    keys = pe.no_mask_embed.weight.reshape(1, 1, -1).expand(4, grid * grid, -1) + 0.5 * torch.randn(4, grid * grid, 256)
    key_pe = pe.get_dense_pe().flatten(2).transpose(1, 2)
    with torch.no_grad():
        q = layer.norm1(layer.self_attn(q=tokens, k=tokens, v=tokens))
        q = layer.norm2(q + layer.cross_attn_token_to_image(q=q + tokens, k=keys + key_pe, v=keys))
        q = layer.norm3(q + layer.mlp(q))
        i2t = layer.cross_attn_image_to_token
        qq = i2t._separate_heads(i2t.q_proj(keys + key_pe))
        kk = i2t._separate_heads(i2t.k_proj(q + tokens))
        att = torch.softmax(qq @ kk.transpose(-1, -2) / math.sqrt(qq.shape[-1]), -1)[..., -1].mean(1)
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    cell = side / grid
    cx, cy = xs.flatten() * cell + cell / 2, ys.flatten() * cell + cell / 2
    corrs = []
    for i in range(4):
        d = ((cx - pts[i, 0, 0]) ** 2 + (cy - pts[i, 0, 1]) ** 2).sqrt()
        corrs.append(float(torch.corrcoef(torch.stack([att[i], -d]))[0, 1]))
    return sum(corrs) / len(corrs)


def _tiny():
    torch.manual_seed(0)
    return build_model("segany_tiny", encoder_depth=1)


def test_positional_init_ties_and_scales_q_k() -> None:
    sam = _tiny()
    before = [a.q_proj.weight.clone() for a in cross_attentions(sam)]
    apply_attention_init(sam, "positional", gain=2.5)
    for attn, q0 in zip(cross_attentions(sam), before, strict=True):
        assert torch.equal(attn.k_proj.weight, attn.q_proj.weight)
        assert torch.allclose(attn.q_proj.weight, 2.5 * q0)
    assert len(before) == 5  # 2 layers x 2 cross-attentions + the final token->image one


def test_positional_init_localises_attention_where_default_does_not() -> None:
    default = _attention_distance_corr(_tiny())
    positional = _attention_distance_corr(apply_attention_init(_tiny(), "positional", 3.0))
    assert abs(default) < 0.1
    assert positional > 0.15 and positional > default + 0.1


def test_trainer_applies_init_only_from_scratch(tmp_path) -> None:
    sam = build_sam_for_training(ModelSection(overrides={"encoder_depth": 1}, attention_init="positional"))
    assert all(torch.equal(a.k_proj.weight, a.q_proj.weight) for a in cross_attentions(sam))
    plain = build_sam_for_training(ModelSection(overrides={"encoder_depth": 1}))
    assert not any(torch.equal(a.k_proj.weight, a.q_proj.weight) for a in cross_attentions(plain))


def test_bad_init_names_are_errors() -> None:
    with pytest.raises(ValueError, match="attention_init"):
        apply_attention_init(_tiny(), "xavier")
    with pytest.raises(ValueError, match="gain"):
        apply_attention_init(_tiny(), "positional", gain=0.0)
