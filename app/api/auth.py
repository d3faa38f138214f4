"""Read access: with SAGASHI_READ_TOKEN set, every request needs a token, except liveness,
readiness and the login form.

A client sends ``Authorization: Bearer <token>`` (the read token or the admin token; admin
routes still check the admin token themselves). Danbooru's clients send credentials their
way, and those are accepted too: HTTP Basic with the token as the password (gallery-dl,
Pybooru: ``username`` any, ``api_key`` the token), or the ``api_key`` query parameter. A
browser logs in once at /login and then sends a cookie, because ``<img>`` tags and page
loads cannot carry a header. The cookie holds an HMAC of the token rather than the token
itself, so a stolen cookie is not a bearer token for scripts, and rotating the token logs
every browser out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, quote

from pydantic import SecretStr
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.danbooru.shape import danbooru_shaped
from app.api.errors import error_response, error_response_for

COOKIE = "sagashi_session"
COOKIE_MAX_AGE = 30 * 24 * 3600
# Reachable without a token: orchestrators probe these, and a browser must reach the form
# (and its icon).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/login", "/favicon.ico", "/static/favicon.svg"})
# Pages a person opens in a browser: sent to the login form instead of a JSON 401.
PAGE_PATHS = frozenset({"/", "/docs", "/redoc"})


class Tokens:
    """The tokens that grant read access, and the cookie values derived from them."""

    def __init__(self, read: SecretStr, admin: SecretStr | None) -> None:
        self._bearers = [t.get_secret_value().encode() for t in (read, admin) if t is not None]
        self._cookies = [cookie_value(token).encode() for token in self._bearers]

    def bearer_ok(self, given: str) -> bool:
        return _any_equal(given.encode(), self._bearers)

    def cookie_ok(self, given: str) -> bool:
        return _any_equal(given.encode(), self._cookies)

    def cookie_for(self, given: str) -> str | None:
        """The cookie to set for a token typed into the login form, if it is valid."""
        return cookie_value(given.encode()) if self.bearer_ok(given) else None


def cookie_value(token: bytes) -> str:
    return hmac.new(token, b"sagashi read cookie v1", hashlib.sha256).hexdigest()


def _any_equal(given: bytes, expected: list[bytes]) -> bool:
    # Compare with every token (no early exit), each in constant time.
    matches = [hmac.compare_digest(given, token) for token in expected]
    return any(matches)


class ReadTokenMiddleware:
    """Refuses a request without a valid token or cookie before any route runs, so the
    static files, the OpenAPI schema and unknown paths are covered too."""

    def __init__(self, app: ASGIApp, tokens: Tokens) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or self._granted(scope):
            await self.app(scope, receive, send)
            return
        response: Response
        if scope["path"] in PAGE_PATHS and scope["method"] in ("GET", "HEAD"):
            response = RedirectResponse(f"/login?next={quote(_target(scope), safe='')}", 303)
        elif danbooru_shaped(scope):
            response = error_response_for(
                scope,
                401,
                "unauthorized",
                "this server needs the read token: HTTP Basic with it as the password "
                "(api_key), the api_key parameter, or Authorization: Bearer <token>",
                headers={"WWW-Authenticate": 'Basic realm="Sagashi"'},
            )
        else:
            response = error_response(
                401,
                "unauthorized",
                "this server needs Authorization: Bearer <SAGASHI_READ_TOKEN>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        await response(scope, receive, send)

    def _granted(self, scope: Scope) -> bool:
        header = _header(scope, b"authorization")
        if header:
            scheme, _, given = header.partition(" ")
            if scheme.lower() == "basic":
                return self.tokens.bearer_ok(_basic_password(given.strip()))
            return scheme.lower() == "bearer" and self.tokens.bearer_ok(given.strip())
        api_key = _api_key(scope)
        if api_key is not None:
            return self.tokens.bearer_ok(api_key)
        cookie = _cookie(_header(scope, b"cookie"))
        return cookie is not None and self.tokens.cookie_ok(cookie)


def _basic_password(credentials: str) -> str:
    """The password of HTTP Basic credentials (Danbooru's api_key); the user name is free."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]


def _api_key(scope: Scope) -> str | None:
    """Danbooru's ``api_key`` query parameter (``login`` beside it names nobody here)."""
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    if "api_key=" not in query:
        return None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "api_key":
            return value
    return None


def _target(scope: Scope) -> str:
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    return str(scope["path"]) + (f"?{query}" if query else "")


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


def _cookie(header: str) -> str | None:
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:  # a malformed Cookie header is as good as none
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None
