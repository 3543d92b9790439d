"""Image embeddings computed once, kept on disk, and precomputed ahead of the annotator.

The image encoder is the only slow part of interactive annotation (paper section 4: the
page decodes in ~50 ms, the encoder takes seconds on a CPU), so the server computes each
image's embedding once, stores it as a safetensors file keyed by the image's path, size
and modification time plus the encoder's fingerprint, and computes the next images of the
queue in a background thread while the annotator works on the current one.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from pathlib import Path

import numpy as np
import torch

from ..embeddings import load_embedding_file, save_embedding_file
from ..image_io import load_image
from ..modeling import Sam
from ..modeling.fingerprint import image_encoder_digest
from ..predictor import SamPredictor

log = logging.getLogger(__name__)


class EmbeddingCache:
    """Thread-safe, disk-backed image embeddings for one model.

    The model stays on whatever device (and dtype) it was given: the predictor runs there
    and only the finished embedding is copied to the CPU for the file and the page.
    ``max_pixels`` (default: the cap of :func:`segany.image_io.load_image`) refuses images whose
    header announces more pixels before they are decoded.
    """

    def __init__(self, model: Sam, cache_dir: str | Path, max_pixels: int | None = None) -> None:
        self.model = model
        self.max_pixels = max_pixels
        self.fingerprint = image_encoder_digest(model)
        self.dir = Path(cache_dir) / f"embeddings-{self.fingerprint}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._predictor = SamPredictor(model)
        self._model_lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self.computed = 0  # how many embeddings this process computed (for tests and logs)

    def path_for(self, image_path: str | Path) -> Path:
        p = Path(image_path)
        st = p.stat()
        key = hashlib.sha1(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
        return self.dir / f"{key}.safetensors"

    def is_cached(self, image_path: str | Path) -> bool:
        try:
            return self.path_for(image_path).is_file()
        except OSError:
            return False

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def get(self, image_path: str | Path) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """(1x256x64x64 float32 embedding, original (H, W), input (H, W)); computed if missing."""
        cache = self.path_for(image_path)
        with self._lock_for(str(cache)):
            if cache.is_file():
                try:
                    features, original, inp = load_embedding_file(cache, self.model)
                    return features.float().numpy(), original, inp
                except ValueError:
                    log.warning("discarding unreadable embedding cache file %s", cache)
                    cache.unlink(missing_ok=True)
            image = load_image(image_path) if self.max_pixels is None else load_image(image_path, self.max_pixels)
            with self._model_lock, torch.inference_mode():
                self._predictor.set_image(image)
                features = self._predictor.features.detach().cpu()
                original, inp = self._predictor.original_size, self._predictor.input_size
                self._predictor.reset_image()
            save_embedding_file(cache, self.model, features, original, inp)
            self.computed += 1
            return features.float().numpy(), original, inp

    # ------------------------------------------------------------------ background work

    def prefetch(self, image_paths: list[str | Path]) -> None:
        """Queue images for background computation (skipping those already cached)."""
        for p in image_paths:
            if not self.is_cached(p):
                self._queue.put(Path(p))
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run, name="segany-embeddings", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=5.0)
            except queue.Empty:
                return
            try:
                if item is None:
                    return
                self.get(item)
            except Exception as exc:  # a bad image must not stop the queue
                log.warning("background embedding of %s failed: %s", item, exc)
            finally:
                self._queue.task_done()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until the background queue is drained (tests, benchmarks)."""
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.05)
        return False
