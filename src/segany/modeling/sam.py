"""The Sam module: image encoder + prompt encoder + mask decoder, with the pre- and
post-processing that maps between the original image frame and the model's frames.

Frames (most SAM bugs are frame bugs):
- *original*: the user's image, HxW.
- *input*: resized so the longest side is ``image_encoder.img_size`` (aspect kept), the
  frame of prompt coordinates given to the prompt encoder; padded bottom/right to a square.
- *low-res*: the decoder's 256x256 logits cover the whole padded square.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .mask_decoder import MaskDecoder
from .mask_upsampling import upsample_low_res
from .prompt_encoder import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Segment Anything model; same attribute names and forward contract as the official one."""

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, ...] | list[float] = PIXEL_MEAN,
        pixel_std: tuple[float, ...] | list[float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        if not hasattr(image_encoder, "img_size"):
            raise TypeError("the image encoder must expose img_size (the square input side)")
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        """Side of the square encoder input (1024 for the ViT models)."""
        return int(self.image_encoder.img_size)

    @torch.no_grad()
    def forward(self, batched_input: list[dict[str, Any]], multimask_output: bool) -> list[dict[str, torch.Tensor]]:
        """Official batched forward: one dict per image.

        Each dict has ``image`` (3xHxW, already resized to the input frame), ``original_size``
        (H, W) and optionally ``point_coords`` (BxNx2, input frame), ``point_labels`` (BxN),
        ``boxes`` (Bx4), ``mask_inputs`` (Bx1x256x256). Returns per image ``masks``
        (BxCxHxW bool, original frame), ``iou_predictions`` (BxC), ``low_res_logits``.
        """
        images = torch.stack([self.preprocess(x["image"]) for x in batched_input], dim=0)
        embeddings = self.image_encoder(images)
        outputs = []
        for record, embedding in zip(batched_input, embeddings):
            points = None
            if "point_coords" in record:
                points = (record["point_coords"], record["point_labels"])
            sparse, dense = self.prompt_encoder(
                points=points, boxes=record.get("boxes"), masks=record.get("mask_inputs")
            )
            low_res, iou = self.mask_decoder(
                image_embeddings=embedding.unsqueeze(0),
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(low_res, record["image"].shape[-2:], record["original_size"])
            outputs.append(
                {"masks": masks > self.mask_threshold, "iou_predictions": iou, "low_res_logits": low_res}
            )
        return outputs

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
    ) -> torch.Tensor:
        """Low-res logits BxCx256x256 -> BxCxHxW logits in the original frame.

        Same result as upsampling to the padded square, cropping the input region and
        resizing to the original size, but the padding is never computed
        (:func:`segany.modeling.mask_upsampling.upsample_low_res`).
        """
        return upsample_low_res(masks, input_size, original_size, self.img_size)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a 3xHxW (or Bx3xHxW) input-frame image and pad it to the square.

        The normalisation runs in float32 and the result is cast to the image encoder's
        dtype, so a model moved to bf16/fp16 gets inputs it can consume (a uint8 image minus
        a bf16 mean would be computed at bf16 precision, and a float32 image would not fit a
        half-precision convolution). For float32 models nothing changes.
        """
        mean, std = self.pixel_mean, self.pixel_std
        if mean.dtype != torch.float32:
            mean, std = mean.float(), std.float()
        x = (x - mean) / std
        h, w = x.shape[-2:]
        x = F.pad(x, (0, self.img_size - w, 0, self.img_size - h))
        dtype = _floating_dtype(self.image_encoder)
        return x if dtype is None or x.dtype == dtype else x.to(dtype)


def _floating_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of a module's first floating-point parameter (None if it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return None

