"""The model side the page needs: what model runs (``/api/model``) and its decoder as ONNX
(``/api/decoder.onnx``), which the page runs itself on each embedding."""

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


@router.get("/api/decoder.onnx")
def decoder(ctx: Context, _: Annotator) -> Response:
    """The decoder exported once per encoder fingerprint and option, then served from the cache."""
    from ...export.onnx import export_decoder

    config = ctx.config
    suffix = "-uint8" if config.quantized_decoder else ""
    path = config.cache_dir / f"decoder-{ctx.embeddings.fingerprint}{suffix}.onnx"
    with ctx.decoder_lock:
        if not path.is_file():
            export_decoder(decoder_export_copy(ctx.model), path, quantize=config.quantized_decoder)
    return FileResponse(path, media_type="application/octet-stream")
