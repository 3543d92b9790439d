"""What stands between a client and the annotator's disk: the token, the Host check, body
caps and path guards.

The server reads files on the machine it runs on, so every ``/api`` call needs the access
token printed at start, requests that arrive under a name that is not the server's own are
refused (a web page that rebinds its DNS name to 127.0.0.1 cannot talk to the server),
bodies are counted while they arrive, and no path a client names can resolve outside the
image roots (symlinks and ``..`` included). Kept apart from the routes so each rule is
written once and a route cannot forget it.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, HTTPException, Request

from .errors import json_error
from .image_files import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from .server_config import ServerConfig

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")

# ---------------------------------------------------------------------- the access token


def require_token(request: Request) -> str:
    """Check the access token and return the annotator's name.

    The token comes in ``Authorization: Bearer TOKEN``, or as ``?token=`` on GETs only (how
    the page's address and the image URLs it loads carry it; every write sends the header).

    A missing token is 401 and a wrong one 403. The comparison takes constant time. The
    annotator name (``X-Annotator``, else the server's default) is reduced to a safe set of
    characters because it is stored and shown to other annotators.
    """
    config = request.app.state.config
    given = ""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    elif request.method == "GET":
        given = request.query_params.get("token", "")
    if not given:
        raise HTTPException(401, "missing access token (Authorization: Bearer TOKEN)")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), config.token.encode()):
        raise HTTPException(403, "wrong access token")
    annotator = request.headers.get("x-annotator", "").strip() or config.annotator
    return re.sub(r"[^\w .@-]", "_", annotator)[:64]


Annotator = Annotated[str, Depends(require_token)]
"""A route parameter that requires the token and holds the (sanitised) annotator name."""

# ---------------------------------------------------------------------- Host check and body caps


def _host_name(value: str) -> str:
    """The host part of a ``Host`` header (brackets and port removed, lower case)."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        return v[1:end] if end > 0 else v
    if v.count(":") == 1:
        v = v.split(":", 1)[0]
    return v.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


# Cross-origin isolation lets onnxruntime-web use SharedArrayBuffer (wasm threads).
RESPONSE_HEADERS = [
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-embedder-policy", b"require-corp"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
]


class RequestGuard:
    """ASGI middleware run before anything else: the Host check, the body size cap and the
    headers every response carries.

    Why here and not in the routes: a DNS-rebinding page reaches the server under the
    attacker's name, which only the ``Host`` header reveals; and a body must be counted
    while it arrives, before FastAPI buffers it whole for JSON parsing. (A plain ASGI class
    rather than ``@app.middleware``: that one runs the app in a task group, which would
    wrap the 413 raised while the body arrives into an exception group.)
    """

    def __init__(self, app: Any, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        host = _host_name(config.host) if config.host else ""
        self.wildcard = host in WILDCARD_HOSTS
        names = {*LOCAL_HOSTS, host, *(_host_name(h) for h in config.allowed_hosts)} - {""}
        if self.wildcard:
            for fn in (socket.gethostname, socket.getfqdn):
                try:
                    names.add(fn().lower().rstrip("."))
                except OSError:
                    pass
        self.names = names

    def host_allowed(self, header: str, client: Any = None) -> bool:
        name = _host_name(header)
        if name in self.names or name.endswith(".localhost"):
            return True
        if name == "testserver" and client and client[0] == "testclient":
            return True  # Starlette's in-process TestClient: no browser, no network, no DNS
        # An address literal cannot be rebound by DNS; accept them when listening everywhere.
        return self.wildcard and _is_ip(name)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        original_send = send

        async def send_with_headers(message: dict) -> None:  # every response, errors included
            if message.get("type") == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in RESPONSE_HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await original_send(message)

        send = send_with_headers
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host")
        if host is not None and not self.host_allowed(host, scope.get("client")):
            response = json_error(
                400,
                f"Host header {host[:80]!r} is not a name of this server (DNS rebinding protection); open it as "
                f"http://127.0.0.1:PORT/ or start it with --allowed-host NAME",
            )
            await response(scope, receive, send)
            return
        limit = self.config.max_upload_bytes if scope.get("path") == "/api/upload" else self.config.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await json_error(400, "Content-Length header must be a non-negative integer")(scope, receive, send)
                return
            if int(declared) > limit:
                await json_error(413, f"request body larger than the limit of {limit} bytes")(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body larger than the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


# ---------------------------------------------------------------------- path guards


class PathOutsideRoots(ValueError):
    """A path that resolves outside every image root."""


def resolve_under_roots(path: str | Path, roots: list[Path]) -> Path:
    """Resolve ``path`` (relative paths against the first root) and refuse anything that is
    not inside one of ``roots`` once symlinks and ``..`` are resolved.

    The message never repeats the resolved path: it would tell a client where the roots are.
    """
    raw = str(path)
    if "\x00" in raw:
        raise PathOutsideRoots("path contains a NUL byte")
    p = Path(raw)
    if not p.is_absolute():
        if not roots:
            raise PathOutsideRoots("no image roots configured")
        p = roots[0] / p
    try:
        resolved = p.resolve()
    except (OSError, RuntimeError) as exc:  # a name too long, a symlink loop
        raise PathOutsideRoots(f"path cannot be resolved ({type(exc).__name__})") from None
    for root in roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    raise PathOutsideRoots("path is outside the image roots")


def is_present_file(path: Path) -> bool:
    """``path.is_file()``, but False where asking fails (a name too long, a folder without
    permission): a client's path must end in a 4xx, never in a 500."""
    try:
        return path.is_file()
    except OSError:
        return False


def safe_upload_name(name: str) -> str:
    """The last path component, restricted to a conservative character set, so an upload
    cannot choose its folder or smuggle shell or HTML characters into a stored name."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    if not base or Path(base).suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"filename must end with one of {sorted(IMAGE_SUFFIXES)}, got {name[:100]!r}")
    return base[-120:]
