"""SAGASHI_READ_TOKEN over the real app on a real index: every route of the app (enumerated
from app.routes, so a new one is covered without listing it) answers 401 with the error
shape and WWW-Authenticate without a token, except liveness, readiness and the login form;
pages send a browser to the login form; with the read token (or the admin token) each route
answers as it would unguarded; the login form sets an HttpOnly, SameSite=Strict cookie that
stands for the token. Without the setting, nothing changes."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.routing import BaseRoute, Mount

from app.api.auth import COOKIE, cookie_value
from app.api.danbooru.shape import danbooru_shaped
from app.settings import Settings
from tests.support.api_helpers import ADMIN_TOKEN, ApiEnv, indexed_env

READ_TOKEN = "read-token-0123456789"
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("GET", "/favicon.ico"),  # the login form's icon, as /static/favicon.svg
}
PAGES = {("GET", "/"), ("GET", "/docs"), ("GET", "/redoc")}


@pytest.fixture(scope="module", params=["sqlite"])
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path
) -> Iterator[ApiEnv]:
    root = tmp_path_factory.mktemp("read-token")
    yield from indexed_env(request, root, tiny_pixai_dir, images=4, read_token=READ_TOKEN)


@pytest.fixture(scope="module", params=["sqlite"])
def open_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path
) -> Iterator[ApiEnv]:
    yield from indexed_env(request, tmp_path_factory.mktemp("open"), tiny_pixai_dir, images=2)


def route_paths(routes: list[BaseRoute]) -> Iterator[tuple[BaseRoute, str, set[str]]]:
    """Each route with its full path template and methods, an included router's too."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # before FastAPI 0.137 include_router copied its routes in (0.137.0
        # and 0.137.1, which the dev extra leaves out, do neither)
        for route in routes:
            yield route, getattr(route, "path", ""), getattr(route, "methods", None) or set()
        return
    for context in iter_route_contexts(routes):
        yield context.original_route, str(context.path), context.methods or set()


def app_routes(env: ApiEnv) -> set[tuple[str, str]]:
    """(method, path template) of every route, and GET for each mount."""
    found = set()
    for route, path, methods in route_paths(env.client.app.routes):  # type: ignore[attr-defined]
        if isinstance(route, Mount):
            found.add(("GET", path))
            continue
        found.update((method, path) for method in methods if method != "HEAD")
    return found


def examples(env: ApiEnv) -> dict[tuple[str, str], tuple[str, dict[str, Any], int]]:
    """A valid request for each known route: URL, httpx arguments and the answer it gets."""
    page = env.client.get("/api/search", params={"limit": 1}, headers=READ).json()
    image_id = page["items"][0]["id"]
    tag = page["items"][0]["tags"][0]["name"]
    queued = env.client.post("/api/admin/reindex", json={"action": "rebuild_faiss"}, headers=ADMIN)
    job_id = queued.json()["id"]
    data = sorted(env.library.iterdir())[0].read_bytes()
    image = f"/api/images/{image_id}"
    return {
        ("GET", "/api/search"): ("/api/search", {}, 200),
        ("POST", "/api/similar"): ("/api/similar", {"json": {"image_id": image_id, "k": 1}}, 200),
        ("GET", "/api/images/{image_id}"): (image, {}, 200),
        ("GET", "/api/images/{image_id}/file"): (f"{image}/file", {}, 200),
        ("GET", "/api/images/{image_id}/thumb"): (f"{image}/thumb", {}, 200),
        ("GET", "/api/tags"): ("/api/tags", {"params": {"prefix": tag[:1]}}, 200),
        ("GET", "/api/tags/{name}/related"): (f"/api/tags/{tag}/related", {}, 200),
        ("POST", "/api/tag"): (
            "/api/tag",
            {"json": {"inputs": {"image": base64.b64encode(data).decode()}}},
            200,
        ),
        ("POST", "/evaluate"): ("/evaluate", {"files": {"file": ("a.png", data)}}, 200),
        ("POST", "/api/admin/reindex"): (
            "/api/admin/reindex",
            {"json": {"action": "rebuild_faiss"}},
            202,
        ),
        ("GET", "/api/admin/jobs"): ("/api/admin/jobs", {}, 200),
        ("GET", "/api/admin/jobs/{job_id}"): (f"/api/admin/jobs/{job_id}", {}, 200),
        ("POST", "/api/admin/index/reload"): ("/api/admin/index/reload", {}, 200),
        ("GET", "/healthz"): ("/healthz", {}, 200),
        ("GET", "/readyz"): ("/readyz", {}, 200),
        ("GET", "/metrics"): ("/metrics", {}, 200),
        ("GET", "/openapi.json"): ("/openapi.json", {}, 200),
        ("GET", "/docs"): ("/docs", {}, 200),
        ("GET", "/redoc"): ("/redoc", {}, 200),
        ("GET", "/"): ("/", {}, 200),
        ("GET", "/static"): ("/static/style.css", {}, 200),
        ("GET", "/login"): ("/login", {}, 200),
        ("GET", "/favicon.ico"): ("/favicon.ico", {}, 200),
        ("POST", "/login"): ("/login", {"data": {"token": READ_TOKEN}}, 303),
        ("GET", "/posts.json"): ("/posts.json", {}, 200),
        ("GET", "/posts/random.json"): ("/posts/random.json", {}, 200),
        ("GET", "/posts/{post_id}.json"): (f"/posts/{image_id}.json", {}, 200),
        ("GET", "/counts/posts.json"): ("/counts/posts.json", {}, 200),
        ("GET", "/tags.json"): ("/tags.json", {}, 200),
        ("GET", "/autocomplete.json"): (
            "/autocomplete.json",
            {"params": {"search[query]": tag[:1]}},
            200,
        ),
        ("GET", "/related_tag.json"): ("/related_tag.json", {"params": {"query": tag}}, 200),
        ("GET", "/iqdb_queries.json"): (
            "/iqdb_queries.json",
            {"params": {"post_id": image_id}},
            200,
        ),
        ("POST", "/iqdb_queries.json"): (
            "/iqdb_queries.json",
            {"files": {"file": ("a.png", data)}},
            200,
        ),
        ("GET", "/data/original/{post_id}/{name}"): (f"/data/original/{image_id}/a.png", {}, 200),
        ("GET", "/data/preview/{post_id}/{name}"): (f"/data/preview/{image_id}/a.webp", {}, 200),
    }


def send(env: ApiEnv, method: str, url: str, headers: dict[str, str], **kwargs: Any) -> Any:
    env.client.cookies.clear()  # no cookie from an earlier login: only what headers give
    return env.client.request(method, url, headers=headers, follow_redirects=False, **kwargs)


def test_every_route_but_health_and_login_needs_the_token(env: ApiEnv) -> None:
    known = examples(env)
    routes = app_routes(env)
    assert set(known) - routes == set(), "examples of routes the app no longer has"
    for method, path in sorted(routes):
        url, kwargs, status = known.get((method, path), (re.sub(r"\{[^}]+\}", "1", path), {}, None))
        answer = send(env, method, url, {}, **kwargs)
        where = f"{method} {path}"
        if (method, path) in PUBLIC:
            assert answer.status_code == status, where
        elif (method, path) in PAGES:
            assert answer.status_code == 303, where
            assert answer.headers["location"] == f"/login?next=%2F{path[1:]}", where
        elif danbooru_shaped({"path": url}):  # Danbooru's clients send HTTP Basic
            assert answer.status_code == 401, where
            assert answer.headers["www-authenticate"] == 'Basic realm="Sagashi"', where
            assert answer.json()["success"] is False, where
        else:
            assert answer.status_code == 401, where
            assert answer.headers["www-authenticate"] == "Bearer", where
            assert answer.json()["error"]["code"] == "unauthorized", where


def test_of_the_static_files_only_the_icon_is_public(env: ApiEnv) -> None:
    icon = send(env, "GET", "/static/favicon.svg", {})
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg")
    for path in ("/static/app.js", "/static/index.html", "/static/favicon.svg/../app.js"):
        assert send(env, "GET", path, {}).status_code == 401, path


@pytest.mark.parametrize("token", ["read", "admin"])
def test_with_a_token_every_route_answers_as_usual(env: ApiEnv, token: str) -> None:
    headers = READ if token == "read" else ADMIN
    for (method, path), (url, kwargs, status) in examples(env).items():
        answer = send(env, method, url, headers, **kwargs)
        where = f"{method} {path} with the {token} token"
        if path.startswith("/api/admin/") and token == "read":
            # The read token reads; the admin routes still want the admin token.
            assert answer.status_code == 403, where
            assert answer.json()["error"]["code"] == "forbidden", where
        else:
            assert answer.status_code == status, f"{where}: {answer.text[:300]}"


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {READ_TOKEN}x", f"Basic {READ_TOKEN}", "Bearer", f"bearer {READ_TOKEN[:-1]}"],
)
def test_a_wrong_token_is_401(env: ApiEnv, authorization: str) -> None:
    answer = send(env, "GET", "/api/search", {"Authorization": authorization})
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"


def test_unknown_paths_do_not_tell_what_exists_without_the_token(env: ApiEnv) -> None:
    assert send(env, "GET", "/api/nothing-here", {}).status_code == 401
    assert send(env, "GET", "/api/nothing-here", READ).status_code == 404


def test_the_login_form_trades_the_token_for_a_cookie(env: ApiEnv) -> None:
    form = send(env, "GET", "/login?next=%2F%3Fq%3D1girl", {})
    assert form.status_code == 200 and 'name="next" value="/?q=1girl"' in form.text
    login = send(env, "POST", "/login", {}, data={"token": READ_TOKEN, "next": "/?q=1girl"})
    assert login.status_code == 303
    assert login.headers["location"] == "/?q=1girl"
    cookie = login.headers["set-cookie"]
    value = cookie.split(";", 1)[0].removeprefix(f"{COOKIE}=")
    assert value == cookie_value(READ_TOKEN.encode()) and READ_TOKEN not in cookie
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/", "max-age=2592000"} <= attributes
    assert "secure" not in attributes  # plain http here; set behind https

    with_cookie = {"Cookie": f"{COOKIE}={value}"}
    image_id = send(env, "GET", "/api/search", with_cookie).json()["items"][0]["id"]
    assert send(env, "GET", f"/api/images/{image_id}/thumb", with_cookie).status_code == 200
    assert send(env, "GET", "/", with_cookie).status_code == 200
    # The cookie reads; it is not a bearer token, and the admin routes take only the header.
    assert send(env, "GET", "/api/search", {"Authorization": f"Bearer {value}"}).status_code == 401
    assert send(env, "GET", "/api/admin/jobs", with_cookie).status_code == 401


def test_the_admin_token_logs_in_too_and_a_forged_cookie_does_not(env: ApiEnv) -> None:
    login = send(env, "POST", "/login", {}, data={"token": ADMIN_TOKEN})
    assert login.status_code == 303 and login.headers["location"] == "/"
    admin_cookie = {"Cookie": f"{COOKIE}={cookie_value(ADMIN_TOKEN.encode())}"}
    assert send(env, "GET", "/api/search", admin_cookie).status_code == 200
    for forged in (READ_TOKEN, cookie_value(b"some other token"), "", "a;b"):
        answer = send(env, "GET", "/api/search", {"Cookie": f"{COOKIE}={forged}"})
        assert answer.status_code == 401, forged


def test_a_wrong_token_at_the_login_form_is_401_and_sets_nothing(env: ApiEnv) -> None:
    answer = send(env, "POST", "/login", {}, data={"token": "guess-guess-guess", "next": "/x"})
    assert answer.status_code == 401
    assert "That token is not valid." in answer.text
    assert 'name="next" value="/x"' in answer.text
    assert "set-cookie" not in answer.headers


@pytest.mark.parametrize(
    "given", ["//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:x"]
)
def test_the_login_form_only_sends_a_browser_back_to_this_server(env: ApiEnv, given: str) -> None:
    answer = send(env, "POST", "/login", {}, data={"token": READ_TOKEN, "next": given})
    assert answer.status_code == 303 and answer.headers["location"] == "/"


def test_without_the_setting_reading_is_open(open_env: ApiEnv) -> None:
    assert open_env.client.get("/api/search").status_code == 200
    assert open_env.client.get("/").status_code == 200
    login = open_env.client.get("/login?next=/docs", follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/docs"
    admin = open_env.client.get("/api/admin/jobs")
    assert admin.status_code == 401 and admin.json()["error"]["code"] == "unauthorized"


def test_the_setting_is_validated(tmp_path: Path) -> None:
    # Strings, as the environment gives them: the field's validation makes them SecretStr.
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(data_dir=tmp_path, read_token="short")  # type: ignore[arg-type]
    assert Settings(data_dir=tmp_path, read_token=" ").read_token is None  # type: ignore[arg-type]
    assert Settings(data_dir=tmp_path).read_token is None
