"""The login form for SAGASHI_READ_TOKEN: a browser trades the token for a cookie once, so
the gallery's pages, thumbnails and API calls work without a header.

The page is self-contained (no static files: those need the cookie) and works without
JavaScript. The cookie is HttpOnly (scripts cannot read it) and SameSite=Strict (other
sites cannot make the browser send it).
"""

from __future__ import annotations

import html
import logging
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.api.auth import COOKIE, COOKIE_MAX_AGE, Tokens
from app.api.resources import Res

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)


@router.get("/login")
def login_form(
    res: Res, next_path: Annotated[str, Query(alias="next", max_length=2000)] = "/"
) -> Response:
    if res.settings.read_token is None:  # nothing to log in to
        return RedirectResponse(local_path(next_path), status_code=303)
    return HTMLResponse(page(local_path(next_path), None))


@router.post("/login")
def login(
    request: Request,
    res: Res,
    token: Annotated[str, Form(max_length=1000)],
    next_path: Annotated[str, Form(alias="next", max_length=2000)] = "/",
) -> Response:
    target = local_path(next_path)
    read_token = res.settings.read_token
    if read_token is None:
        return RedirectResponse(target, status_code=303)
    value = Tokens(read_token, res.settings.admin_token).cookie_for(token.strip())
    if value is None:
        client = request.client.host if request.client else "?"
        log.warning("login with a wrong token from %s", client)
        return HTMLResponse(page(target, "That token is not valid."), status_code=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        value,
        max_age=COOKIE_MAX_AGE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def local_path(given: str) -> str:
    """Only a path on this server, so the form cannot send a browser elsewhere."""
    if given.startswith("/") and not given.startswith(("//", "/\\")):
        return given
    return "/"


def page(next_path: str, error: str | None) -> str:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sagashi: log in</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<style>
body {{ margin: 0; min-height: 100vh; display: grid; place-items: center;
  background: #1d1f26; color: #e6e6e6; font-family: system-ui, sans-serif; }}
form {{ background: #272a33; padding: 1.5rem 2rem; border-radius: 6px; box-sizing: border-box;
  display: grid; gap: .8rem; width: min(24rem, calc(100vw - 2rem)); }}
input, button {{ font: inherit; padding: .5rem .7rem; border-radius: 4px; }}
input {{ border: 1px solid #7a8190; background: #15171c; color: #e6e6e6; }}
button {{ border: 0; background: #4fa3ff; color: #10141b; cursor: pointer; }}
:focus-visible {{ outline: 3px solid #ffd166; outline-offset: 2px; }}
.error {{ color: #ff6b6b; margin: 0; }}
</style>
</head>
<body>
<form method="post" action="/login">
<h1>Sagashi</h1>
<label for="token">Access token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<input type="hidden" name="next" value="{html.escape(next_path)}">
{message}
<button type="submit">Log in</button>
</form>
</body>
</html>
"""
