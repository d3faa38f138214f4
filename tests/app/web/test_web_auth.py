"""In headless Chromium against a real uvicorn server with SAGASHI_READ_TOKEN set: the gallery
sends a browser to the login form and back, and after login its thumbnails and files (plain
<img> tags, which cannot send a header) load through the HttpOnly, SameSite=Strict cookie;
a cookie gone stale sends the gallery back to the form. /docs and /redoc render with every
request that leaves the machine blocked: their scripts are served from the package."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from app.api import create_app
from app.store.db import create_db_engine
from app.store.migrate import upgrade
from app.tagger import TimmTagger
from indexer.jobs import index_options
from indexer.pipeline import Indexer
from tests.support.api_helpers import make_library, settings_for
from tests.support.browser import CHROMIUM, check_names_and_contrast
from tests.support.live_server import serving

READ_TOKEN = "read-token-0123456789"
IMAGES = 6
LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"Chromium not installed ({CHROMIUM}); .ci/run installs Debian's chromium package",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path) -> Iterator[str]:
    root = tmp_path_factory.mktemp("web-auth")
    library = root / "library"
    make_library(library, IMAGES)
    url = f"sqlite:///{root / 'sagashi.db'}"
    upgrade(url)
    settings = settings_for(root, url, tiny_pixai_dir, read_token=READ_TOKEN)
    tagger = TimmTagger(tiny_pixai_dir, "cpu", 1)
    tagger.load()
    Indexer(create_db_engine(url), tagger, index_options(settings)).run([library])
    with serving(create_app(settings, tagger)) as base:
        yield base


@pytest.fixture
def offline(browser: Any, site: str) -> Iterator[tuple[Any, list[str]]]:
    """A page whose requests to anywhere but this machine are aborted (and listed)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=site)
    blocked: list[str] = []

    def only_loopback(route: Any) -> None:
        if urlsplit(route.request.url).hostname in LOOPBACK or route.request.url.startswith(
            ("data:", "blob:")
        ):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page, blocked
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def shot(page: Any, name: str) -> None:
    folder = os.environ.get("WEB_SCREENSHOT_DIR")
    if folder:
        page.screenshot(path=str(Path(folder) / name))


def log_in(page: Any, token: str) -> None:
    page.fill("#token", token)
    page.click("button[type=submit]")


def loaded_images(page: Any, selector: str) -> list[int]:
    """naturalWidth of each image under selector once all have finished loading."""
    page.wait_for_function(
        f"[...document.querySelectorAll({selector!r})].every(i => i.complete)"
        f" && document.querySelectorAll({selector!r}).length > 0"
    )
    widths: list[int] = page.eval_on_selector_all(selector, "els => els.map(e => e.naturalWidth)")
    return widths


def test_the_gallery_logs_in_and_then_loads_thumbnails_and_files(
    offline: tuple[Any, list[str]],
) -> None:
    page, blocked = offline
    page.goto("/?q=1girl")
    page.wait_for_url("**/login?next=%2F%3Fq%3D1girl")
    log_in(page, "not-the-token-at-all")
    assert page.text_content("[role=alert]") == "That token is not valid."
    shot(page, "login.png")
    # the login form too: named fields, readable text, a visible focus, and its icon
    check_names_and_contrast(page, "the login form")
    page.keyboard.press("Tab")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    icon = page.get_attribute('link[rel="icon"]', "href")
    assert page.request.get(icon).status == 200  # no token needed for it

    log_in(page, READ_TOKEN)
    page.wait_for_url("**/?q=1girl")
    page.goto("/")
    page.wait_for_function(f"document.querySelectorAll('#grid .thumb').length === {IMAGES}")
    assert all(width > 0 for width in loaded_images(page, "#grid .thumb img"))

    cookies = page.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
        ("sagashi_session", True, "Strict")
    ]
    assert page.evaluate("document.cookie") == ""  # scripts cannot read it

    page.click("#grid .thumb >> nth=0")
    page.wait_for_selector("#detail .tags li")
    assert all(width > 0 for width in loaded_images(page, "#detail .view img"))
    assert blocked == []


def test_a_stale_cookie_sends_the_gallery_back_to_the_login_form(
    offline: tuple[Any, list[str]],
) -> None:
    page, _blocked = offline
    page.goto("/login")
    log_in(page, READ_TOKEN)
    page.wait_for_selector("#grid .thumb")
    page.context.clear_cookies()  # as after the token was changed on the server
    # Set without typing: autocomplete's own 401 would race the search's to the form.
    page.eval_on_selector("#q", "input => { input.value = 'solo'; }")
    page.click("#search-form button[type=submit]")
    page.wait_for_url("**/login?next=%2F%3Fq%3Dsolo")
    log_in(page, READ_TOKEN)
    page.wait_for_url("**/?q=solo")


def test_swagger_ui_renders_offline(offline: tuple[Any, list[str]]) -> None:
    page, blocked = offline
    page.goto("/login?next=/docs")
    log_in(page, READ_TOKEN)
    page.wait_for_url("**/docs")
    page.wait_for_selector(".opblock-tag[data-tag=search]", timeout=15_000)
    assert page.is_visible(".opblock-summary-path[data-path='/api/similar']")
    assert page.is_visible(".authorize")  # the bearer scheme is declared
    shot(page, "swagger-ui.png")
    assert blocked == []


def test_redoc_renders_offline(offline: tuple[Any, list[str]]) -> None:
    page, blocked = offline
    page.goto("/login?next=/redoc")
    log_in(page, READ_TOKEN)
    page.wait_for_url("**/redoc")
    page.wait_for_selector("h1:has-text('Sagashi')", timeout=15_000)
    page.wait_for_selector("h2:has-text('Similar')", timeout=15_000)
    shot(page, "redoc.png")
    assert blocked == []
