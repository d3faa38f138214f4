"""The OpenAPI schema as client generators need it, built once from FastAPI's own.

- Uploads: FastAPI writes an ``UploadFile`` field the OpenAPI 3.1 way, as a string with
  ``contentMediaType``. openapi-python-client (0.29) and other generators only know
  ``format: binary``; without it they send the file as a plain text field, and the server
  answers 422. Both spellings are valid 3.1, so multipart fields are rewritten to the one
  every tool reads.
- Security: the admin routes declare their bearer scheme through their dependency; with
  SAGASHI_READ_TOKEN set, every other route but the public ones declares it too (or the
  login cookie), so generated clients and Swagger UI's "Authorize" send the token.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI

from app.api.auth import COOKIE, PUBLIC_PATHS

BEARER_SCHEME = "bearer"
COOKIE_SCHEME = "cookie"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def install_openapi(app: FastAPI, read_protected: bool) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            binary_uploads(schema)
            if read_protected:
                require_token(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def binary_uploads(schema: dict[str, Any]) -> None:
    for _path, operation in operations(schema):
        form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
        if form is not None:
            _binary_strings(_resolve(schema, form.get("schema", {})))


def require_token(schema: dict[str, Any]) -> None:
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes.setdefault(BEARER_SCHEME, {"type": "http", "scheme": "bearer"})
    schemes[BEARER_SCHEME]["description"] = (
        "SAGASHI_READ_TOKEN, or SAGASHI_ADMIN_TOKEN (which the admin routes require)."
    )
    schemes[COOKIE_SCHEME] = {
        "type": "apiKey",
        "in": "cookie",
        "name": COOKIE,
        "description": "Set by the login form at /login, for browsers.",
    }
    for path, operation in operations(schema):
        if path not in PUBLIC_PATHS:
            operation.setdefault("security", [{BEARER_SCHEME: []}, {COOKIE_SCHEME: []}])


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, operation


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return node
    found: Any = schema
    for part in ref[2:].split("/"):
        found = found[part]
    resolved: dict[str, Any] = found
    return resolved


def _binary_strings(node: Any) -> None:
    """Every string with a contentMediaType under node (arrays and anyOf included)."""
    if isinstance(node, list):
        for item in node:
            _binary_strings(item)
    elif isinstance(node, dict):
        if node.get("type") == "string" and "contentMediaType" in node:
            del node["contentMediaType"]
            node["format"] = "binary"
        for value in node.values():
            _binary_strings(value)
