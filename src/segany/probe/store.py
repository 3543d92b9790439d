"""The mask-embedding file: one ``embeddings.npz`` per ``segany probe embed`` run.

A plain NumPy archive read with ``allow_pickle=False`` (no code runs on load): per mask, the
decoder's output token and the pooled image embedding in float16 (half the size; cosine
similarities and the linear probe do not feel the rounding), the colour histogram baseline,
the mask itself as a COCO RLE string (so pictures need no mask file), ids, labels and
provenance; ``meta`` is a JSON string with the model's weights digest, the prompt and the
command. Files from different models cannot be mixed (their latent spaces differ):
:func:`concatenate` refuses them.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_files import atomic_path

FORMAT = "segany-mask-embeddings-v1"
FILE_NAME = "embeddings.npz"
FEATURES = ("token", "pooled", "colour")
"""Stored features: ``token`` (decoder output token), ``pooled`` (image embedding averaged
inside the mask), ``colour`` (HSV histogram of the pixels inside, the baseline)."""


@dataclass
class MaskEmbeddings:
    """N masks and their features; arrays are aligned on the first axis."""

    token: np.ndarray  # N x C float16
    pooled: np.ndarray  # N x C float16
    colour: np.ndarray  # N x 128 float16
    mask_id: np.ndarray  # N str: "<image file name>:<annotation id>"
    image: np.ndarray  # N str: image file name
    annotation_id: np.ndarray  # N int64
    dataset: np.ndarray  # N str
    label: np.ndarray  # N str: coarse class (COCO supercategory) or ""
    category: np.ndarray  # N str: fine class (COCO category) or ""
    image_path: np.ndarray  # N str: the image file embedded (absolute)
    image_sha256: np.ndarray  # N str: its content digest
    mask_file: np.ndarray  # N str: the mask file the annotation came from (absolute)
    rle_size: np.ndarray  # N x 2 int64 (h, w)
    rle_counts: np.ndarray  # N str: COCO compressed RLE counts
    box: np.ndarray  # N x 4 float32 XYXY prompt box, original frame
    point: np.ndarray  # N x 2 float32 prompt point (x, y), original frame
    area: np.ndarray  # N int64
    predicted_iou: np.ndarray  # N float32: the decoder's IoU prediction for its mask
    decoded_iou: np.ndarray  # N float32: IoU of the decoder's mask with the annotation
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.mask_id)

    def feature(self, name: str) -> np.ndarray:
        """One feature as float32 (N x D)."""
        if name not in FEATURES:
            raise ValueError(f"unknown feature {name!r}; choose one of {', '.join(FEATURES)}")
        return np.asarray(getattr(self, name), dtype=np.float32)

    def rle(self, i: int) -> dict[str, Any]:
        return {"size": [int(v) for v in self.rle_size[i]], "counts": str(self.rle_counts[i])}

    def select(self, index: np.ndarray) -> MaskEmbeddings:
        arrays = {f.name: getattr(self, f.name)[index] for f in fields(self) if f.name != "meta"}
        return MaskEmbeddings(**arrays, meta=dict(self.meta))


_ARRAYS = [f.name for f in fields(MaskEmbeddings) if f.name != "meta"]


def embeddings_path(path: str | os.PathLike) -> Path:
    """The embeddings file of ``path``: the file itself, or ``embeddings.npz`` in a folder."""
    p = Path(path)
    return p / FILE_NAME if p.is_dir() or p.suffix != ".npz" else p


def save(path: str | os.PathLike, emb: MaskEmbeddings) -> Path:
    """Write ``emb`` to ``path`` (a file, or a folder to hold ``embeddings.npz``) atomically."""
    target = embeddings_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.asarray(getattr(emb, name)) for name in _ARRAYS}
    for name in (
        "mask_id",
        "image",
        "dataset",
        "label",
        "category",
        "image_path",
        "image_sha256",
        "mask_file",
        "rle_counts",
    ):
        arrays[name] = arrays[name].astype(str)  # fixed-width unicode: readable without pickle
    meta = json.dumps({"format": FORMAT, **emb.meta})
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, meta=np.array(meta), **arrays)
    return target


def load(path: str | os.PathLike) -> MaskEmbeddings:
    """Read an embeddings file (or the one in a folder); ValueError if it is not one."""
    target = embeddings_path(path)
    if not target.is_file():
        raise ValueError(f"no mask embeddings at {path} (expected {target}; write it with `segany probe embed`)")
    try:
        with np.load(target, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"])) if "meta" in data else {}
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(f"{target} is not a segany mask-embeddings file")
            arrays = {name: data[name] for name in _ARRAYS}
    except (OSError, KeyError, EOFError, json.JSONDecodeError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read mask embeddings {target}: {type(exc).__name__}: {exc}") from None
    return MaskEmbeddings(**arrays, meta=meta)


def load_many(paths: list[str | os.PathLike]) -> MaskEmbeddings:
    """Several embedding files as one set (see :func:`concatenate`)."""
    if not paths:
        raise ValueError("no embedding folders given")
    return concatenate([load(p) for p in paths], [str(p) for p in paths])


def concatenate(parts: list[MaskEmbeddings], names: list[str] | None = None) -> MaskEmbeddings:
    """One set from several; refused when the parts come from different models (the weights digest or
    feature width differs), since their similarities would compare
    two unrelated latent spaces."""
    names = names or [f"part {i}" for i in range(len(parts))]
    first = parts[0]
    for name, part in zip(names[1:], parts[1:]):
        if part.meta.get("model") != first.meta.get("model") or part.token.shape[1:] != first.token.shape[1:]:
            raise ValueError(f"{name} was embedded by a different model than {names[0]}; embed both with the same one")
        if part.meta.get("prompt") != first.meta.get("prompt"):
            raise ValueError(
                f"{name} was embedded with prompt {part.meta.get('prompt')!r}, {names[0]} with "
                f"{first.meta.get('prompt')!r}; embed both the same way"
            )
    if len(parts) == 1:
        return first
    arrays = {name: np.concatenate([getattr(p, name) for p in parts]) for name in _ARRAYS}
    return MaskEmbeddings(**arrays, meta={**first.meta, "sources": names})


def find_mask(emb: MaskEmbeddings, query: str) -> int:
    """Index of the mask ``IMAGE:ANNOTATION_ID`` (or ``DATASET/IMAGE:ANNOTATION_ID`` when the
    image name occurs in several data sets); ``IMAGE`` may omit the extension."""
    if ":" not in query:
        raise ValueError(f"--query {query!r} must be IMAGE:MASK_ID (e.g. 000000262145.jpg:1234)")
    image, ann = query.rsplit(":", 1)
    dataset = None
    if "/" in image:
        dataset, image = image.rsplit("/", 1)
    try:
        ann_id = int(ann)
    except ValueError:
        raise ValueError(f"--query {query!r}: the mask id {ann!r} is not an integer") from None
    names = emb.image.astype(str)
    stems = np.array([Path(n).stem for n in names])
    hit = ((names == image) | (stems == image)) & (emb.annotation_id == ann_id)
    if dataset is not None:
        hit &= emb.dataset == dataset
    found = np.flatnonzero(hit)
    if len(found) == 0:
        on_image = np.flatnonzero((names == image) | (stems == image))
        if len(on_image) == 0:
            raise ValueError(f"--query {query!r}: no embedded mask is on image {image!r}")
        ids = ", ".join(str(int(v)) for v in emb.annotation_id[on_image][:8])
        raise ValueError(f"--query {query!r}: image {image!r} has no mask {ann_id} (its masks: {ids}, ...)")
    if len(found) > 1:
        sets = sorted(set(emb.dataset[found].tolist()))
        raise ValueError(
            f"--query {query!r} matches masks in data sets {', '.join(sets)}; write DATASET/{image}:{ann_id}"
        )
    return int(found[0])
