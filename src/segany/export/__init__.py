"""Model export: ONNX files for the decoder (official signature) and the image encoder."""

from .onnx import SamOnnxDecoder, SamOnnxEncoder, decoder_feeds, export_decoder, export_encoder

__all__ = ["SamOnnxDecoder", "SamOnnxEncoder", "decoder_feeds", "export_decoder", "export_encoder"]
