"""Shared setup of the annotation-server tests: the default model, a served folder of random
images with its client, and a free port.

One copy, so that the server tests and the hard-edge tests build their servers the same way
and a change to ``ServerConfig`` is made once. A module of helpers rather than conftest
fixtures: each test file keeps its own images and caps in plain sight.
"""

from __future__ import annotations

import functools
import socket
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from segany import load_default_model
from segany.engine.server import ServerConfig, create_app
from segany.engine.store import Store, open_store


@functools.cache
def quiet_default_model() -> Any:
    """The shipped default model, without its load-time warnings in the test output.

    Loaded once per test session: the server tests only read it (a test that patches it
    does so through ``monkeypatch``, which restores it), and loading costs seconds here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_default_model()


def served_env(
    tmp_path: Path,
    model: Any,
    images: list[tuple[str, int, int]],
    token: str,
    base_url: str | None = None,
    **config_fields: Any,
) -> tuple[TestClient, Store, ServerConfig, Path]:
    """A server over ``tmp_path/images`` and ``tmp_path/db.sqlite`` with the token set on its client.

    ``images`` are (file name, height, width): random RGB from one generator seeded 0, in
    that order, each registered with its size. ``config_fields`` go to :class:`ServerConfig`.
    Returns (client, store, config, tmp_path).
    """
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, h, w in images:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    store = open_store(tmp_path / "db.sqlite")
    for name, h, w in images:
        store.add_image(root / name, w, h)
    config = ServerConfig(
        store=store, image_roots=[root], cache_dir=tmp_path / "cache", token=token, model=model, **config_fields
    )
    client = TestClient(create_app(config), **({"base_url": base_url} if base_url else {}))
    client.headers["Authorization"] = f"Bearer {token}"
    return client, store, config, tmp_path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
