"""What an annotation server is started with, and the checks it passes before it serves.

Built by ``segany serve`` or by tests. :func:`prepare_config` runs once, in ``create_app``,
so a bad value (a zero cap, a cache folder that cannot be made) fails at start rather than
on the first request that needs it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .image_files import DEFAULT_MAX_PIXELS
from .served_model import model_version_of
from .store import Store

DEFAULT_MAX_UPLOAD = 32 * 1024 * 1024
# JSON bodies (a mask's runs): generous for a brushed mask on a large image, small enough
# that a hostile client cannot make the server buffer gigabytes.
DEFAULT_MAX_BODY = 16 * 1024 * 1024
PREFETCH_AHEAD = 2


@dataclass
class ServerConfig:
    """Everything the app needs; built by ``segany serve`` or by tests."""

    store: Store
    image_roots: list[Path]
    cache_dir: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    upload_dir: Path | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    annotator: str = "annotator"
    model: Any = None  # a segany Sam, on any device; the default model when None
    # what masks record as their model; with model=None, a version registered in the store
    # (segany.engine.versions), whose weights are loaded
    model_version: str | None = None
    prefetch_ahead: int = PREFETCH_AHEAD
    prefill_settings: dict = field(default_factory=dict)  # overrides of prefill.PREFILL_SETTINGS
    quantized_decoder: bool = False  # serve the uint8-quantised decoder (about 16% less CPU in wasm)
    host: str = "127.0.0.1"  # the interface it listens on; its name is an allowed Host header
    allowed_hosts: list[str] = field(default_factory=list)  # further Host names (a LAN name, a proxy)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_body_bytes: int = DEFAULT_MAX_BODY
    rate: bool = False  # serve the mask-quality rating page (routes.rating) instead of the annotation tool; no model


def prepare_config(config: ServerConfig) -> None:
    """Fill in and check ``config`` in place: the model (the registered version
    ``model_version`` names, else the default one, when none is given; in eval mode where it
    is), its version, the caps, and the folders.

    Image roots are resolved once here because every path guard compares resolved paths;
    the upload folder becomes a root so that uploaded images can be served back.
    """
    needs_model = not config.rate  # the rating page shows stored masks: it runs no model
    if needs_model and config.model is None and config.model_version is not None:
        from .versions import load_version_model

        config.model, _ = load_version_model(config.store, config.model_version)
    elif needs_model and config.model is None:
        from ..default_model import load_default_model

        config.model = load_default_model()
    for name in ("max_pixels", "max_upload_bytes", "max_body_bytes"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if needs_model:
        config.model.eval()
        config.model_version = config.model_version or model_version_of(config.model)
    config.image_roots = [Path(r).resolve() for r in config.image_roots]
    config.cache_dir = Path(config.cache_dir)
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    if config.upload_dir is not None:
        config.upload_dir = Path(config.upload_dir).resolve()
        config.upload_dir.mkdir(parents=True, exist_ok=True)
        if config.upload_dir not in config.image_roots:
            config.image_roots.append(config.upload_dir)
