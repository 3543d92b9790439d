"""How the annotation server reports a failure: one JSON line ``{"detail": "..."}``, always.

One place for this so that every route, the request guard and FastAPI's own validation say
things the same way: a status that tells the client whose fault it is (schema errors 422,
other bad values 400, the server's own faults 500), a message that names the field at
fault, and never a traceback or an absolute path of the server's disk (it would tell a
client where the image roots are).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# The server's log, under the name it has always had (log configurations name it).
log = logging.getLogger("segany.engine.server")

_ABS_PATH = re.compile(r"""(?<![\w.~-])/(?:[^\s/'"`:,;()<>\[\]{}]+/)+([^\s/'"`:,;()<>\[\]{}]*)""")


def one_line(message: Any, limit: int = 400) -> str:
    """An error message fit for a client: one line, short, absolute paths cut to their last part."""
    text = " ".join(str(message).split())
    text = _ABS_PATH.sub(lambda m: m.group(1) or "<path>", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_error(status: int, message: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one response shape of every error: ``{"detail": one_line(message)}``."""
    return JSONResponse({"detail": one_line(message)}, status_code=status, headers=headers)


def validation_message(exc: RequestValidationError, content_type: str = "") -> str:
    """FastAPI's list of validation errors as one sentence naming each field at fault."""
    is_json = content_type.split(";")[0].strip().lower().endswith("json")
    parts = []
    errors = list(exc.errors())
    for err in errors[:3]:
        loc = [str(x) for x in err.get("loc", ())]
        kind = err.get("type", "")
        if kind == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "decode error")
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            parts.append(f"body: malformed JSON ({detail}{at})")
            continue
        where = ".".join(loc[1:]) if len(loc) > 1 and loc[0] in ("body", "path", "query", "header") else ".".join(loc)
        if loc[:1] == ["body"] and len(loc) == 1:
            if kind == "missing":
                parts.append("body: a JSON object is required")
            elif is_json:
                parts.append("body: expected a JSON object")
            else:
                parts.append("body: expected a JSON object sent with Content-Type: application/json")
            continue
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    if len(errors) > 3:
        parts.append(f"and {len(errors) - 3} more problems")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Route every error FastAPI or a route raises through :func:`json_error`.

    The catch-all logs the traceback (for the operator) and tells the client only the
    exception's type, so an unexpected failure still ends in one JSON line.
    """

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return json_error(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return json_error(422, validation_message(exc, request.headers.get("content-type", "")))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return json_error(500, f"internal server error ({type(exc).__name__}); the server log has the details")
