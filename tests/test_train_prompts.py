"""Prompt simulation of appendix A: first prompts, error-region points, box noise, the
11-iteration schedule and the mask fed back from the previous iteration."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from segany.modeling import Sam
from segany.modeling.image_encoder import ImageEncoderViT
from segany.modeling.mask_decoder import MaskDecoder
from segany.modeling.prompt_encoder import PromptEncoder
from segany.modeling.transformer import TwoWayTransformer
from segany.train.prompts import (
    BACKGROUND,
    BOX_BOTTOM_RIGHT,
    BOX_TOP_LEFT,
    FOREGROUND,
    PAD,
    PromptConfig,
    embed_prompt_tokens,
    error_points,
    first_prompts,
    iteration_schedule,
    mask_boxes,
    noisy_boxes,
    sample_points,
    simulate_episode,
    warmup_clicks,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blobs(m: int, side: int = 64, seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    out = torch.zeros(m, side, side, dtype=torch.bool)
    for k in range(m):
        y0, x0 = torch.randint(0, side // 2, (2,), generator=g).tolist()
        hh, ww = torch.randint(3, side // 2, (2,), generator=g).tolist()
        out[k, y0 : y0 + hh, x0 : x0 + ww] = True
    return out


def narrow_sam(seed: int = 0) -> Sam:
    """A Sam with every width shrunk (64 px input, 16x16x32 embedding, 64x64 low-res
    masks): the training code is shape-generic, and this runs 100x faster than the real one."""
    torch.manual_seed(seed)
    encoder = ImageEncoderViT(
        img_size=64,
        patch_size=4,
        embed_dim=32,
        depth=1,
        num_heads=1,
        window_size=8,
        global_attn_indexes=(0,),
        out_chans=32,
        use_rel_pos=True,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )
    prompt = PromptEncoder(embed_dim=32, image_embedding_size=(16, 16), input_image_size=(64, 64), mask_in_chans=8)
    decoder = MaskDecoder(
        transformer_dim=32,
        transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2),
        num_multimask_outputs=3,
        iou_head_depth=2,
        iou_head_hidden_dim=32,
    )
    return Sam(encoder, prompt, decoder)


@pytest.fixture(scope="module")
def tiny_sam():
    return narrow_sam()


def test_sample_points_inside_region():
    masks = _blobs(50)
    masks[3] = False
    xy, valid = sample_points(masks, _gen())
    assert valid.sum() == 49 and not valid[3]
    for k in range(50):
        if valid[k]:
            assert masks[k, int(xy[k, 1]), int(xy[k, 0])]


def test_sample_points_uniform():
    region = torch.zeros(1000, 4, 4, dtype=torch.bool)
    region[:, 0, 0] = region[:, 3, 3] = True
    xy, _ = sample_points(region, _gen())
    share = (xy[:, 0] == 0).float().mean()
    assert 0.43 < share < 0.57


def test_error_points_labels_match_error_type():
    gt = _blobs(200, seed=1)
    pred = _blobs(200, seed=2)
    pred[0] = gt[0]  # exact prediction: no error region
    xy, labels = error_points(pred, gt, _gen())
    assert xy.shape == (200, 1, 2) and labels.shape == (200, 1)
    assert labels[0, 0] == PAD
    for k in range(1, 200):
        x, y = int(xy[k, 0, 0]), int(xy[k, 0, 1])
        if labels[k, 0] == FOREGROUND:
            assert gt[k, y, x] and not pred[k, y, x]  # false negative
        else:
            assert labels[k, 0] == BACKGROUND and pred[k, y, x] and not gt[k, y, x]  # false positive
    assert (labels == FOREGROUND).sum() > 20 and (labels == BACKGROUND).sum() > 20


def test_mask_boxes():
    m = torch.zeros(1, 20, 30, dtype=torch.bool)
    m[0, 3:9, 4:17] = True
    assert mask_boxes(m).tolist() == [[4.0, 3.0, 16.0, 8.0]]


def test_box_noise_std_is_10_percent_of_side_capped():
    side = 420
    n = 1500
    masks = torch.zeros(n, side, side, dtype=torch.bool)
    masks[:, 200:240, 100:400] = True  # 300 wide (10% = 30 > cap 10), 40 high (10% = 4)
    sizes = torch.tensor([[side, side]] * n)
    boxes = noisy_boxes(masks, sizes, _gen(), noise_frac=0.1, max_std_px=10.0)
    std_x = torch.cat([boxes[:, 0] - 100, boxes[:, 2] - 399]).std()
    std_y = torch.cat([boxes[:, 1] - 200, boxes[:, 3] - 239]).std()
    assert 9.0 < std_x < 11.0  # capped
    assert 3.6 < std_y < 4.4  # 10% of the 40 px height
    # clipped to the image and ordered
    small = torch.zeros(n, side, side, dtype=torch.bool)
    small[:, 0:30, 370:400] = True
    b = noisy_boxes(small, torch.tensor([[300, 400]] * n), _gen(1), 0.1, 10.0)
    assert (b >= 0).all() and (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all()
    assert (b[:, 2] <= 399).all() and (b[:, 3] <= 299).all()


def test_first_prompts_mix_points_and_boxes():
    masks = _blobs(400, side=128)
    sizes = torch.tensor([[128, 128]] * 400)
    coords, labels = first_prompts(masks, sizes, PromptConfig(), _gen())
    is_box = labels[:, 0] == BOX_TOP_LEFT
    assert 0.4 < is_box.float().mean() < 0.6
    assert (labels[is_box, 1] == BOX_BOTTOM_RIGHT).all()
    assert (labels[~is_box, 0] == FOREGROUND).all() and (labels[~is_box, 1] == PAD).all()
    for k in torch.nonzero(~is_box).flatten().tolist():
        assert masks[k, int(coords[k, 0, 1]), int(coords[k, 0, 0])]
    # box noise cap scales with the input side: 20 px at 1024 -> 2.5 px at 128
    tight = mask_boxes(masks[is_box])
    assert (coords[is_box].reshape(-1, 4) - tight).abs().max() < 2.5 * 6


def test_schedule_has_11_iterations_with_two_silent_ones():
    slots = set()
    for seed in range(60):
        s = iteration_schedule(8, _gen(seed))
        assert len(s) == 10 and sum(s) == 8 and s[-1] is False
        slots.add(s.index(False))
    assert slots == set(range(9))  # the inserted silent iteration can fall anywhere among the 8


def test_warmup_clicks_first_prompt_prob():
    """first_prompt_prob sets how often the trained pass is the first prompt; the rest spread
    over 1..nograd_clicks. Without it every length 0..nograd_clicks is equally likely."""
    gen = torch.Generator().manual_seed(0)
    cfg = PromptConfig(nograd_clicks=4, first_prompt_prob=0.5)
    draws = torch.tensor([warmup_clicks(cfg, gen) for _ in range(4000)])
    assert abs((draws == 0).float().mean().item() - 0.5) < 0.03
    assert set(draws.tolist()) == {0, 1, 2, 3, 4}
    for k in range(1, 5):
        assert abs((draws == k).float().mean().item() - 0.125) < 0.02
    uniform = torch.tensor([warmup_clicks(PromptConfig(nograd_clicks=4), gen) for _ in range(4000)])
    assert abs((uniform == 0).float().mean().item() - 0.2) < 0.03
    assert warmup_clicks(PromptConfig(nograd_clicks=0, first_prompt_prob=0.5), gen) == 0


def test_schedule_variants_for_cheaper_stages():
    assert iteration_schedule(2, _gen(0), no_point_iters=1) == [True, True, False]
    assert iteration_schedule(0, _gen(0), no_point_iters=0) == []  # first prompt only
    assert iteration_schedule(3, _gen(0), no_point_iters=0) == [True, True, True]
    with pytest.raises(ValueError):
        iteration_schedule(2, _gen(0), no_point_iters=3)


def test_tokens_match_the_prompt_encoder(tiny_sam):
    pe = tiny_sam.prompt_encoder
    pts = torch.tensor([[[10.0, 20.0]], [[50.0, 3.0]]])
    lab = torch.tensor([[1], [0]])
    ref, _ = pe(points=(pts, lab), boxes=None, masks=None)  # pads one token
    ours = embed_prompt_tokens(
        pe, torch.cat([pts, torch.zeros(2, 1, 2)], 1), torch.cat([lab, -torch.ones(2, 1, dtype=torch.long)], 1)
    )
    torch.testing.assert_close(ours, ref)
    box = torch.tensor([[5.0, 6.0, 70.0, 80.0]])
    ref, _ = pe(points=None, boxes=box, masks=None)
    ours = embed_prompt_tokens(pe, box.reshape(1, 2, 2), torch.tensor([[BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]]))
    torch.testing.assert_close(ours, ref)


def test_episode_structure_and_mask_feedback(tiny_sam, monkeypatch):
    sam = tiny_sam
    gt = _blobs(3, side=64, seed=3)
    sizes = torch.tensor([[64, 64]] * 3)
    emb = torch.randn(1, 32, 16, 16)
    fed: list[torch.Tensor] = []
    original = sam.prompt_encoder.mask_downscaling.forward

    def record(x):
        fed.append(x.detach().clone())
        return original(x)

    monkeypatch.setattr(sam.prompt_encoder.mask_downscaling, "forward", record)
    with torch.no_grad():
        outs = simulate_episode(sam, emb, torch.zeros(3, dtype=torch.long), gt, sizes, _gen(4))
    assert len(outs) == 11
    added = [o.added_point for o in outs]
    assert sum(added) == 8 and added[0] is False and added[-1] is False
    assert outs[0].multimask and outs[0].low_res.shape == (3, 3, 64, 64)
    first_point = added.index(True)
    for k, o in enumerate(outs):
        assert o.multimask == (k < first_point)  # one prompt: 3 outputs; several: the 4th token
        if not o.multimask:
            assert o.low_res.shape == (3, 1, 64, 64)
        assert o.coords.shape[1] == 2 + sum(added[: k + 1])
    assert len(fed) == 10  # every iteration after the first gets the previous mask
    for k in range(10):
        prev = outs[k]
        best = prev.iou_pred.argmax(dim=1)
        expect = prev.low_res[torch.arange(3), best][:, None]
        torch.testing.assert_close(fed[k], expect)


def test_error_points_ignore_padding(tiny_sam):
    """Predictions over the padded part of the square never yield a click."""
    sam = tiny_sam
    gt = torch.zeros(8, 64, 64, dtype=torch.bool)
    gt[:, 5:15, 5:15] = True
    sizes = torch.tensor([[20, 64]] * 8)
    with torch.no_grad():
        outs = simulate_episode(
            sam, 3 * torch.randn(1, 32, 16, 16), torch.zeros(8, dtype=torch.long), gt, sizes, _gen(5)
        )
    coords, labels = outs[-1].coords, outs[-1].labels
    real = labels >= 0
    assert (labels == BACKGROUND).any()  # the random model does overshoot ...
    assert (coords[..., 1][real] < 20).all()  # ... but never gets a click in the padding
