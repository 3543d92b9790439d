"""The per-click ONNX decoder: the per-image decoder cache as graph inputs.

Why: the official decoder graph (:class:`~segany.export.onnx.SamOnnxDecoder`) redoes on
every click the work that depends only on the image: the first layer's projections of the
4096 image tokens and the first upscaling matmul's image-side product (three 4096x256x128
and one 4096x256x256 multiply). PyTorch keeps them in a
:class:`~segany.modeling.decoder_cache.DecoderImageCache` built once per image; here the
same split is two graphs:

``decoder_cache.onnx`` (once per image)
    input ``image_embeddings`` float32 [1,256,64,64]; outputs the cache's image tensors
    (:data:`~segany.modeling.decoder_cache.IMAGE_FIELDS`): ``keys`` [1,4096,256],
    ``t2i_k`` and ``t2i_v`` [1,8,4096,16], ``i2t_q_t`` [1,128,4096], ``up1_keys`` [1,4096,256]
    (14 MB of float32 for the default 256-d decoder).
``decoder_click.onnx`` (per click)
    inputs those five tensors plus the official contract's prompt inputs (``point_coords``,
    ``point_labels``, ``mask_input``, ``has_mask_input``, ``orig_im_size``); outputs
    ``masks``, ``iou_predictions``, ``low_res_masks`` (and the extra metrics) as
    :class:`SamOnnxDecoder` does.

A mask prompt is applied as the rank-16 update of the cache that
:class:`~segany.modeling.decoder_cache.MaskPrompt` describes (the graph cannot branch, so
the update is always computed and scaled by ``has_mask_input``). The numbers equal the
PyTorch predictor's cached path (the same
:func:`~segany.modeling.cached_decoder.decode_cached`) and the official graph's to float32
rounding.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..modeling import Sam
from ..modeling.cached_decoder import decode_cached
from ..modeling.decoder_cache import IMAGE_FIELDS, DecoderImageCache, MaskPrompt
from .onnx import (
    DEFAULT_OPSET,
    OnnxMaskOutputs,
    cpu_float32,
    decoder_example_inputs,
    decoder_outputs_and_axes,
    write_onnx,
)

CLICK_INPUTS = [*IMAGE_FIELDS, "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]


class SamOnnxImageCache(nn.Module):
    """``image_embeddings`` -> the decoder cache's image tensors (no-mask dense prompt)."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.mask_decoder = model.mask_decoder
        pe = model.prompt_encoder
        with torch.no_grad():
            self.register_buffer("dense_pe", pe.pe_layer(pe.image_embedding_size)[None])
            self.register_buffer("no_mask", pe.no_mask_dense(1, (1, 1)))

    def forward(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tensors = DecoderImageCache.image_tensors(self.mask_decoder, image_embeddings + self.no_mask, self.dense_pe)
        return tuple(tensors[name] for name in IMAGE_FIELDS)


class SamOnnxClickDecoder(OnnxMaskOutputs):
    """Points (a box as labels 2/3) and an optional mask prompt on a cached image -> the
    official outputs; the options are :class:`~segany.export.onnx.OnnxMaskOutputs`'."""

    def forward(
        self,
        keys: torch.Tensor,
        t2i_k: torch.Tensor,
        t2i_v: torch.Tensor,
        i2t_q_t: torch.Tensor,
        up1_keys: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        sparse = self.prompt_encoder.embed_point_tokens(point_coords, point_labels)
        cache = DecoderImageCache.from_image_tensors(
            self.mask_decoder, self.dense_pe, keys=keys, t2i_k=t2i_k, t2i_v=t2i_v, i2t_q_t=i2t_q_t, up1_keys=up1_keys
        )
        # the graph cannot branch on has_mask_input: the rank-16 update is always applied,
        # scaled by it (0 leaves the cache exactly as it is)
        prompt = MaskPrompt.from_masks(self.prompt_encoder, mask_input, scale=has_mask_input)
        low_res, iou = decode_cached(self.mask_decoder, cache, sparse, slice(None), mask_prompt=prompt)
        return self.outputs(low_res, iou, point_coords.shape[1], orig_im_size)


def export_decoder_cache(
    model: Sam, path: str | os.PathLike, *, quantize: bool = False, opset: int = DEFAULT_OPSET
) -> Path:
    """Write ``decoder_cache.onnx`` (temp file, then rename); returns its path. Traced on the
    CPU in float32, like :func:`~segany.export.onnx.export_decoder`."""
    wrapper = SamOnnxImageCache(cpu_float32(model)).eval()
    pe = model.prompt_encoder
    example = torch.randn(1, pe.embed_dim, *pe.image_embedding_size)
    return write_onnx(wrapper, (example,), path, ["image_embeddings"], list(IMAGE_FIELDS), {}, opset, quantize)


def export_click_decoder(
    model: Sam,
    path: str | os.PathLike,
    *,
    return_single_mask: bool = False,
    use_stability_score: bool = False,
    return_extra_metrics: bool = False,
    quantize: bool = False,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write ``decoder_click.onnx`` (temp file, then rename); returns its path. The options
    are :func:`~segany.export.onnx.export_decoder`'s."""
    model = cpu_float32(model)
    wrapper = SamOnnxClickDecoder(
        model,
        return_single_mask=return_single_mask,
        use_stability_score=use_stability_score,
        return_extra_metrics=return_extra_metrics,
    ).eval()
    pe = model.prompt_encoder
    example = decoder_example_inputs(embed_dim=pe.embed_dim, grid=pe.image_embedding_size[0])
    with torch.no_grad():
        cache = SamOnnxImageCache(model)(example.pop("image_embeddings"))
    outputs, dynamic = decoder_outputs_and_axes(return_extra_metrics)
    return write_onnx(wrapper, (*cache, *example.values()), path, CLICK_INPUTS, outputs, dynamic, opset, quantize)


def click_feeds(cache: dict, point_coords, point_labels, original_size: tuple[int, int], box=None,
                mask_input=None) -> dict:
    """Numpy feeds for ``decoder_click.onnx``: the cache graph's outputs by name plus the
    prompts packed as :func:`~segany.export.onnx.decoder_feeds` packs them."""
    from .onnx import decoder_feeds

    prompts = decoder_feeds(torch.zeros(0), point_coords, point_labels, original_size, box=box, mask_input=mask_input)
    return {**{name: cache[name] for name in IMAGE_FIELDS},
            **{k: prompts[k] for k in CLICK_INPUTS if k not in IMAGE_FIELDS}}
