"""torch.compile of the image encoder (opt-in, meant for GPUs), checked on the CPU."""

from __future__ import annotations

import argparse

import pytest
import torch

from segany import load_default_model
from segany.commands.common import add_model_args, load_model_from_args
from segany.modeling import compile as compile_mod


def test_compile_flag_reaches_the_model(monkeypatch):
    """``--compile`` on a model-using command compiles the image encoder; without it, not."""
    calls = []
    monkeypatch.setattr(compile_mod, "compile_image_encoder", lambda model: calls.append(model) or model)
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    model = load_model_from_args(parser.parse_args(["--device", "cpu", "--compile"]))
    assert calls == [model]
    load_model_from_args(parser.parse_args(["--device", "cpu"]))
    assert len(calls) == 1
    exports = argparse.ArgumentParser()
    add_model_args(exports, with_compile=False)
    with pytest.raises(SystemExit):
        exports.parse_args(["--compile"])


@pytest.mark.slow  # ~80 s: inductor compiles the CNN encoder's C++ kernels
def test_compiled_encoder_matches_eager_and_keeps_the_state_dict():
    torch.manual_seed(0)
    model = load_default_model().eval()
    keys = list(model.state_dict())
    x = torch.randn(1, 3, model.img_size, model.img_size)
    with torch.no_grad():
        eager = model.image_encoder(x)
        compile_mod.compile_image_encoder(model)
        compile_mod.compile_image_encoder(model)  # idempotent
        assert compile_mod.is_compiled(model)
        compiled = model.image_encoder(x)
    assert (compiled - eager).abs().max().item() < 1e-4
    assert list(model.state_dict()) == keys  # no _orig_mod. prefix: checkpoints load and save as before
