"""Shared fixtures: small models with identical random weights in segany and the reference;
the shipped trained default model and real coco_tiny val photos for the exact-path tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reference import random_state_dict, reference_sam
from segany import SamPredictor, build_model
from segany.default_model import load_default_model

COCO_VAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_tiny" / "val2017"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def twin_models():
    """(segany Sam, reference Sam, state dict): reduced-depth ViT-B with shared random weights."""
    ref, _ = reference_sam(depth=2, global_attn=(1,))
    state = random_state_dict(ref, seed=0)
    ref.load_state_dict(state)
    ours = build_model("vit_b", encoder_depth=2, encoder_global_attn_indexes=(1,))
    ours.load_state_dict(state)
    return ours, ref, state


@pytest.fixture(scope="session")
def small_model():
    """A reduced-depth random ViT-B for behaviour tests that need no reference."""
    torch.manual_seed(0)
    return build_model("vit_b", encoder_depth=1, encoder_global_attn_indexes=(0,))


@pytest.fixture(scope="session")
def small_predictor(small_model):
    p = SamPredictor(small_model)
    img = np.random.RandomState(1).randint(0, 255, (120, 160, 3), dtype=np.uint8)
    p.set_image(img)
    return p


@pytest.fixture(scope="module")
def trained_default_model():
    """The shipped default model; skips where no trained weights are shipped."""
    m = load_default_model(warn=False)
    if not m.is_trained:
        pytest.skip("no trained default weights shipped")
    return m


@pytest.fixture(scope="session")
def coco_val_photos() -> list[np.ndarray]:
    """The first two coco_tiny val2017 photos (HxWx3 uint8), read in place from ../shared."""
    from PIL import Image

    photos = sorted(COCO_VAL_DIR.glob("*.jpg"))[:2] if COCO_VAL_DIR.is_dir() else []
    if len(photos) < 2:
        pytest.skip(f"no photos in {COCO_VAL_DIR}")
    out = []
    for path in photos:
        with Image.open(path) as im:
            out.append(np.asarray(im.convert("RGB")).copy())
    return out
