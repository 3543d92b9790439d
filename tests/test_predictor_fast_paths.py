"""The predictor's exact fast paths against the plain computations they replace.

- :func:`upsample_low_res_banded` (two banded matmuls) against :func:`upsample_low_res`
  (two bilinear passes) on square, wide, tall, enlarging and tiny frames;
- the cached decoder (block-diagonal first-layer image->token logits, transposed softmax,
  the first upscaling matmul distributed over the layers' low-rank updates) against
  :meth:`MaskDecoder.predict_masks`, with every weight random (LayerNorm weights included,
  which the distributed upscaling folds in) and batches across ``DECODE_CHUNK``;
- a mask prompt as a rank-16 update of the cache (:class:`MaskPrompt`) against decoding
  from the prompted image tokens, with and without a workspace;
- the workspace (scratch buffers kept between calls) against fresh tensors: bit-identical
  outputs, its memory reused, never handed out, separate per thread.
"""

from __future__ import annotations

import pytest
import torch

from segany import build_model
from segany.modeling.cached_decoder import (
    DECODE_CHUNK,
    cached_transformer,
    decode_cached,
    final_tokens,
    mask_prompt_tokens,
    transformer_layers,
)
from segany.modeling.decoder_cache import DecoderImageCache, MaskPrompt
from segany.modeling.mask_upsampling import upsample_low_res, upsample_low_res_banded
from segany.modeling.reassociated_attention import block_diagonal_heads
from segany.modeling.workspace import Workspace


@pytest.mark.parametrize(
    ("input_size", "original_size"),
    [((719, 1024), (449, 640)), ((1024, 683), (1500, 1000)), ((1024, 1024), (512, 512)), ((1024, 3), (3000, 8))],
)
def test_banded_upsampling_matches_two_pass(input_size, original_size):
    gen = torch.Generator().manual_seed(0)
    low = torch.randn(2, 3, 256, 256, generator=gen) * 20  # rough logits: a worst case for placement
    ref = upsample_low_res(low, input_size, original_size, 1024)
    out = upsample_low_res_banded(low, input_size, original_size, 1024)
    assert out.shape == ref.shape == (2, 3, *original_size)
    assert (out - ref).abs().max().item() < 1e-4


def test_block_diagonal_heads():
    k = torch.randn(2, 8, 7, 16)
    bd = block_diagonal_heads(k).reshape(2, 8, 7, 8, 16)
    for i in range(8):
        for j in range(8):
            expected = k[:, i] if i == j else torch.zeros_like(k[:, i])
            assert torch.equal(bd[:, i, :, j], expected)


@pytest.fixture(scope="module")
def decoder_parts():
    """A ViT-B SAM's prompt encoder and mask decoder with every decoder/prompt tensor random."""
    torch.manual_seed(0)
    model = build_model("vit_b").eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in [*model.mask_decoder.state_dict().items()]:
            if t.is_floating_point():
                scale = 1.0 if name.endswith(("norm4.weight", "norm4.bias")) else 0.1
                offset = 1.0 if name.endswith("weight") and "norm" in name else 0.0
                t.copy_(torch.randn(t.shape, generator=gen) * scale + offset)
    return model.prompt_encoder, model.mask_decoder


@pytest.mark.parametrize("n_prompts", [1, DECODE_CHUNK + 2])
@pytest.mark.parametrize("multimask", [True, False])
def test_cached_decoder_matches_plain(decoder_parts, n_prompts, multimask):
    pe, dec = decoder_parts
    gen = torch.Generator().manual_seed(n_prompts)
    feats = torch.randn(1, 256, 64, 64, generator=gen)
    coords = torch.rand(n_prompts, 2, 2, generator=gen) * 1024
    labels = torch.tensor([[1, 0]] * n_prompts, dtype=torch.int)
    with torch.no_grad():
        image_pe = pe.get_dense_pe()
        sparse, dense = pe(
            points=(coords, labels), boxes=torch.rand(n_prompts, 4, generator=gen).sort(-1).values * 1024, masks=None
        )
        cache = DecoderImageCache.build(dec, feats + pe.no_mask_dense(1, (64, 64)), image_pe)
        mask_slice = dec.output_slice(multimask)
        ref_low, ref_iou = dec.predict_masks(feats, image_pe, sparse, dense, mask_slice)
        low, iou = decode_cached(dec, cache, sparse, mask_slice)
        # the per-prompt image-token path (mask prompts) keeps the plain upscaling
        low_t, iou_t = decode_cached(dec, cache, sparse, mask_slice, mask_prompt_tokens(feats, dense, n_prompts))
    scale = ref_low.abs().max().item()
    assert scale > 1.0  # logits of a useful size, so the tolerance below means something
    for a, b in ((low, ref_low), (iou, ref_iou), (low_t, ref_low), (iou_t, ref_iou)):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < 1e-4


def test_final_attention_for_the_iou_token_alone_matches(decoder_parts):
    """The generator's IoU-first split (the final attention for the IoU token only, then for
    every token of the prompts that pass) gives the plain decoder's IoUs and tokens."""
    pe, dec = decoder_parts
    gen = torch.Generator().manual_seed(7)
    feats = torch.randn(1, 256, 64, 64, generator=gen)
    n = DECODE_CHUNK + 1
    coords = torch.rand(n, 1, 2, generator=gen) * 1024
    with torch.no_grad():
        image_pe = pe.get_dense_pe()
        sparse, dense = pe(points=(coords, torch.ones(n, 1, dtype=torch.int)), boxes=None, masks=None)
        cache = DecoderImageCache.build(dec, feats + pe.no_mask_dense(1, (64, 64)), image_pe)
        _, ref_iou = dec.predict_masks(feats, image_pe, sparse, dense, dec.output_slice(True))
        hs_all, _ = cached_transformer(dec, cache, sparse)
        ws = Workspace()
        layers = transformer_layers(dec, cache, sparse, ws=ws)
        iou = dec.predict_iou(final_tokens(dec, cache, layers, slice(0, 1), ws=ws), dec.output_slice(True))
        picked = torch.tensor([0, n - 1])
        hs_picked = final_tokens(dec, cache, layers.select(picked))
    assert iou.shape == ref_iou.shape and (iou - ref_iou).abs().max().item() < 1e-4
    assert (hs_picked - hs_all[picked]).abs().max().item() < 1e-5


@pytest.mark.parametrize(("n_prompts", "n_masks"), [(1, 1), (DECODE_CHUNK + 2, DECODE_CHUNK + 2), (3, 1)])
def test_mask_prompt_update_matches_prompted_tokens(decoder_parts, n_prompts, n_masks):
    """Decoding with a mask prompt as rank-16 terms on the cache == decoding the prompted
    image tokens (and == the cache built from them); a workspace changes nothing
    (bit-identical)."""
    pe, dec = decoder_parts
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(1, 256, 64, 64, generator=gen)
    coords = torch.rand(n_prompts, 2, 2, generator=gen) * 1024
    labels = torch.tensor([[1, 0]] * n_prompts, dtype=torch.int)
    masks = torch.randn(n_masks, 1, 256, 256, generator=gen) * 8
    with torch.no_grad():
        image_pe = pe.get_dense_pe()
        sparse, _ = pe(points=(coords, labels), boxes=None, masks=None)
        dense = pe(points=None, boxes=None, masks=masks)[1]
        cache = DecoderImageCache.build(dec, feats + pe.no_mask_dense(1, (64, 64)), image_pe)
        prompt = MaskPrompt.from_masks(pe, masks)
        mask_slice = dec.output_slice(False)
        direct = []  # each prompt decoded on the cache of its own prompted image tokens
        for i in range(n_prompts):
            own = DecoderImageCache.build(dec, feats + dense[min(i, n_masks - 1)][None], image_pe)
            direct.append(decode_cached(dec, own, sparse[i : i + 1], mask_slice))
        ref = decode_cached(dec, cache, sparse, mask_slice, mask_prompt_tokens(feats, dense, n_prompts))
        out = decode_cached(dec, cache, sparse, mask_slice, mask_prompt=prompt)
        ws = Workspace()
        again = [decode_cached(dec, cache, sparse, mask_slice, workspace=ws, mask_prompt=prompt) for _ in range(2)]
        # scale 0 (the ONNX graph's has_mask_input = 0) gives the no-mask decode
        off = decode_cached(dec, cache, sparse, mask_slice, mask_prompt=MaskPrompt.from_masks(pe, masks, torch.zeros(1)))
        plain = decode_cached(dec, cache, sparse, mask_slice)
    for a, b in zip(out, ref):
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-4
    for j, (a, b) in enumerate(zip(out, (torch.cat([d[0] for d in direct]), torch.cat([d[1] for d in direct])))):
        assert (a - b).abs().max().item() < 1e-4, j
    for run in again:
        assert all(torch.equal(a, b) for a, b in zip(run, out))
    # (the mask path's own kernels still run, so equal up to rounding rather than bit for bit)
    assert all((a - b).abs().max().item() < 1e-5 for a, b in zip(off, plain))
    with pytest.raises(ValueError, match="not both"):
        decode_cached(dec, cache, sparse, mask_slice, mask_prompt_tokens(feats, dense, n_prompts), mask_prompt=prompt)


def _decode_inputs(decoder_parts, n_prompts, seed=0):
    pe, dec = decoder_parts
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, 256, 64, 64, generator=gen)
    coords = torch.rand(n_prompts, 1, 2, generator=gen) * 1024
    labels = torch.ones(n_prompts, 1, dtype=torch.int)
    with torch.no_grad():
        sparse, dense = pe(points=(coords, labels), boxes=None, masks=None)
        cache = DecoderImageCache.build(dec, feats + pe.no_mask_dense(1, (64, 64)), pe.get_dense_pe())
    return feats, sparse, dense, cache


@pytest.mark.parametrize("n_prompts", [1, DECODE_CHUNK + 2])
def test_workspace_is_bit_identical_and_reused(decoder_parts, n_prompts):
    _, dec = decoder_parts
    feats, sparse, dense, cache = _decode_inputs(decoder_parts, n_prompts)
    ws = Workspace()
    tokens = mask_prompt_tokens(feats, dense, n_prompts)
    with torch.no_grad():
        for mask_slice in (dec.output_slice(True), dec.output_slice(False)):
            for image_tokens in (None, tokens):
                ref = decode_cached(dec, cache, sparse, mask_slice, image_tokens)
                first = decode_cached(dec, cache, sparse, mask_slice, image_tokens, workspace=ws)
                ptrs = {name: buf.data_ptr() for name, buf in ws._local.bufs.items()}
                second = decode_cached(dec, cache, sparse, mask_slice, image_tokens, workspace=ws)
                assert {name: buf.data_ptr() for name, buf in ws._local.bufs.items()} == ptrs  # reused
                for a, b, c in zip(ref, first, second):
                    assert torch.equal(a, b) and torch.equal(a, c)  # same kernels: bit-identical
                # the outputs are never views of scratch memory the next call overwrites
                held = {buf.untyped_storage().data_ptr() for buf in ws._local.bufs.values()}
                assert not {t.untyped_storage().data_ptr() for t in first} & held
    assert ws.nbytes() > 4096 * 256 * 4  # it holds at least one image-token buffer
    ws.clear()
    assert ws.nbytes() == 0


def test_workspace_per_thread_and_copyable():
    import copy
    import pickle
    import threading

    ws = Workspace()
    like = torch.zeros(1)
    mine = ws.get("x", (4, 4), like)
    other = []
    t = threading.Thread(target=lambda: other.append(ws.get("x", (4, 4), like)))
    t.start()
    t.join()
    assert other[0].data_ptr() != mine.data_ptr()
    assert ws.get("x", (4, 4), like).data_ptr() == mine.data_ptr()
    assert ws.get("x", (2, 4), like).data_ptr() == mine.data_ptr()  # fewer rows: a view
    assert ws.get("x", (4, 5), like).shape == (4, 5)  # another shape replaces the buffer
    for clone in (copy.deepcopy(ws), pickle.loads(pickle.dumps(ws))):
        assert isinstance(clone, Workspace) and clone.nbytes() == 0


def test_predictor_workspace_matches_fresh_tensors(small_model):
    import numpy as np

    from segany import SamPredictor

    img = np.random.RandomState(2).randint(0, 255, (90, 140, 3), dtype=np.uint8)
    kept, fresh = SamPredictor(small_model), SamPredictor(small_model)
    fresh._workspace = None  # decode_cached(workspace=None): every tensor new
    kept.set_image(img)
    fresh.set_image(img)
    prompts = [
        {"point_coords": np.array([[70, 40]]), "point_labels": np.array([1])},
        {"box": np.array([10, 10, 100, 80]), "multimask_output": False},
        {"point_coords": np.array([[[20, 30]], [[90, 60]]]), "point_labels": np.array([[1], [1]])},
    ]
    outputs = []
    for kwargs in prompts * 2:  # twice: the second round runs on reused buffers
        a = kept.predict(return_logits=True, **kwargs)
        b = fresh.predict(return_logits=True, **kwargs)
        for x, y in zip(a, b):
            assert np.array_equal(x, y)
        outputs.append(a)
    # a later call never changes what an earlier one returned
    for first, again in zip(outputs[:3], outputs[3:]):
        for x, y in zip(first, again):
            assert np.array_equal(x, y)
