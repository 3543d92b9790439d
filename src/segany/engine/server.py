"""The annotation server (FastAPI): images, embeddings, the ONNX decoder and the mask store.

The split follows the paper's data engine (section 4): the server runs the heavy image
encoder once per image and serves the 64x64x256 embedding; the page runs the prompt
encoder + mask decoder itself (onnxruntime-web) so every click answers in milliseconds
without a round trip. The server only stores what the annotator accepts.

This module only wires the parts together and runs them:

- ``server_config``: :class:`ServerConfig` and the checks it passes at start;
- ``security``: the access token, the Host check (DNS rebinding), body caps, path guards;
- ``errors``: every failure as one JSON line ``{"detail": "..."}``, no traceback, no path;
- ``routes``: one router per resource (page, model, images, embeddings, masks, prefill);
- ``image_files`` and ``served_model``: image sizes under a pixel cap, the model's names.

The names other code imports from here (``ServerConfig``, ``create_app``, ``serve``, ...)
stay importable from here.
"""

from __future__ import annotations

import logging
import socket
import time

from fastapi import FastAPI

from .errors import install_error_handlers, one_line
from .image_files import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageTooLarge, image_header_size, image_size
from .routes import RATING_ROUTERS, ROUTERS
from .routes.context import ServerContext
from .routes.page import ort_dist_dir
from .security import LOCAL_HOSTS, PathOutsideRoots, RequestGuard, resolve_under_roots
from .served_model import model_device, model_placement, model_version_of
from .server_config import DEFAULT_MAX_BODY, DEFAULT_MAX_UPLOAD, ServerConfig, prepare_config

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_UPLOAD",
    "IMAGE_SUFFIXES",
    "ImageTooLarge",
    "PathOutsideRoots",
    "ServerConfig",
    "create_app",
    "image_header_size",
    "image_size",
    "listen_socket",
    "model_device",
    "model_placement",
    "model_version_of",
    "one_line",
    "ort_dist_dir",
    "resolve_under_roots",
    "serve",
]

log = logging.getLogger(__name__)


def create_app(config: ServerConfig) -> FastAPI:
    """The FastAPI app; ``config`` is kept on ``app.state.config``.

    The model is used where it is (its device and dtype are the caller's choice, e.g.
    ``segany serve --device cuda``); only the ONNX export works on a CPU copy of the decoder.
    """
    prepare_config(config)
    # A rating server (config.rate) has no model, so no embeddings: its routes never ask.
    context = ServerContext(config, embeddings=None) if config.rate else ServerContext.for_config(config)

    app = FastAPI(title="segany annotation server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = config
    app.state.context = context
    app.state.embeddings = context.embeddings

    app.add_middleware(RequestGuard, config=config)  # outermost: before routing and the token
    install_error_handlers(app)
    for router in RATING_ROUTERS if config.rate else ROUTERS:
        app.include_router(router)
    return app


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or a ``ValueError`` saying why not (for exit status 2).

    Binding here, before the model loads, turns a port out of range, a port in use or an
    unknown interface into one clear line instead of a traceback from inside uvicorn.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"--host {host!r}: not an address of this machine ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ValueError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


def serve(config: ServerConfig, host: str = "127.0.0.1", port: int = 8765, sock: socket.socket | None = None) -> None:
    """Run the server until interrupted, printing the page address with its token."""
    import uvicorn

    config.host = host
    sock = sock or listen_socket(host, port)
    app = create_app(config)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/?token={config.token}"
    if config.rate:
        print(f"segany rating server: {len(config.store.rating_pool())} masks to rate", flush=True)
    else:
        print(
            f"segany annotation server: {len(config.store.images())} images, model {config.model_version} "
            f"on {model_placement(config.model)}",
            flush=True,
        )
    print(f"open {url}", flush=True)
    print(f"access token: {config.token}", flush=True)
    if host not in LOCAL_HOSTS:
        print(f"warning: listening on {host}: anyone who can reach it and knows the token can read the images",
              flush=True)
    started = time.time()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
    log.info("server stopped after %.0f s", time.time() - started)
