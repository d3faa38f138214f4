"""huggingface_hub's real clients against a real Sagashi server (uvicorn on loopback, the
tiny PixAI model; its tags mean nothing, so the contract is checked, not the tags):

- the PixAI model card's snippet, ``InferenceClient(<endpoint URL>).post(json=...)``, with
  the last huggingface_hub that has ``post()`` (0.30.2; removed in 0.31), installed at test
  time into a folder of its own and run in a subprocess;
- ``InferenceClient(<endpoint URL>).image_classification(...)`` with the huggingface_hub
  this environment installs (2.x), in its three request forms.

Both must get tags for an image and show Sagashi's own message for a refused one.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from app.api import create_app
from app.settings import Settings
from app.store.migrate import upgrade
from tests.support.api_helpers import hf_error_of, settings_for, wait_ready
from tests.support.index_helpers import make_image
from tests.support.live_server import serving

OLD_HUB = "0.30.2"  # the last huggingface_hub whose InferenceClient has post()
MAX_UPLOAD = 60_000

# The model card's snippet, as a user runs it; prints what it got (or what it raised).
CARD_SNIPPET = """
import json, sys, warnings
warnings.simplefilter("ignore")  # post() is deprecated in 0.30
from huggingface_hub import InferenceClient, __version__

client = InferenceClient(sys.argv[1])
try:
    out = client.post(json=json.loads(sys.argv[2]))
    print(json.dumps({"version": __version__, "tags": json.loads(out)}))
except Exception as exc:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    print(json.dumps({"version": __version__, "raised": type(exc).__name__,
                      "text": str(exc), "status": status}))
"""


@dataclass(frozen=True)
class Site:
    endpoint: str  # the URL a user gives InferenceClient: the server's root
    image: Path
    junk: Path  # named .jpg, so clients send it as image/jpeg
    image_url: str  # the image on another loopback host, for the card's {"url": ...}


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A folder of images and an HTTP server for it (the card's input is an image URL)."""
    folder = tmp_path_factory.mktemp("hosted")
    make_image(folder / "a.png", seed=3, size=(64, 48))
    (folder / "junk.jpg").write_bytes(b"this is not an image at all")
    handler = functools.partial(_QuietFiles, directory=str(folder))
    host = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{host.server_address[1]}"
    host.shutdown()


def _settings(root: Path, model_dir: Path | None) -> Settings:
    url = f"sqlite:///{root / 'sagashi.db'}"
    upgrade(url)
    return settings_for(
        root,
        url,
        model_dir,  # type: ignore[arg-type]  # None: no model configured
        url_fetch=True,
        url_fetch_allow=["127.0.0.1/32"],
        max_upload_bytes=MAX_UPLOAD,
    )


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path, files: tuple[Path, str]
) -> Iterator[Site]:
    folder, host = files
    settings = _settings(tmp_path_factory.mktemp("hf-site"), tiny_pixai_dir)
    with serving(create_app(settings)) as base:
        yield Site(f"{base}/", folder / "a.png", folder / "junk.jpg", f"{host}/a.png")


@pytest.fixture(scope="module")
def modelless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with no model configured: every tagging request is a 503."""
    settings = _settings(tmp_path_factory.mktemp("hf-modelless"), None)
    with serving(create_app(settings)) as base:
        yield f"{base}/"


@pytest.fixture(scope="session")
def old_hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """huggingface_hub 0.30.2 with its dependencies in a folder of their own (this
    environment has 2.x), installed once into pytest's cache, for PYTHONPATH."""
    cache = getattr(request.config, "cache", None)
    base = cache.mkdir("old-huggingface-hub") if cache else tmp_path_factory.mktemp("hub")
    target = base / OLD_HUB
    if (target / "huggingface_hub").is_dir():
        return target
    partial = Path(tempfile.mkdtemp(dir=base, prefix="installing-"))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    command += ["--no-input", "--target", str(partial), f"huggingface_hub=={OLD_HUB}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"pip could not install huggingface_hub=={OLD_HUB} (registry?): {reason}")
    try:
        partial.rename(target)  # whole or not at all: a half install is never reused
    except OSError:  # another session installed it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    return target


def run_card_snippet(old_hub: Path, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="hf-home-"))
    environment = {**os.environ, "PYTHONPATH": str(old_hub), "HF_HOME": str(home)}
    environment.pop("HF_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-c", CARD_SNIPPET, endpoint, json.dumps(body)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        cwd=home,
        check=False,
    )
    shutil.rmtree(home, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["version"] == OLD_HUB  # the old client ran, not this environment's
    return answer


def sagashi_message(endpoint: str, **request: Any) -> str:
    """The message Sagashi answers for a request, for comparing with a client's exception."""
    response = httpx.post(endpoint, timeout=30, **request)
    assert response.status_code >= 400, response.text
    message: str = response.json()["error"]
    return message


def card_body(inputs: dict[str, str]) -> dict[str, Any]:
    parameters = {"top_k": 128, "threshold_general": 0.10, "threshold_character": 0.75}
    return {"inputs": inputs, "parameters": parameters}


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


# --- the model card's snippet, huggingface_hub 0.30.2 -------------------------------------


def test_the_card_snippet_gets_the_pixai_answer(old_hub: Path, site: Site) -> None:
    body = card_body({"url": site.image_url})
    answer = run_card_snippet(old_hub, site.endpoint, body)
    assert "tags" in answer, answer
    tags = answer["tags"]
    assert tags and all(set(t) == {"tag", "score", "group"} for t in tags)
    scores = [t["score"] for t in tags]
    assert scores == sorted(scores, reverse=True)
    # The endpoint's root and /api/tag are one contract.
    assert httpx.post(f"{site.endpoint}api/tag", json=body, timeout=30).json() == tags


def test_the_card_snippet_shows_sagashis_message(old_hub: Path, site: Site, modelless: str) -> None:
    junk = card_body({"image": b64(site.junk)})
    answer = run_card_snippet(old_hub, site.endpoint, junk)
    assert (answer.get("raised"), answer["status"]) == ("HfHubHTTPError", 415), answer
    expected = sagashi_message(site.endpoint, json=junk)
    assert expected.startswith("not a decodable image")
    assert expected in answer["text"].splitlines()  # the message itself, not a dict's repr

    answer = run_card_snippet(old_hub, modelless, card_body({"image": b64(site.image)}))
    assert (answer.get("raised"), answer["status"]) == ("HfHubHTTPError", 503), answer
    assert "no model is configured on this server" in answer["text"]


# --- image_classification, this environment's huggingface_hub (2.x) ----------------------


@pytest.mark.parametrize("form", ["path", "bytes", "top_k"])
def test_image_classification_gets_the_tags(site: Site, form: str) -> None:
    client = InferenceClient(site.endpoint)
    if form == "path":  # raw body, Content-Type: image/png
        labels = client.image_classification(str(site.image))
    elif form == "bytes":  # raw body, no Content-Type
        labels = client.image_classification(site.image.read_bytes())
    else:  # JSON: {"inputs": <base64>, "parameters": {"top_k": 3}}
        labels = client.image_classification(str(site.image), top_k=3)
    pixai = httpx.post(site.endpoint, json={"inputs": {"image": b64(site.image)}}, timeout=30)
    expected = [(t["tag"], t["score"]) for t in pixai.json()]  # the card's defaults
    assert [(item.label, item.score) for item in labels] == expected[
        : 3 if form == "top_k" else None
    ]
    assert labels


@pytest.mark.parametrize("case", ["bad image", "no model"])
def test_image_classification_shows_sagashis_message(site: Site, modelless: str, case: str) -> None:
    endpoint, image, status = {
        "bad image": (site.endpoint, site.junk, 415),
        "no model": (modelless, site.image, 503),
    }[case]
    with pytest.raises(HfHubHTTPError) as caught:
        InferenceClient(endpoint).image_classification(str(image))
    assert caught.value.response.status_code == status
    headers = {"Content-Type": "image/jpeg"}
    expected = sagashi_message(endpoint, content=image.read_bytes(), headers=headers)
    assert expected in str(caught.value).splitlines()


# --- the contract's edges, in process ----------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path) -> Iterator[TestClient]:
    settings = _settings(tmp_path_factory.mktemp("hf-edges"), tiny_pixai_dir)
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.mark.parametrize("path", ["/", "/api/tag"])
@pytest.mark.parametrize(
    ("request_args", "status", "code"),
    [
        (
            {"content": b"x" * (MAX_UPLOAD + 1), "headers": {"Content-Type": "image/png"}},
            413,
            "too_large",
        ),
        # Past the body limit middleware's cap: refused before any route runs.
        ({"json": {"inputs": "A" * (3 * MAX_UPLOAD + 1_100_000)}}, 413, "too_large"),
        (
            {"content": b"", "headers": {"Content-Type": "application/octet-stream"}},
            415,
            "bad_image",
        ),
        (
            {"content": b"hello", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        (
            {"content": b"{nope", "headers": {"Content-Type": "application/json"}},
            422,
            "invalid_request",
        ),
        ({"json": ["inputs"]}, 422, "invalid_request"),
        ({"json": {"inputs": 5}}, 422, "invalid_request"),
        ({"json": {"inputs": "AAAA", "parameters": {"top_k": 0}}}, 422, "invalid_request"),
        (
            {"json": {"inputs": "AAAA", "parameters": {"function_to_apply": "softmax"}}},
            422,
            "invalid_request",
        ),
        ({"json": {"inputs": "%%%"}}, 400, "bad_base64"),
        ({"json": {"inputs": "AAAA"}}, 415, "bad_image"),
    ],
)
def test_drop_in_errors_are_in_hugging_faces_shape(
    client: TestClient, path: str, request_args: dict[str, Any], status: int, code: str
) -> None:
    assert hf_error_of(client.post(path, **request_args), status) == code


def test_post_root_is_the_endpoint_and_get_root_stays_the_gallery(
    client: TestClient, files: tuple[Path, str]
) -> None:
    folder, _host = files
    body = {"inputs": {"image": b64(folder / "a.png")}}
    tagged = client.post("/", json=body)
    assert tagged.status_code == 200, tagged.text
    assert tagged.json() == client.post("/api/tag", json=body).json()
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # Only these POSTs answer in Hugging Face's shape; the rest keep Sagashi's.
    nested = client.get("/api/tag")
    assert nested.status_code == 405 and nested.json()["error"]["code"] == "method_not_allowed"
    junk = {"file": ("a.png", b"junk")}
    evaluate = client.post("/evaluate", files=junk, data={"format": "json"})
    assert evaluate.status_code == 415 and evaluate.json()["error"]["code"] == "bad_image"
