"""``segany probe embed``: one embedding per mask, two ways (paper appendix D.6).

For each image the encoder runs once; then, per mask,

- **token**: the model is prompted with the mask's tight box *and* a foreground click at its
  centre (:func:`~segany.probe.features.centre_point`), and the mask decoder's output token
  of the mask it returns is kept (:func:`~segany.probe.tokens.decode_with_tokens`). Why box
  plus point: two prompts put SAM in its single-output regime, so every mask's token is the
  same learned query (mask token 0) and the tokens share one space; with a single point or
  box, the three multimask outputs are three different queries (whole/part/subpart) and a
  similarity search would find "other masks picked by token 2" before "other dogs". The box
  fixes the extent, the click inside disambiguates a box that frames two objects. How
  faithfully the decoder reproduced the annotation is stored (``decoded_iou``): a token of
  a wrong mask describes that wrong mask. ``prompt="box"`` drops the click, to compare.
- **pooled**: the image embedding averaged over the cells the mask covers, each weighted by
  its covered fraction (:func:`~segany.probe.features.grid_weights`), the paper's
  probe.
- **colour**: an HSV histogram of the pixels inside, the baseline a linear probe should beat.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..file_hash import file_sha256
from ..image_io import load_image
from ..masks import batched_mask_to_box, mask_iou, rle_to_mask
from ..modeling import Sam
from ..modeling.fingerprint import image_encoder_digest, sampled_weights_digest
from ..predictor import SamPredictor
from .features import centre_point, colour_histogram, grid_weights, hsv_bin_index, pooled_embeddings
from .sources import ImageMasks
from .store import MaskEmbeddings
from .tokens import decode_with_tokens, decoder_cache

PROMPTS = ("box+point", "box")
CHUNK = 16  # masks decoded and pooled together (full-size masks of one chunk in memory at once)


def embed_masks(
    model: Sam,
    items: Sequence[ImageMasks],
    dataset: str,
    prompt: str = "box+point",
    meta: dict | None = None,
    progress: bool = True,
) -> MaskEmbeddings:
    """Embed every mask of ``items`` with ``model`` (see the module docstring).

    Raises ValueError when an image's size differs from what its mask file says (the masks
    would be laid over the wrong pixels) or two images given share a file name (mask ids
    are ``<image name>:<annotation id>``).
    """
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")
    names: dict[str, Path] = {}
    for item in items:
        other = names.setdefault(item.image_path.name, item.image_path)
        if other != item.image_path:
            raise ValueError(
                f"two images are named {item.image_path.name} ({other}, {item.image_path}); "
                "mask ids need unique image names (embed them in separate runs)"
            )
    predictor = SamPredictor(model)
    rows: dict[str, list] = {
        k: []
        for k in (
            "token",
            "pooled",
            "colour",
            "mask_id",
            "image",
            "annotation_id",
            "label",
            "category",
            "image_path",
            "image_sha256",
            "mask_file",
            "rle_size",
            "rle_counts",
            "box",
            "point",
            "area",
            "predicted_iou",
            "decoded_iou",
        )
    }
    total = sum(len(item.annotations) for item in items)
    bar = tqdm(total=total, desc="embed", unit="mask", disable=not progress, file=sys.stderr)
    for item in items:
        image = load_image(item.image_path)
        if image.shape[:2] != (item.height, item.width):
            raise ValueError(
                f"{item.mask_file}: masks are {item.width}x{item.height} but image {item.image_path} is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        predictor.set_image(image)
        digest = file_sha256(item.image_path)
        bins = hsv_bin_index(image)
        _embed_image(model, predictor, item, bins, prompt, rows, bar)
        n = len(item.annotations)
        rows["image"] += [item.image_path.name] * n
        rows["image_path"] += [str(item.image_path.resolve())] * n
        rows["image_sha256"] += [digest] * n
        rows["mask_file"] += [str(item.mask_file.resolve())] * n
    bar.close()
    ids, counts = np.unique(np.asarray(rows["mask_id"], dtype=str), return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"mask id {ids[np.argmax(counts > 1)]} occurs {counts.max()} times (an image named by two "
            "mask files, or repeated annotation ids); mask ids must be unique"
        )
    c = model.mask_decoder.transformer_dim
    arrays = {
        "token": np.asarray(rows["token"], dtype=np.float16).reshape(-1, c),
        "pooled": np.asarray(rows["pooled"], dtype=np.float16).reshape(len(rows["mask_id"]), -1),
        "colour": np.asarray(rows["colour"], dtype=np.float16).reshape(len(rows["mask_id"]), -1),
        "rle_size": np.asarray(rows["rle_size"], dtype=np.int64).reshape(-1, 2),
        "box": np.asarray(rows["box"], dtype=np.float32).reshape(-1, 4),
        "point": np.asarray(rows["point"], dtype=np.float32).reshape(-1, 2),
        "annotation_id": np.asarray(rows["annotation_id"], dtype=np.int64),
        "area": np.asarray(rows["area"], dtype=np.int64),
        "predicted_iou": np.asarray(rows["predicted_iou"], dtype=np.float32),
        "decoded_iou": np.asarray(rows["decoded_iou"], dtype=np.float32),
    }
    for k in ("mask_id", "image", "label", "category", "image_path", "image_sha256", "mask_file", "rle_counts"):
        arrays[k] = np.asarray(rows[k], dtype=str)
    arrays["dataset"] = np.array([dataset] * len(arrays["mask_id"]), dtype=str)
    info = {
        "model": sampled_weights_digest(model),
        "encoder": image_encoder_digest(model),
        "prompt": prompt,
        "token_source": "mask decoder output token 0 (single-output), transformer output before the hypernetwork",
        "pooled_source": "image embedding averaged inside the mask, cells weighted by covered area",
        "colour_source": "HSV histogram 8x4x4 of the pixels inside the mask, normalised",
        **(meta or {}),
    }
    return MaskEmbeddings(**arrays, meta=info)


def _embed_image(
    model: Sam,
    predictor: SamPredictor,
    item: ImageMasks,
    bins: np.ndarray,
    prompt: str,
    rows: dict[str, list],
    bar: tqdm,
) -> None:
    """Append the rows of one image's masks (its embedding is set in ``predictor``)."""
    features = predictor.get_image_embedding()
    cache = decoder_cache(model, features)
    grid = tuple(features.shape[-2:])
    dev = predictor.device
    for start in range(0, len(item.annotations), CHUNK):
        anns = item.annotations[start : start + CHUNK]
        masks = np.stack([rle_to_mask(a.rle) for a in anns])
        areas = masks.reshape(len(anns), -1).sum(axis=1)
        if (areas == 0).any():
            k = int(np.argmax(areas == 0))
            raise ValueError(f"{item.mask_file}: mask {anns[k].ann_id} of {item.image_path.name} is empty")
        boxes = batched_mask_to_box(masks).numpy().astype(np.float64)
        points = np.array([centre_point(m) for m in masks], dtype=np.float64)
        box_t = torch.as_tensor(
            predictor.transform.apply_boxes(boxes, predictor.original_size), dtype=torch.float, device=dev
        )
        coords_t = labels_t = None
        if prompt == "box+point":
            coords = predictor.transform.apply_coords(points[:, None, :], predictor.original_size)
            coords_t = torch.as_tensor(coords, dtype=torch.float, device=dev)
            labels_t = torch.ones(coords_t.shape[:2], dtype=torch.int, device=dev)
        out = decode_with_tokens(model, cache, coords_t, labels_t, box_t, multimask_output=False)
        decoded = (
            model.postprocess_masks(out.low_res, predictor.input_size, predictor.original_size)[:, 0]
            > model.mask_threshold
        )
        masks_t = torch.as_tensor(masks, device=dev)
        weights = grid_weights(masks_t, predictor.input_size, model.img_size, grid)
        rows["token"] += list(out.mask_tokens[:, 0].cpu().numpy())
        rows["pooled"] += list(pooled_embeddings(features, weights).cpu().numpy())
        rows["decoded_iou"] += mask_iou(decoded, masks_t, pairwise=False).cpu().tolist()
        rows["predicted_iou"] += out.iou[:, 0].cpu().tolist()
        for a, m, box, pt, area in zip(anns, masks, boxes, points, areas):
            rows["colour"].append(colour_histogram(bins, m))
            rows["mask_id"].append(f"{item.image_path.name}:{a.ann_id}")
            rows["annotation_id"].append(a.ann_id)
            rows["label"].append(a.label)
            rows["category"].append(a.category)
            rows["rle_size"].append(a.rle["size"])
            rows["rle_counts"].append(a.rle["counts"])
            rows["box"].append(box)
            rows["point"].append(pt)
            rows["area"].append(int(area))
        bar.update(len(anns))
