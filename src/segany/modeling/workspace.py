"""Reusable scratch tensors for the cached decoder's per-prompt work.

Why: one decoder call on a 64x64 grid makes about a dozen transient 4-8 MB tensors (the
per-prompt image tokens, their LayerNorms, the upscaled features). glibc serves blocks
that size with fresh pages: ``mmap`` below its dynamic threshold, or heap memory it
trims back to the system after each call, so every call pays the page faults of touching
~60 MB anew. Measured with the default model, 1 thread, one point: 63 ms a call with
fresh tensors against 43 ms when the same memory is kept (``mallopt`` experiment), with
identical outputs. A :class:`Workspace` keeps those buffers between calls instead, without
changing the process's allocator settings.

Buffers are per thread (two threads decoding with one predictor never share scratch
memory) and per name: a request with another shape or dtype replaces that name's buffer
(one with a smaller leading size reads its first rows), so what is held is one call's worth of scratch (about 32 MB for one prompt, 4x that for a
group of :data:`~segany.modeling.cached_decoder.DECODE_CHUNK`).
"""

from __future__ import annotations

import threading

import torch


class Workspace:
    """Named scratch buffers kept across calls, one set per thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __reduce__(self) -> tuple[type, tuple]:
        # copies and pickles (Ray actors, copy.deepcopy of a predictor) start empty: scratch
        # memory is never state worth carrying, and thread-local storage cannot be pickled
        return (Workspace, ())

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised buffer ``name`` of ``shape`` with ``like``'s dtype and device,
        the same memory as an earlier request of that name when it fits. The caller
        must overwrite it completely and must not hand it out of the call that asked."""
        bufs: dict[str, torch.Tensor] | None = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = {}
        shape = tuple(int(s) for s in shape)
        buf = bufs.get(name)
        if (
            buf is not None
            and buf.dtype == like.dtype
            and buf.device == like.device
            and tuple(buf.shape[1:]) == shape[1:]
            and buf.shape[0] >= shape[0]
        ):
            # a smaller leading size (the last, short group of prompts) reads the buffer's
            # first rows, a contiguous view, instead of replacing it
            return buf[: shape[0]]
        buf = torch.empty(shape, dtype=like.dtype, device=like.device)
        bufs[name] = buf
        return buf

    def clear(self) -> None:
        """Drop this thread's buffers (the memory goes back to the allocator)."""
        self._local.bufs = {}

    def nbytes(self) -> int:
        """Bytes held by this thread's buffers."""
        bufs = getattr(self._local, "bufs", {})
        return sum(b.numel() * b.element_size() for b in bufs.values())
