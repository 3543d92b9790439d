"""Point batches decoded side by side, one intra-op thread each.

Why: the cached decoder's per-prompt work is many small matmuls and elementwise passes
(:mod:`segany.modeling.cached_decoder`). PyTorch splits each of them across its intra-op
threads, which pays a fork/join per op and leaves cores idle on the small ones: on this
2-core machine the generator took 21.5 s on one thread and 19.1 s on two for the same photo
(``benchmarks/bench_amg.py --model default``), while the reference's large matmuls scale.
The generator's point batches are independent, so with N intra-op threads available it is
faster to run N batches at once, each on one thread. PyTorch releases the GIL inside its
ops, so Python threads suffice.

Results do not depend on the scheduling: every batch runs the same ops on the same rows as
in a serial run, and results are returned in batch order. Only the intra-op thread count
differs (one per batch instead of all), which PyTorch does not promise leaves the last bit
of every kernel unchanged: the shipped model's records are bit-identical both ways (checked
on a coco_tiny photo, with and without crops), and ``tests/test_automatic_batch_threads.py``
allows a stability score to differ by two pixels of its counts, what a last-bit change of a
logit sitting on the +-offset threshold would move.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def resolve_workers(batch_threads: int | None) -> int:
    """The number of batches to run at once: ``batch_threads``, or PyTorch's intra-op thread
    count when None (each batch then gets one of those threads)."""
    if batch_threads is None:
        return max(1, torch.get_num_threads())
    if batch_threads < 1:
        raise ValueError(f"batch_threads must be >= 1 or None, got {batch_threads}")
    return batch_threads


def map_in_threads(fn: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """``[fn(x) for x in items]``, with up to ``workers`` calls at once when ``workers`` > 1.

    Each worker thread runs its ops on one intra-op thread. ``torch.set_num_threads`` also
    sets the count that threads started later inherit, so the caller's count is restored
    on return (its own thread keeps its count throughout). Grad mode is thread-local in
    PyTorch: the caller's is carried into the workers. An exception in any call is raised
    here after the running calls finish.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    caller_threads = torch.get_num_threads()
    grad = torch.is_grad_enabled()

    def init() -> None:
        torch.set_num_threads(1)

    def run(x: T) -> R:
        with torch.set_grad_enabled(grad):
            return fn(x)

    try:
        with ThreadPoolExecutor(max_workers=min(workers, len(items)), initializer=init) as pool:
            return list(pool.map(run, items))
    finally:
        torch.set_num_threads(caller_threads)
