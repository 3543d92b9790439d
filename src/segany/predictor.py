"""SamPredictor: compute an image embedding once, then answer many prompts cheaply.

The official API and semantics are kept exactly (``set_image``, ``predict`` returning numpy
``(masks, iou_predictions, low_res_masks)``, ``predict_torch``, ...). Additions:

- ``predict`` accepts N boxes (Nx4), N point sets (NxKx2 with NxK labels) and N mask inputs
  (Nx1x256x256) and returns N results in one call (leading N axis);
- ``set_images`` / ``predict_batch``: several images, each with its own prompts;
- ``save_embedding`` / ``load_embedding``: keep an embedding in a file (a server computes it
  once);
- ``text_embedding=``: a precomputed text embedding as a prompt, for models with a
  text-projection head (paper section 7.5);
- every input is validated and a bad one raises ``ValueError`` naming the problem;
- half precision: a model moved to ``torch.bfloat16``/``torch.float16`` runs end to end
  (inputs are fed in the model's dtype; scores and logits come back as float32).

What the official predictor accepts, this one accepts with the same outputs: points and
boxes outside the image (a :class:`PromptOutsideImageWarning` says so, since it is usually a
frame mistake) and ``predict()`` with no prompt at all. What the official cannot handle
(NaN, wrong shapes, unknown labels) and prompt sets too large to decode in reasonable time
(more than :data:`MAX_POINTS` points per set or :data:`MAX_PROMPTS` sets) raise.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .embeddings import load_embedding_file, save_embedding_file
from .image_io import to_rgb_uint8
from .modeling import MaskDecoder, PromptEncoder, Sam
from .modeling.cached_decoder import decode_cached
from .modeling.decoder_cache import DecoderImageCache, MaskPrompt
from .modeling.mask_upsampling import upsample_low_res_banded
from .modeling.workspace import Workspace
from .transforms import ResizeLongestSide

LOW_RES = 256  # side of the decoder's low-resolution logits and of mask_input
MAX_POINTS = 4096
"""Most points in one prompt set. The decoder attends between all prompt tokens, so time
grows with the square of their number: 100,000 points took over 150 s on a CPU, and no
interactive use needs anywhere near 4096."""
MAX_PROMPTS = 4096
"""Most prompt sets (boxes, point sets, mask inputs, text embeddings) in one ``predict``
call; each returns full-resolution masks, so more would be an out-of-memory in disguise."""


class PromptOutsideImageWarning(UserWarning, ValueError):
    """A point or box lies (partly) outside the image.

    The official predictor encodes such prompts as given, so segany does too and only
    warns. It is also a ``ValueError`` so that a caller who wants the strict behaviour can
    turn it into the error it used to be, e.g.
    ``warnings.simplefilter("error", PromptOutsideImageWarning)``, and keep catching
    ``ValueError``.
    """


@dataclass
class ImageState:
    """What the predictor keeps per image: its embedding and its frames."""

    features: torch.Tensor  # 1x256x64x64
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    decoder_cache: DecoderImageCache | None = field(default=None, repr=False)
    # which decoder (module id, dtype) built decoder_cache: a half-precision model decodes
    # through a float32 copy, and a cache of one must not serve the other
    decoder_cache_owner: tuple[int, torch.dtype] | None = field(default=None, repr=False)


class SamPredictor:
    """Interactive predictor over one image (or a batch of images, see :meth:`set_images`)."""

    def __init__(self, sam_model: Sam, decoder_dtype: torch.dtype | None = None) -> None:
        """
        Args:
            sam_model: the model; it may have been moved to ``torch.bfloat16`` or
                ``torch.float16`` (``sam.to(torch.bfloat16)``).
            decoder_dtype: precision of the prompt encoder and mask decoder. ``None``
                (default): the model's own dtype for float32 models, and float32 for
                half-precision ones, which then decode through a float32 copy of those two
                small modules (4 M parameters; the image encoder, where nearly all the
                compute is, stays in half precision). The decoder's logits sit close to
                the mask threshold and a bf16 two-way transformer moves it: on the 50
                GrabCut photos with the default model, one click each, the top mask's IoU
                with fp32 was at least 0.965 with a bf16 decoder and at least 0.987 this
                way. Pass the model's half dtype to decode in half precision anyway.
        """
        self.model = sam_model
        self.decoder_dtype = decoder_dtype
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self._batch: list[ImageState] = []
        self._decode_copy: tuple[tuple, PromptEncoder, MaskDecoder] | None = None
        # scratch buffers of the cached decoder, kept between calls (per thread): an
        # interactive click then touches no fresh memory (modeling/workspace.py says why)
        self._workspace = Workspace()
        self.reset_image()

    # ------------------------------------------------------------------ image embedding

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of an HxWxC uint8 image (grayscale, RGBA and 16-bit images
        are converted; see :func:`segany.image_io.to_rgb_uint8`)."""
        input_image, original_size = self._prepare_image(image, image_format)
        self.set_torch_image(input_image, original_size)

    def _prepare_image(self, image: np.ndarray, image_format: str) -> tuple[torch.Tensor, tuple[int, int]]:
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        image = to_rgb_uint8(image)
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        h, w = image.shape[:2]
        new_h, new_w = self.transform.get_preprocess_shape(h, w, self.transform.target_length)
        if new_h == 0 or new_w == 0:
            raise ValueError(
                f"image of {w}x{h} pixels is too elongated: resized to {new_w}x{new_h} it has no pixels"
            )
        resized = np.array(self.transform.apply_image(image))  # writable copy for torch
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        return tensor, (h, w)

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Compute the embedding of a 1x3xHxW image already resized to the input frame."""
        size = self.model.image_encoder.img_size
        if (
            not isinstance(transformed_image, torch.Tensor)
            or transformed_image.ndim != 4
            or transformed_image.shape[1] != 3
            or max(transformed_image.shape[2:]) != size
        ):
            shape = tuple(getattr(transformed_image, "shape", ()))
            raise ValueError(f"set_torch_image input must be BCHW with long side {size}, got shape {shape}")
        self.reset_image()
        self._set_state(self._encode(transformed_image, original_image_size))

    def _encode(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> ImageState:
        features = self.model.image_encoder(self.model.preprocess(transformed_image))
        return ImageState(
            features=features.contiguous(),
            original_size=(int(original_image_size[0]), int(original_image_size[1])),
            input_size=(int(transformed_image.shape[-2]), int(transformed_image.shape[-1])),
        )

    @torch.no_grad()
    def embed(self, image: np.ndarray, image_format: str = "RGB") -> ImageState:
        """The embedding and frames of an image, *without* making it the current image.

        For callers that keep several embeddings alive beside the current one, e.g. the
        zoom-in refinement (:mod:`segany.zoom_in`), which encodes one crop per object while
        the whole image stays set. Decode with :meth:`predict_torch_on`.
        """
        input_image, original_size = self._prepare_image(image, image_format)
        return self._encode(input_image, original_size)

    def _set_state(self, state: ImageState) -> None:
        # One memory layout whatever the source (encoder output, batch slice, embedding file):
        # the decoder's matmuls then round identically, so a loaded embedding reproduces
        # predictions bit for bit.
        state.features = state.features.contiguous()
        self._state = state
        self.features = state.features
        self.original_size = state.original_size
        self.input_size = state.input_size
        self.orig_h, self.orig_w = state.original_size
        self.input_h, self.input_w = state.input_size
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The 1x256x64x64 embedding of the current image."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        return self.features

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _decoder_dtype(self) -> torch.dtype:
        """The floating dtype the prompt encoder and decoder run in (see ``decoder_dtype``)."""
        model_dtype = self.model.mask_decoder.iou_token.weight.dtype
        if self.decoder_dtype is not None:
            return self.decoder_dtype
        return torch.float32 if model_dtype in (torch.float16, torch.bfloat16) else model_dtype

    def _decode_modules(self) -> tuple[PromptEncoder, MaskDecoder]:
        """(prompt encoder, mask decoder) to decode with: the model's own when they already
        run in :meth:`_decoder_dtype`, else a copy in that dtype, rebuilt whenever the
        model's parameters change (a new state dict, an optimiser step, ``.to()``)."""
        pe, dec = self.model.prompt_encoder, self.model.mask_decoder
        dtype = self._decoder_dtype()
        if dec.iou_token.weight.dtype == dtype:
            self._decode_copy = None
            return pe, dec
        tensors = [*pe.parameters(), *pe.buffers(), *dec.parameters(), *dec.buffers()]
        key = (dtype, *((t.device, t.dtype, t.data_ptr(), t._version) for t in tensors))
        if self._decode_copy is None or self._decode_copy[0] != key:
            pe_copy = copy.deepcopy(pe).to(dtype).eval()
            dec_copy = copy.deepcopy(dec).to(dtype).eval()
            self._decode_copy = (key, pe_copy, dec_copy)
            for state in [self._state, *self._batch]:
                if state is not None:
                    state.decoder_cache = None  # built from the previous weights
        return self._decode_copy[1], self._decode_copy[2]

    def reset_image(self) -> None:
        """Forget the current image (and any batch set with :meth:`set_images`)."""
        self.is_image_set = False
        self.features = None
        self.orig_h = None
        self.orig_w = None
        self.input_h = None
        self.input_w = None
        self._state: ImageState | None = None
        self._batch = []

    # ------------------------------------------------------------------ prompts -> masks

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        text_embedding: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for prompts given in the original image frame.

        Args:
            point_coords: Kx2 (x, y) pixels, or NxKx2 for N point sets.
            point_labels: K (or NxK) labels: 1 foreground, 0 background, -1 ignored.
            box: 4 (XYXY) or Nx4 for N boxes.
            mask_input: 1x256x256 low-res logits from an earlier call (or Nx1x256x256).
            multimask_output: 3 masks (whole/part/subpart) instead of 1.
            return_logits: unthresholded logits instead of boolean masks.
            text_embedding: D (or NxD) text embedding, for models with a text head.
        Returns:
            masks CxHxW, iou_predictions C, low_res_masks Cx256x256; with a leading N axis
            when any prompt was given in batched form.
        """
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        return self._predict_numpy(
            self._state, point_coords, point_labels, box, mask_input, multimask_output, return_logits, text_embedding
        )

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        text_embedding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prediction with prompts already in the *input* frame (see
        ``predictor.transform``): point_coords BxNx2, point_labels BxN, boxes Bx4,
        mask_input Bx1x256x256, text_embedding BxD. Returns BxCxHxW masks, BxC scores and
        BxCx256x256 low-res logits; scores and logits are float32 whatever the model's dtype."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        return self._predict_state(
            self._state, point_coords, point_labels, boxes, mask_input, multimask_output, return_logits, text_embedding
        )

    @torch.no_grad()
    def predict_torch_on(
        self,
        state: ImageState,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`predict_torch` on an embedding from :meth:`embed` instead of the current image
        (prompts in *that* image's input frame)."""
        return self._predict_state(
            state, point_coords, point_labels, boxes, mask_input, multimask_output, return_logits, None
        )

    def _predict_state(
        self,
        state: ImageState,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
        return_logits: bool,
        text_embedding: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if point_coords is not None and point_labels is None:
            raise ValueError("point_labels must be supplied if point_coords is supplied.")
        points = (point_coords, point_labels) if point_coords is not None else None
        batch = max(
            (t.shape[0] for t in (point_coords, boxes, mask_input, text_embedding) if t is not None), default=1
        )
        if points is not None and points[0].shape[0] == 1 and batch > 1:
            points = (points[0].expand(batch, -1, -1), points[1].expand(batch, -1))
        if boxes is not None and boxes.shape[0] == 1 and batch > 1:
            boxes = boxes.expand(batch, -1)
        if text_embedding is not None and text_embedding.shape[0] == 1 and batch > 1:
            text_embedding = text_embedding.expand(batch, -1)
        prompt_encoder, mask_decoder = self._decode_modules()
        dtype = self._decoder_dtype()
        if mask_input is not None:
            mask_input = mask_input.to(dtype)
        if text_embedding is not None:
            text_embedding = text_embedding.to(dtype)
        # Point and box coordinates stay float32 (the prompt encoder computes their Fourier
        # features in float32 and returns tokens in its own dtype: bf16 coordinates would be
        # off by up to 4 px at 1024).
        cached = not torch.is_grad_enabled()  # the cached path is inference-only
        # the cached path takes a mask prompt as a low-rank update of the image cache
        # (MaskPrompt), so the prompt encoder's full dense embedding is not needed there
        sparse, dense = prompt_encoder(
            points=points, boxes=boxes, masks=None if cached else mask_input, text=text_embedding
        )
        features = state.features if state.features.dtype == dtype else state.features.to(dtype)
        image_pe = prompt_encoder.get_dense_pe()
        if not cached:
            # with autograd on, the official computation
            low_res, iou = mask_decoder(features, image_pe, sparse, dense, multimask_output)
        else:
            low_res, iou = decode_cached(
                mask_decoder,
                self._decoder_cache(state, prompt_encoder, mask_decoder, features, image_pe),
                sparse,
                mask_decoder.output_slice(multimask_output),
                workspace=self._workspace,
                mask_prompt=None if mask_input is None else MaskPrompt.from_masks(prompt_encoder, mask_input),
            )
        # Scores and logits leave in float32 whatever the model's dtype (a no-op for fp32
        # models): numpy has no bfloat16, and the upsampling then interpolates in float32.
        low_res, iou = low_res.float(), iou.float()
        # Sam.postprocess_masks' values (to float rounding) as two banded matmuls, several
        # times faster than its two bilinear passes (see upsample_low_res_banded)
        masks = upsample_low_res_banded(low_res, state.input_size, state.original_size, self.model.img_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    @staticmethod
    def _decoder_cache(
        state: ImageState,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        features: torch.Tensor,
        image_pe: torch.Tensor,
    ) -> DecoderImageCache:
        """The prompt-independent decoder work for ``state``'s image (the first layer's image
        projections with the no-mask dense prompt, re-laid-out weights), built on first use
        and kept until the image or the decoding modules change."""
        owner = (id(mask_decoder), features.dtype)
        if state.decoder_cache is None or state.decoder_cache_owner != owner:
            no_mask = prompt_encoder.no_mask_dense(1, tuple(features.shape[-2:]))
            state.decoder_cache = DecoderImageCache.build(mask_decoder, features + no_mask, image_pe)
            state.decoder_cache_owner = owner
        return state.decoder_cache

    def _predict_numpy(
        self,
        state: ImageState,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask_output: bool,
        return_logits: bool,
        text_embedding: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        prompts = validate_prompts(
            state.original_size, point_coords, point_labels, box, mask_input, multimask_output, text_embedding
        )
        dev = self.device
        coords_t = labels_t = box_t = mask_t = text_t = None
        if prompts.point_coords is not None:
            coords = self.transform.apply_coords(prompts.point_coords, state.original_size)
            coords_t = torch.as_tensor(coords, dtype=torch.float, device=dev)
            labels_t = torch.as_tensor(prompts.point_labels, dtype=torch.int, device=dev)
        if prompts.box is not None:
            box_t = torch.as_tensor(self.transform.apply_boxes(prompts.box, state.original_size), dtype=torch.float, device=dev)
        if prompts.mask_input is not None:
            mask_t = torch.as_tensor(prompts.mask_input, dtype=torch.float, device=dev)
        if prompts.text_embedding is not None:
            text_t = torch.as_tensor(prompts.text_embedding, dtype=torch.float, device=dev)
        with torch.no_grad():
            logits, iou, low_res = self._predict_state(
                state, coords_t, labels_t, box_t, mask_t, bool(multimask_output), True, text_t
            )
        masks_np = logits.cpu().numpy()
        if not return_logits:
            # numpy's comparison is several times faster than torch's on CPU for this size
            masks_np = masks_np > self.model.mask_threshold
        iou_np = iou.cpu().numpy()
        low_np = low_res.cpu().numpy()
        if not prompts.batched:
            return masks_np[0], iou_np[0], low_np[0]
        return masks_np, iou_np, low_np

    # ------------------------------------------------------------------ several images

    @torch.no_grad()
    def set_images(self, images: list[np.ndarray], image_format: str = "RGB", batch_size: int = 4) -> None:
        """Embed several images (encoder batches of ``batch_size``) for :meth:`predict_batch`.

        The first image also becomes the current image of :meth:`predict`.
        """
        if not images:
            raise ValueError("set_images needs at least one image")
        prepared = [self._prepare_image(im, image_format) for im in images]
        size = self.model.image_encoder.img_size
        states: list[ImageState] = []
        for start in range(0, len(prepared), batch_size):
            chunk = prepared[start : start + batch_size]
            batch = torch.cat([self.model.preprocess(t) for t, _ in chunk], dim=0)
            assert batch.shape[-1] == size and batch.shape[-2] == size
            feats = self.model.image_encoder(batch)
            for (t, orig), f in zip(chunk, feats):
                states.append(ImageState(f[None], orig, (int(t.shape[-2]), int(t.shape[-1]))))
        self.reset_image()
        self._batch = states
        self._set_state(states[0])

    def predict_batch(
        self, prompts: list[dict], multimask_output: bool = True, return_logits: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """One result per image set with :meth:`set_images`; ``prompts[i]`` holds the keyword
        arguments of :meth:`predict` (``point_coords``, ``point_labels``, ``box``,
        ``mask_input``, ``text_embedding``) for image i."""
        if not self._batch:
            raise RuntimeError("Images must be set with .set_images([...]) before predict_batch.")
        if len(prompts) != len(self._batch):
            raise ValueError(f"got prompts for {len(prompts)} images, but {len(self._batch)} images are set")
        allowed = {"point_coords", "point_labels", "box", "mask_input", "text_embedding"}
        results = []
        for i, (state, p) in enumerate(zip(self._batch, prompts)):
            extra = set(p) - allowed
            if extra:
                raise ValueError(f"prompts[{i}] has unknown keys {sorted(extra)}; allowed: {sorted(allowed)}")
            results.append(
                self._predict_numpy(
                    state,
                    p.get("point_coords"),
                    p.get("point_labels"),
                    p.get("box"),
                    p.get("mask_input"),
                    multimask_output,
                    return_logits,
                    p.get("text_embedding"),
                )
            )
        return results

    # ------------------------------------------------------------------ embedding files

    def save_embedding(self, path: str | os.PathLike) -> None:
        """Write the current image's embedding and frames to a ``.safetensors`` file."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before saving its embedding.")
        save_embedding_file(path, self.model, self.features, self.original_size, self.input_size)

    def load_embedding(self, path: str | os.PathLike) -> None:
        """Make the embedding stored by :meth:`save_embedding` the current image; refuses a
        file written by a different model."""
        features, original_size, input_size = load_embedding_file(path, self.model)
        self.reset_image()
        # Held in the dtype set_image would give (the encoder's): a file written by the same
        # model in another precision then behaves like a fresh embedding.
        dtype = next((p.dtype for p in self.model.image_encoder.parameters() if p.is_floating_point()), None)
        self._set_state(ImageState(features.to(self.device, dtype), original_size, input_size))


# ---------------------------------------------------------------------- validation


@dataclass
class Prompts:
    point_coords: np.ndarray | None
    point_labels: np.ndarray | None
    box: np.ndarray | None
    mask_input: np.ndarray | None
    text_embedding: np.ndarray | None
    batched: bool


def _as_float_array(x: object, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got {type(x).__name__}") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def validate_prompts(
    original_size: tuple[int, int],
    point_coords: np.ndarray | None,
    point_labels: np.ndarray | None,
    box: np.ndarray | None,
    mask_input: np.ndarray | None,
    multimask_output: bool,
    text_embedding: np.ndarray | None,
) -> Prompts:
    """Check prompts in the original frame and bring them to batched form (leading N).

    Raises ``ValueError`` for what no predictor can encode meaningfully (NaN, wrong shapes,
    unknown labels, inverted boxes, prompt sets over the size caps); warns with
    :class:`PromptOutsideImageWarning` for points/boxes outside the image, which the
    official predictor encodes as given.
    """
    h, w = original_size
    if not isinstance(multimask_output, (bool, np.bool_)):
        raise ValueError(f"multimask_output must be a bool, got {type(multimask_output).__name__}")
    batched = False
    sizes: dict[str, int] = {}
    coords = labels = boxes = masks = text = None
    if point_coords is None and point_labels is not None:
        raise ValueError("point_labels given without point_coords")
    if point_coords is not None:
        if point_labels is None:
            raise ValueError("point_labels must be supplied if point_coords is supplied.")
        coords = _as_float_array(point_coords, "point_coords")
        labels_f = _as_float_array(point_labels, "point_labels")
        if coords.ndim == 2 and coords.shape[1] == 2:
            coords, labels_f = coords[None], labels_f[None] if labels_f.ndim == 1 else labels_f
        elif coords.ndim == 3 and coords.shape[2] == 2:
            batched = True
        else:
            raise ValueError(f"point_coords must be Kx2 or NxKx2, got shape {np.shape(point_coords)}")
        if labels_f.shape != coords.shape[:2]:
            raise ValueError(
                f"point_labels shape {np.shape(point_labels)} does not match point_coords shape "
                f"{np.shape(point_coords)} (one label per point)"
            )
        if coords.shape[1] == 0:
            raise ValueError("point_coords is empty; give at least one point or leave it None")
        if not np.isin(labels_f, (-1, 0, 1)).all():
            bad = labels_f[~np.isin(labels_f, (-1, 0, 1))][0]
            raise ValueError(f"point_labels must be 1 (foreground), 0 (background) or -1 (ignore); got {bad:g}")
        if coords.shape[1] > MAX_POINTS:
            raise ValueError(
                f"{coords.shape[1]} points in one prompt set; at most {MAX_POINTS} are accepted "
                "(the decoder's cost grows with the square of the number of points)"
            )
        labels = labels_f.astype(np.int64)
        real = labels != -1
        xs, ys = coords[..., 0][real], coords[..., 1][real]
        outside = (xs < 0) | (xs > w) | (ys < 0) | (ys > h)
        if outside.any():
            i = int(np.argmax(outside))
            warnings.warn(
                f"point ({xs[i]:g}, {ys[i]:g}) is outside the {w}x{h} image; it is encoded as given "
                "(as the official predictor does)",
                PromptOutsideImageWarning,
                stacklevel=4,
            )
        sizes["point_coords"] = coords.shape[0]
    if box is not None:
        boxes = _as_float_array(box, "box")
        if boxes.shape == (4,):
            boxes = boxes[None]
        elif boxes.ndim == 2 and boxes.shape[1] == 4:
            batched = True
        else:
            raise ValueError(f"box must be 4 (XYXY) or Nx4, got shape {np.shape(box)}")
        if boxes.shape[0] == 0:
            raise ValueError("box is empty (0x4); give at least one box or leave it None")
        inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if inverted.any():
            b = boxes[int(np.argmax(inverted))]
            raise ValueError(f"box {b.tolist()} has x1 < x0 or y1 < y0 (expected XYXY)")
        outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > w) | (boxes[:, 3] > h)
        if outside.any():
            b = boxes[int(np.argmax(outside))]
            warnings.warn(
                f"box {b.tolist()} extends outside the {w}x{h} image; it is encoded as given "
                "(as the official predictor does)",
                PromptOutsideImageWarning,
                stacklevel=4,
            )
        sizes["box"] = boxes.shape[0]
    if mask_input is not None:
        masks = _as_float_array(mask_input, "mask_input").astype(np.float32)
        if masks.shape == (1, LOW_RES, LOW_RES):
            masks = masks[None]
        elif masks.ndim == 4 and masks.shape[1:] == (1, LOW_RES, LOW_RES):
            batched = True
        else:
            raise ValueError(
                f"mask_input must be 1x{LOW_RES}x{LOW_RES} (low_res_masks[i:i+1] of an earlier call) "
                f"or Nx1x{LOW_RES}x{LOW_RES}, got shape {np.shape(mask_input)}"
            )
        sizes["mask_input"] = masks.shape[0]
    if text_embedding is not None:
        text = _as_float_array(text_embedding, "text_embedding").astype(np.float32)
        if text.ndim == 1:
            text = text[None]
        elif text.ndim == 2:
            batched = True
        else:
            raise ValueError(f"text_embedding must be D or NxD, got shape {np.shape(text_embedding)}")
        sizes["text_embedding"] = text.shape[0]
    # No prompt at all is what the official predictor answers with the decoder's output
    # tokens alone (and the no-mask dense prompt); the same call gives the same masks here.
    n = max(sizes.values(), default=1)
    if n > MAX_PROMPTS:
        name = max(sizes, key=lambda k: sizes[k])
        raise ValueError(f"{name} holds {n} prompt sets; at most {MAX_PROMPTS} are accepted per call (split the call)")
    for name, k in sizes.items():
        if k not in (1, n):
            raise ValueError(f"batched prompts disagree: {name} has {k} entries, others {n}")
    return Prompts(coords, labels, boxes, masks, text, batched)
