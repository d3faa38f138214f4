"""One JSON error shape for every failure: ``{"error": {"code", "message", "position"?}}``.

Routes raise :class:`ApiError`; FastAPI's own validation errors, HTTP errors and anything
unexpected are turned into the same shape by the handlers installed here, so a client
never has to parse two formats (and never sees a stack trace). The one exception is the
drop-in tagging endpoints, which answer in Hugging Face's shape (see ``hf_errors``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from app.api.danbooru.shape import danbooru_shaped
from app.api.danbooru.shape import error_body as danbooru_error_body
from app.api.hf_errors import hf_error_body, hf_shaped
from app.errors import SagashiError

log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(SagashiError):
    """An error a route raises with its status and code chosen on the spot."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        position: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = self.http_status = status
        self.code = self.error_code = code
        self.message = message
        self.position = position
        self.headers = headers

    def detail(self) -> str:
        return self.message


def error_body(code: str, message: str, position: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if position is not None:
        error["position"] = position
    return {"error": error}


def error_response(
    status: int,
    code: str,
    message: str,
    position: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, position), status_code=status, headers=headers)


def error_response_for(
    scope: Scope,
    status: int,
    code: str,
    message: str,
    position: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The error in the shape the request's endpoint answers in."""
    if hf_shaped(scope):
        return JSONResponse(hf_error_body(code, message), status_code=status, headers=headers)
    if danbooru_shaped(scope):  # Danbooru's clients read {"success": false, "message"}
        body = danbooru_error_body(code, message)
        return JSONResponse(body, status_code=status, headers=headers)
    return error_response(status, code, message, position, headers)


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SagashiError, _sagashi_error)
    for unavailable in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(unavailable, _database_unavailable)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


async def _sagashi_error(request: Request, exc: Exception) -> JSONResponse:
    """Every :class:`SagashiError` a route lets through, as its class (or instance) says."""
    assert isinstance(exc, SagashiError)
    if exc.http_status >= 500:
        log.error("%s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc)
    return error_response_for(
        request.scope, exc.http_status, exc.error_code, exc.detail(), exc.position, exc.headers
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message = describe_validation(exc.errors())
    return error_response_for(request.scope, 422, "invalid_request", message)


def describe_validation(errors: Any) -> str:
    """The first problem, as one line naming the field: "query.limit: must be <= 1000"."""
    items = list(errors)
    if not items:
        return "invalid request"
    first = items[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "request"
    message = str(first.get("msg", "invalid value"))
    more = f" (and {len(items) - 1} more problems)" if len(items) > 1 else ""
    return f"{where}: {message}{more}"


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The database is down, restarting, out of connections or cancelled a statement that
    # ran past SAGASHI_STATEMENT_TIMEOUT: the client may retry; nothing it sent was wrong.
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    reason = detail[0] if detail else type(exc).__name__
    return error_response_for(
        request.scope,
        503,
        "database_unavailable",
        f"the database is unavailable or too slow; retry shortly ({reason[:200]})",
        headers={"Retry-After": "5"},
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response_for(request.scope, exc.status_code, code, message, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    message = "internal error; the server log has the details"
    return error_response_for(request.scope, 500, "internal", message)
