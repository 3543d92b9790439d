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
memory) and per name: one flat buffer that any request of at most its size views in the
shape asked for (a larger request or another dtype replaces it), so what is held is one
call's worth of scratch (20 MB for one prompt on a 64x64 grid, 4x that for a group of
:data:`~segany.modeling.cached_decoder.DECODE_CHUNK`). Fewer names mean a smaller working
set: on this machine's shared 32 MB L3 the decoder is memory-bound.
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
        must overwrite it completely, and whatever reads it must be done before the next
        request of that name."""
        bufs: dict[str, torch.Tensor] | None = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = {}
        shape = tuple(int(s) for s in shape)
        numel = 1
        for size in shape:
            numel *= size
        buf = bufs.get(name)
        if buf is None or buf.dtype != like.dtype or buf.device != like.device or buf.numel() < numel:
            buf = torch.empty(numel, dtype=like.dtype, device=like.device)
            bufs[name] = buf
        # one flat buffer per name, viewed in any shape that fits: a name can serve tensors
        # of different shapes in turn (the last, short group of prompts; the upscaling's
        # channels-last layout reusing the image-token scratch)
        return buf[:numel].view(shape)

    def clear(self) -> None:
        """Drop this thread's buffers (the memory goes back to the allocator)."""
        self._local.bufs = {}

    def nbytes(self) -> int:
        """Bytes held by this thread's buffers."""
        bufs = getattr(self._local, "bufs", {})
        return sum(b.numel() * b.element_size() for b in bufs.values())
