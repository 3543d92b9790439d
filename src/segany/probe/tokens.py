"""The mask decoder's output tokens: what the decoder "thinks" a mask is, as one vector.

After the two-way transformer each mask token has attended to the prompt and to the whole
image; its 256-d state is what the hypernetwork turns into that mask's classifier, so it
summarises the mask in the decoder's own latent space (paper appendix D.6 probes that space).
No existing API returns it -- :meth:`MaskDecoder.forward` and the predictor give masks and
IoUs only -- so :func:`decode_with_tokens` runs the decoder's public pieces (the cached
inference path of :mod:`segany.modeling.cached_decoder`, which the predictor itself uses)
and keeps the token next to the mask and IoU it produced. Nothing about the existing
outputs changes; ``tests/test_probe.py`` checks that the masks are the predictor's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..modeling import Sam
from ..modeling.cached_decoder import DECODE_CHUNK, cached_masks, cached_transformer
from ..modeling.decoder_cache import DecoderImageCache


@dataclass(frozen=True)
class DecodedTokens:
    """What the decoder gave for B prompt sets (M = 1 single-output or 3 multimask outputs)."""

    low_res: torch.Tensor
    """BxMx(4h)x(4w) low-res mask logits, exactly as the predictor's ``low_res_masks``."""
    iou: torch.Tensor
    """BxM predicted IoUs."""
    mask_tokens: torch.Tensor
    """BxMxC transformer outputs of the mask tokens that produced those masks."""


def decoder_cache(model: Sam, image_embedding: torch.Tensor) -> DecoderImageCache:
    """The prompt-independent decoder work for one 1xCxHxW image embedding (build once per
    image, reuse for all its prompts)."""
    decoder, pe = model.mask_decoder, model.prompt_encoder
    dtype = decoder.iou_token.weight.dtype
    features = image_embedding.to(dtype)
    no_mask = pe.no_mask_dense(1, tuple(features.shape[-2:]))
    return DecoderImageCache.build(decoder, features + no_mask, pe.get_dense_pe())


@torch.no_grad()
def decode_with_tokens(
    model: Sam,
    cache: DecoderImageCache,
    point_coords: torch.Tensor | None,
    point_labels: torch.Tensor | None,
    boxes: torch.Tensor | None,
    multimask_output: bool = False,
) -> DecodedTokens:
    """Decode B prompt sets given in the model's *input* frame (as ``predict_torch``:
    point_coords BxKx2, point_labels BxK, boxes Bx4) and return masks, IoUs and the output
    tokens of the mask tokens that made them.

    Token ``i`` of :meth:`MaskDecoder.output_slice` sits at position ``1 + i`` of the
    transformer output (position 0 is the IoU token), which is what the hypernetwork of
    mask ``i`` reads.
    """
    decoder = model.mask_decoder
    points = None if point_coords is None else (point_coords, point_labels)
    sparse, _ = model.prompt_encoder(points=points, boxes=boxes, masks=None)
    mask_slice = decoder.output_slice(multimask_output)
    token_index = list(range(decoder.num_mask_tokens))[mask_slice]
    low_res, iou, tokens = [], [], []
    for s in range(0, max(sparse.shape[0], 1), DECODE_CHUNK):
        hs, keys = cached_transformer(decoder, cache, sparse[s : s + DECODE_CHUNK])
        low_res.append(cached_masks(decoder, cache, hs, keys, mask_slice))
        iou.append(decoder.predict_iou(hs, mask_slice))
        tokens.append(hs[:, [1 + i for i in token_index], :])
    return DecodedTokens(torch.cat(low_res).float(), torch.cat(iou).float(), torch.cat(tokens).float())
