"""Error answers: always ``{"error": "<one clear message>"}``; a client that went away is not a server error.

``install_error_handlers(app)`` registers one handler per kind of failure:

- ``payload.ApiError`` -> its status, message and headers (408 answers also close the connection; 503
  overload answers carry ``Retry-After``);
- 404 / 405 from routing -> a message naming the path / method;
- ``ClientDisconnect`` (the client closed the connection before its body arrived) -> logged as a
  client abort, status 499 in the access log and ``/stats`` (nobody is left to receive it), no traceback;
- anything else -> 500 with the exception's type, logged once with its traceback.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from . import payload
from .routes import json_response

__all__ = ["CLIENT_CLOSED", "install_error_handlers"]

log = logging.getLogger("nfkd.serve")

CLIENT_CLOSED = 499  # nginx's "client closed request": recorded, never sent


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(payload.ApiError)
    async def _api_error(request: Request, exc: payload.ApiError) -> Response:
        request.state.error = exc.message
        headers = {"connection": "close"} if exc.status == 408 else dict(exc.headers or {})
        return json_response({"error": exc.message}, exc.status, headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = {404: f"no endpoint {request.url.path[:200]}; see GET /metadata",
                   405: f"method {request.method} is not allowed on {request.url.path[:200]}"}.get(
            exc.status_code, str(exc.detail))
        request.state.error = message
        return json_response({"error": message}, exc.status_code)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        request.state.error = "client aborted: the client closed the connection before its request body was complete"
        return json_response({"error": request.state.error}, CLIENT_CLOSED)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.exception("internal error", extra={"path": request.url.path})
        request.state.error = f"internal error: {type(exc).__name__}"
        return json_response({"error": request.state.error}, 500)
