"""Shared fixtures: small models with identical random weights in segany and the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference import random_state_dict, reference_sam
from segany import SamPredictor, build_model

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
