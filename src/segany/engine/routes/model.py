"""The model side the page needs: what model runs (``/api/model``) and its decoder as ONNX,
which the page runs itself on each embedding: ``/api/decoder.onnx`` (the official contract,
used for clicks that feed the previous mask back) and the per-click pair
``/api/decoder_cache.onnx`` (once per image) + ``/api/decoder_click.onnx`` (every click
without a mask prompt; :mod:`segany.export.onnx_click`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from ..security import Annotator
from ..served_model import decoder_export_copy
from .context import Context
from .page import ort_dist_dir

router = APIRouter()


@router.get("/api/model")
def model_info(ctx: Context, annotator: Annotator) -> dict:
    config = ctx.config
    return {
        "img_size": ctx.model.img_size,
        "model_version": config.model_version,
        "is_trained": bool(getattr(ctx.model, "is_trained", False)),
        "annotator": annotator,
        "ort_available": ort_dist_dir() is not None,
        "max_pixels": config.max_pixels,
    }


def _exported(ctx: Context, name: str, export) -> Response:
    """``export(model, path, quantize=...)``'s file, written once per encoder fingerprint and
    option into the cache folder, then served from there."""
    config = ctx.config
    suffix = "-uint8" if config.quantized_decoder else ""
    path = config.cache_dir / f"{name}-{ctx.embeddings.fingerprint}{suffix}.onnx"
    with ctx.decoder_lock:
        if not path.is_file():
            export(decoder_export_copy(ctx.model), path, quantize=config.quantized_decoder)
    return FileResponse(path, media_type="application/octet-stream")


@router.get("/api/decoder.onnx")
def decoder(ctx: Context, _: Annotator) -> Response:
    """The official-contract decoder (image embedding, prompts, optional mask prompt)."""
    from ...export.onnx import export_decoder

    return _exported(ctx, "decoder", export_decoder)


@router.get("/api/decoder_cache.onnx")
def decoder_cache(ctx: Context, _: Annotator) -> Response:
    """Image embedding -> the decoder's per-image cache tensors."""
    from ...export.onnx_click import export_decoder_cache

    return _exported(ctx, "decoder_cache", export_decoder_cache)


@router.get("/api/decoder_click.onnx")
def decoder_click(ctx: Context, _: Annotator) -> Response:
    """Cache tensors + prompts -> masks: a click's prompt-dependent work only."""
    from ...export.onnx_click import export_click_decoder

    return _exported(ctx, "decoder_click", export_click_decoder)
