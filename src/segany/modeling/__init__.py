"""The model of paper section 3 / appendix A.

The building blocks are named after the paper (image_encoder, prompt_encoder, transformer,
mask_decoder, sam). Around them: config.py says what each model is, build.py builds one
(and holds the official ``sam_model_registry``), checkpoint.py reads, checks, loads and
saves weight files, and convert_hf.py renames Hugging Face keys.
"""

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from .sam import Sam
from .transformer import TwoWayTransformer

__all__ = ["ImageEncoderViT", "MaskDecoder", "PositionEmbeddingRandom", "PromptEncoder", "Sam", "TwoWayTransformer"]
