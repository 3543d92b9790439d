"""The model of paper section 3 / appendix A."""

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from .sam import Sam
from .transformer import TwoWayTransformer

__all__ = ["ImageEncoderViT", "MaskDecoder", "PositionEmbeddingRandom", "PromptEncoder", "Sam", "TwoWayTransformer"]
