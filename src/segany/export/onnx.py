"""ONNX export of the prompt encoder + mask decoder (official signature) and of the image encoder.

Why the decoder has its own wrapper: tools such as CVAT, Label Studio and X-AnyLabeling
run SAM's decoder from an ONNX file with a fixed input contract, and the annotation page
of :mod:`segany.engine` runs the same file in the browser. The contract is:

inputs
    ``image_embeddings`` float32 [1,256,64,64]
    ``point_coords``     float32 [1,N,2]  (x, y) in the model's *input* frame (the image
                         resized so its longest side is ``img_size``; see ``ResizeLongestSide``)
    ``point_labels``     float32 [1,N]    1 foreground, 0 background, 2 box top-left,
                         3 box bottom-right, -1 padding. Without a box, callers append a
                         padding point (0, 0) with label -1, as the model was trained that way.
    ``mask_input``       float32 [1,1,256,256] previous low-res logits
    ``has_mask_input``   float32 [1]      1 to use ``mask_input``, 0 to ignore it
    ``orig_im_size``     float32 [2]      (H, W) of the original image
outputs
    ``masks``            float32 [1,M,H,W] logits in the original frame (threshold at 0)
    ``iou_predictions``  float32 [1,M]    predicted IoU (or stability score, see options)
    ``low_res_masks``    float32 [1,M,256,256] logits to feed back as ``mask_input``
    plus, with ``return_extra_metrics``: ``stability_scores`` [1,M], ``areas`` [1,M].

M is 4 (the single-output mask 0 followed by the three multimask outputs) unless
``return_single_mask`` picks one: the best multimask output for a single click, mask 0
when more prompts disambiguate (the rule of the paper's interactive setting).

The prompt encoder is not called through ``PromptEncoder.forward``, whose Python ``if``s
on the prompt kinds cannot be traced into one graph: the point tokens come from its one
token embedder (``PromptEncoder.embed_point_tokens``, box corners as labels 2/3), the mask
prompt is blended in with arithmetic on ``has_mask_input``, and the decoder is the one
exact cached inference path of the PyTorch predictor and the automatic generator
(:func:`~segany.modeling.cached_decoder.decode_cached`, with its re-associated
cross-attention and channels-last upscaling). The graph cannot branch on
``has_mask_input``, so every call carries its own dense prompt: the image tokens come from
:func:`~segany.modeling.cached_decoder.mask_prompt_tokens` and the per-image cache is the
slim :meth:`DecoderImageCache.for_image_tokens
<segany.modeling.decoder_cache.DecoderImageCache.for_image_tokens>` (positional encoding
and upscaling weights, which constant folding turns into initializers). The numerics are
the same as the PyTorch predictor's to float32 precision (tested to 1e-4).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..atomic_files import atomic_path
from ..modeling import Sam
from ..modeling.cached_decoder import decode_cached, mask_prompt_tokens
from ..modeling.decoder_cache import DecoderImageCache

DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
DECODER_OUTPUTS = ["masks", "iou_predictions", "low_res_masks"]
EXTRA_OUTPUTS = ["stability_scores", "areas"]
DEFAULT_OPSET = 17


class OnnxMaskOutputs(nn.Module):
    """What every exported decoder graph shares: the prompt encoder and mask decoder it
    wraps, the output options, and the postprocessing from low-res logits to the outputs
    (:meth:`outputs`). :class:`SamOnnxDecoder` (official contract) and the per-click
    decoder of :mod:`segany.export.onnx_click` differ only in how they get the logits.

    Args:
        model: a segany ``Sam`` (or anything with ``prompt_encoder``, ``mask_decoder``,
            ``img_size`` and ``mask_threshold``).
        return_single_mask: output one mask (best multimask output for one click, else mask 0).
        use_stability_score: report the stability score in ``iou_predictions`` instead of
            the predicted IoU (useful when the IoU head is weak, e.g. early in training).
        return_extra_metrics: also output ``stability_scores`` and ``areas`` (pixels in the
            original frame).
        stability_score_offset: logit offset of the stability score (paper appendix B: 1.0).
    """

    def __init__(
        self,
        model: Sam,
        return_single_mask: bool = False,
        use_stability_score: bool = False,
        return_extra_metrics: bool = False,
        stability_score_offset: float = 1.0,
    ) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.img_size = int(model.img_size)
        self.mask_threshold = float(model.mask_threshold)
        self.return_single_mask = return_single_mask
        self.use_stability_score = use_stability_score
        self.return_extra_metrics = return_extra_metrics
        self.stability_score_offset = float(stability_score_offset)
        # Constant for a given model, so it is computed once and stored as a graph constant.
        with torch.no_grad():
            self.register_buffer("dense_pe", self.prompt_encoder.pe_layer(self.prompt_encoder.image_embedding_size)[None])

    def _upscale(self, low_res: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """256x256 logits -> original frame: upsample to the padded square, crop the resized
        image region, resize to (H, W)."""
        up = F.interpolate(low_res, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        size = orig_im_size.to(torch.float32)
        scale = self.img_size / torch.max(size)
        input_hw = torch.floor(scale * size + 0.5).to(torch.int64)
        up = up[..., : input_hw[0], : input_hw[1]]
        out_hw = size.to(torch.int64)
        return F.interpolate(up, (out_hw[0], out_hw[1]), mode="bilinear", align_corners=False)

    def _stability(self, low_res: torch.Tensor) -> torch.Tensor:
        """IoU between the masks thresholded at +offset and -offset (appendix B)."""
        hi = (low_res > self.mask_threshold + self.stability_score_offset).flatten(2).sum(-1).to(torch.float32)
        lo = (low_res > self.mask_threshold - self.stability_score_offset).flatten(2).sum(-1).to(torch.float32)
        return hi / torch.clamp(lo, min=1.0)

    def _select_single(self, low_res: torch.Tensor, scores: torch.Tensor, n_points: int) -> tuple:
        """Best multimask output when the prompt is one click (+ padding), else mask 0.

        Written as arithmetic on the point count (a graph value in ONNX): a bonus of
        1000 * (N - 2.5) on mask 0 wins for N >= 3 and loses for N <= 2.
        """
        bonus = torch.zeros_like(scores)
        bonus[:, 0] = 1000.0
        weighted = scores + bonus * (n_points - 2.5)
        best = torch.argmax(weighted, dim=1)
        idx = best.reshape(-1, 1, 1, 1).expand(-1, 1, low_res.shape[-2], low_res.shape[-1])
        return torch.gather(low_res, 1, idx), torch.gather(scores, 1, best.reshape(-1, 1))

    def outputs(
        self, low_res: torch.Tensor, iou: torch.Tensor, n_points: int, orig_im_size: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """The graph outputs (:data:`DECODER_OUTPUTS`, plus :data:`EXTRA_OUTPUTS` when asked)
        from the decoder's 1x4x256x256 low-res logits and 1x4 predicted IoUs."""
        if self.use_stability_score:
            iou = self._stability(low_res)
        if self.return_single_mask:
            low_res, iou = self._select_single(low_res, iou, n_points)
        masks = self._upscale(low_res, orig_im_size)
        if not self.return_extra_metrics:
            return masks, iou, low_res
        stability = self._stability(low_res)
        areas = (masks > self.mask_threshold).flatten(2).sum(-1).to(torch.float32)
        return masks, iou, low_res, stability, areas


class SamOnnxDecoder(OnnxMaskOutputs):
    """Prompt encoder + mask decoder + postprocessing with the official ONNX input contract
    (module docstring); the options are :class:`OnnxMaskOutputs`'."""

    def _dense_embeddings(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """Mask prompt embedding, or the learned 'no mask' embedding when has_mask_input is 0."""
        from_mask = self.prompt_encoder.mask_downscaling(mask_input)
        no_mask = self.prompt_encoder.no_mask_dense(1, (1, 1))  # broadcast over the grid
        w = has_mask_input.reshape(1, 1, 1, 1)
        return from_mask * w + no_mask * (1.0 - w)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        # labels 2/3 (box corners) share the point tensor, as in the official ONNX model
        sparse = self.prompt_encoder.embed_point_tokens(point_coords, point_labels)
        dense = self._dense_embeddings(mask_input, has_mask_input)
        # Built from weights and constants only, so the exported graph holds it as initializers.
        cache = DecoderImageCache.for_image_tokens(self.mask_decoder, self.dense_pe)
        image_tokens = mask_prompt_tokens(image_embeddings, dense, 1)
        low_res, iou = decode_cached(self.mask_decoder, cache, sparse, slice(None), image_tokens)
        return self.outputs(low_res, iou, point_coords.shape[1], orig_im_size)


class SamOnnxEncoder(nn.Module):
    """Image encoder for ONNX, optionally with resizing and normalisation built in.

    With ``with_preprocess`` the input is ``input_image`` uint8 [H,W,3] RGB of any size; the
    graph resizes its longest side to ``img_size`` (bilinear, no antialiasing, so embeddings
    differ slightly from the PIL-resized PyTorch path), normalises and pads. Without it the
    input is ``image`` float32 [1,3,S,S], already resized, normalised and padded (what
    ``Sam.preprocess`` returns). The output is ``image_embeddings`` [1,256,64,64].
    """

    def __init__(self, model: Sam, with_preprocess: bool = False) -> None:
        super().__init__()
        self.image_encoder = _static_layernorms(model.image_encoder)
        self.img_size = int(model.img_size)
        self.with_preprocess = with_preprocess
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone().reshape(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone().reshape(1, 3, 1, 1), False)

    def preprocess(self, input_image: torch.Tensor) -> torch.Tensor:
        """uint8 HxWx3 -> normalised, padded 1x3xSxS float32."""
        x = input_image.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
        # _shape_as_tensor keeps the size a graph value when traced (dynamic H, W in ONNX).
        hw = torch._shape_as_tensor(input_image)[:2].to(torch.float32)
        scale = self.img_size / torch.max(hw)
        new_hw = torch.floor(hw * scale + 0.5).to(torch.int64)
        x = F.interpolate(x, (new_hw[0], new_hw[1]), mode="bilinear", align_corners=False)
        x = (x - self.pixel_mean) / self.pixel_std
        pad_h = self.img_size - new_hw[0]
        pad_w = self.img_size - new_hw[1]
        return F.pad(x, (0, pad_w, 0, pad_h))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.with_preprocess:
            image = self.preprocess(image)
        return self.image_encoder(image)


class _StaticLayerNorm2d(nn.Module):
    """Channel LayerNorm whose normalised shape is a Python int, so the TorchScript ONNX
    exporter sees a constant (``LayerNorm2d`` reads it from the input's shape, which the
    tracer records as a graph value and cannot export as a LayerNormalization attribute)."""

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        self.weight = source.weight
        self.bias = source.bias
        self.eps = float(source.eps)
        self.channels = int(source.weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (self.channels,), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def _static_layernorms(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (sharing parameters) with every LayerNorm2d made export-friendly."""
    from ..modeling.common import LayerNorm2d

    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    for name, child in module.named_children():
        clone._modules[name] = _StaticLayerNorm2d(child) if isinstance(child, LayerNorm2d) else _static_layernorms(child)
    return clone


def cpu_float32(model: Sam) -> Sam:
    """``model`` itself when it is on the CPU in float32, else a CPU float32 copy (with a
    warning): ONNX export traces there, and must not move the caller's model off its device
    or change its dtype behind its back (``model.cpu()`` works in place)."""
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device.type == "cpu" and (not t.is_floating_point() or t.dtype == torch.float32) for t in tensors):
        return model.eval()
    warnings.warn(
        "ONNX export traces a float32 CPU copy of the model (the exported graph is float32 and "
        "runs on any device); the model itself is left unchanged",
        stacklevel=3,
    )
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()


def _native_layer_norm_symbolic(g, x, normalized_shape, weight, bias, eps):  # noqa: ANN001, ANN202
    """``aten::native_layer_norm`` (output, mean, rstd) as one ONNX ``LayerNormalization``
    node with its optional Mean and InvStdDev outputs (opset 17).

    Why: the TorchScript exporter otherwise writes it out op by op (two ReduceMeans, Sub,
    Pow, Add, Sqrt, Div, Mul, Add: nine passes over the 4096x256 image tokens, 2.5-3 ms a
    norm in onnxruntime on one thread); the cached decoder needs the statistics too (the
    fused upscaling reads them), so ``F.layer_norm``'s single-output form does not do."""
    from torch.onnx import symbolic_helper

    axes = symbolic_helper._get_const(normalized_shape, "is", "normalized_shape")
    rank = symbolic_helper._get_tensor_rank(x)
    if rank is None:  # the exporter always knows it here; fall back to the op-by-op form
        from torch.onnx.symbolic_opset9 import native_layer_norm

        return native_layer_norm(g, x, normalized_shape, weight, bias, eps)
    epsilon = symbolic_helper._get_const(eps, "f", "eps")
    return g.op("LayerNormalization", x, weight, bias, axis_i=rank - len(axes), epsilon_f=epsilon, outputs=3)


def _torch_export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                  dynamic_axes: dict, opset: int) -> None:
    """TorchScript-based ONNX export (the path the official model uses): it keeps the
    data-dependent output size of ``masks`` as graph computation. ``native_layer_norm``
    becomes one fused node (:func:`_native_layer_norm_symbolic`) from opset 17 on, for this
    export only."""
    fused_norm = opset >= 17
    if fused_norm:
        torch.onnx.register_custom_op_symbolic("aten::native_layer_norm", _native_layer_norm_symbolic, opset)
    try:
        _torch_export_traced(module, args, path, input_names, output_names, dynamic_axes, opset)
    finally:
        if fused_norm:
            torch.onnx.unregister_custom_op_symbolic("aten::native_layer_norm", opset)


def _torch_export_traced(module: nn.Module, args: tuple, path: Path, input_names: list[str],
                         output_names: list[str], dynamic_axes: dict, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            export_params=True,
            verbose=False,
            opset_version=opset,
            do_constant_folding=True,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            dynamo=False,
        )


def write_onnx(module: nn.Module, args: tuple, path: str | os.PathLike, input_names: list[str],
                output_names: list[str], dynamic_axes: dict, opset: int, quantize: bool) -> Path:
    """Trace ``module`` into the ONNX file ``path`` (uint8-quantised when ``quantize``); returns its path.

    The one write step of both exports: the graph goes to a temp file that replaces ``path``
    only once it is complete (and quantised), so a failed or interrupted export never leaves a
    half-written model where the annotation page or another tool would load it."""
    out = Path(path)
    with atomic_path(out) as tmp:
        with torch.no_grad():
            _torch_export(module, args, tmp, input_names, output_names, dynamic_axes, opset)
        if quantize:
            _quantize_in_place(tmp)
    return out


def decoder_example_inputs(n_points: int = 3, embed_dim: int = 256, grid: int = 64) -> dict[str, torch.Tensor]:
    """Dummy inputs of the decoder signature (also the shapes the page sends)."""
    return {
        "image_embeddings": torch.randn(1, embed_dim, grid, grid),
        "point_coords": torch.randint(0, 512, (1, n_points, 2), dtype=torch.float32),
        "point_labels": torch.randint(0, 4, (1, n_points), dtype=torch.float32),
        "mask_input": torch.randn(1, 1, 4 * grid, 4 * grid),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([321.0, 481.0]),
    }


def decoder_outputs_and_axes(return_extra_metrics: bool) -> tuple[list[str], dict]:
    """The output names and dynamic axes every decoder graph shares (any number of points,
    masks of the original image's size)."""
    outputs = DECODER_OUTPUTS + (EXTRA_OUTPUTS if return_extra_metrics else [])
    dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}, "masks": {2: "height", 3: "width"}}
    return outputs, dynamic


def export_decoder(
    model: Sam,
    path: str | os.PathLike,
    *,
    return_single_mask: bool = False,
    use_stability_score: bool = False,
    return_extra_metrics: bool = False,
    quantize: bool = False,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write the decoder ONNX file (temp file, then rename); returns its path.

    ``quantize`` applies onnxruntime's uint8 dynamic quantisation (weights of MatMul/Gemm
    layers only; the convolutions and everything else stay float32), which makes the file
    about 2.3x smaller (the default model's decoder: 20.6 MB -> 8.9 MB) at a small accuracy
    cost -- not the 4x that uint8 weights alone would suggest.

    The graph is traced on the CPU in float32 (a copy, when ``model`` is on another device or
    in another dtype: the caller's model is left where it is).
    """
    wrapper = SamOnnxDecoder(
        cpu_float32(model),
        return_single_mask=return_single_mask,
        use_stability_score=use_stability_score,
        return_extra_metrics=return_extra_metrics,
    ).eval()
    grid = model.prompt_encoder.image_embedding_size[0]
    inputs = decoder_example_inputs(embed_dim=model.prompt_encoder.embed_dim, grid=grid)
    outputs, dynamic = decoder_outputs_and_axes(return_extra_metrics)
    return write_onnx(wrapper, tuple(inputs.values()), path, DECODER_INPUTS, outputs, dynamic, opset, quantize)


def export_encoder(
    model: Sam,
    path: str | os.PathLike,
    *,
    with_preprocess: bool = False,
    quantize: bool = False,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write the image-encoder ONNX file (temp file, then rename); returns its path.

    Traced on the CPU in float32, like :func:`export_decoder`."""
    wrapper = SamOnnxEncoder(cpu_float32(model), with_preprocess=with_preprocess).eval()
    size = int(model.img_size)
    if with_preprocess:
        example = torch.randint(0, 256, (size * 3 // 4, size, 3), dtype=torch.uint8)
        names, dynamic = ["input_image"], {"input_image": {0: "height", 1: "width"}}
    else:
        example = torch.randn(1, 3, size, size)
        names, dynamic = ["image"], {}
    return write_onnx(wrapper, (example,), path, names, ["image_embeddings"], dynamic, opset, quantize)


def _quantize_in_place(path: Path) -> None:
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:  # pragma: no cover - onnxruntime is a dependency
        raise RuntimeError("uint8 quantisation needs onnxruntime (pip install onnxruntime)") from exc
    with atomic_path(path) as q:
        quantize_dynamic(str(path), str(q), weight_type=QuantType.QUInt8, per_channel=False, reduce_range=False)


def decoder_feeds(
    embedding,
    point_coords,
    point_labels,
    original_size: tuple[int, int],
    box=None,
    mask_input=None,
) -> dict:
    """Numpy feeds for the decoder from *input-frame* prompts (adds the padding point when
    there is no box, packs a box as labels 2/3), the way the page builds them."""
    import numpy as np

    coords = np.zeros((0, 2), np.float32) if point_coords is None else np.asarray(point_coords, np.float32).reshape(-1, 2)
    labels = np.zeros((0,), np.float32) if point_labels is None else np.asarray(point_labels, np.float32).reshape(-1)
    if box is not None:
        coords = np.concatenate([coords, np.asarray(box, np.float32).reshape(2, 2)])
        labels = np.concatenate([labels, np.array([2, 3], np.float32)])
    else:
        coords = np.concatenate([coords, np.zeros((1, 2), np.float32)])
        labels = np.concatenate([labels, np.array([-1], np.float32)])
    has_mask = mask_input is not None
    mask = np.zeros((1, 1, 256, 256), np.float32) if mask_input is None else np.asarray(mask_input, np.float32).reshape(1, 1, 256, 256)
    emb = embedding.detach().cpu().numpy() if hasattr(embedding, "detach") else np.asarray(embedding)
    return {
        "image_embeddings": emb.astype(np.float32),
        "point_coords": coords[None],
        "point_labels": labels[None],
        "mask_input": mask,
        "has_mask_input": np.array([1.0 if has_mask else 0.0], np.float32),
        "orig_im_size": np.array(original_size, np.float32),
    }
