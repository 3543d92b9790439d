"""``torch.compile`` for inference: the image encoder, compiled in place.

Why the encoder only: it is where a GPU spends ``set_image`` (one fixed-shape 1x3xSxS
forward per image, the shape torch.compile handles best), and its state dict must stay
loadable and savable as before, which ``nn.Module.compile`` (in place, no ``_orig_mod.``
prefix) keeps. The decoder's cached path writes into reused scratch buffers and loops over
prompt groups of varying size; it is already a few small matmuls per click, so compiling it
would mostly add recompilations.

Compiled kernels fuse and reorder floating-point work, so outputs differ from eager mode by
float rounding: this is opt-in (``--compile`` on the model-using commands), and the test
suite checks the difference on the CPU (inductor's C++ backend). GPU speed-ups are not
measured here (no GPU on the development machine).
"""

from __future__ import annotations

from .sam import Sam


def compile_image_encoder(model: Sam, mode: str | None = None, dynamic: bool = False) -> Sam:
    """Compile ``model.image_encoder`` in place with ``torch.compile`` and return ``model``.

    Args:
        model: a segany ``Sam``.
        mode: torch.compile's mode (None = default, "reduce-overhead" uses CUDA graphs,
            "max-autotune" searches kernels: slow to compile).
        dynamic: compile for varying input shapes (not needed: the encoder always sees
            ``img_size`` squares).

    The first forward pays the compilation (tens of seconds); later ones reuse it. Calling
    this twice is a no-op.
    """
    encoder = model.image_encoder
    if getattr(encoder, "_segany_compiled", False):
        return model
    encoder.compile(mode=mode, dynamic=dynamic)
    encoder._segany_compiled = True
    return model


def is_compiled(model: Sam) -> bool:
    """Whether :func:`compile_image_encoder` was applied to ``model``."""
    return bool(getattr(model.image_encoder, "_segany_compiled", False))


__all__ = ["compile_image_encoder", "is_compiled"]
