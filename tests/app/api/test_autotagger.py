"""/evaluate as Danbooru's autotagger answers it, over HTTP against a real server (uvicorn on
loopback, the tiny WD model, which has a rating head): Danbooru's own client request byte
for byte, every rating at or above the threshold, parameters in the query string or the
form, the html format, and bad input. The tiny model's tags mean nothing; the contract is
what is checked."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api import create_app
from app.search.plan import RATING_LETTERS, RATING_TAGS
from app.store.migrate import upgrade
from app.tagger import TimmTagger
from app.tagger.batching import predict_stacked, prepare
from app.tagger.vocab import RATING
from tests.support.api_helpers import settings_for
from tests.support.index_helpers import make_image
from tests.support.live_server import serving


@dataclass(frozen=True)
class Autotagger:
    url: str  # POST target: <server>/evaluate
    image: Path
    tagger: TimmTagger


@pytest.fixture(scope="module")
def autotagger(tmp_path_factory: pytest.TempPathFactory, tiny_wd_dir: Path) -> Iterator[Autotagger]:
    root = tmp_path_factory.mktemp("autotagger")
    url = f"sqlite:///{root / 'sagashi.db'}"
    upgrade(url)
    tagger = TimmTagger(tiny_wd_dir, "cpu", 1)
    tagger.load()
    image = make_image(root / "post.jpg", seed=11, size=(72, 64))
    with serving(create_app(settings_for(root, url, tiny_wd_dir), tagger)) as base:
        yield Autotagger(f"{base}/evaluate", image, tagger)


def danbooru_request(image: bytes, filename: str) -> dict[str, Any]:
    """What Danbooru's AutotaggerClient#evaluate sends: ``http.post(url, form: {file:
    HTTP::FormData::File.new(file), threshold: 0.01, format: "json"})``, laid out as the
    http-form_data gem does (its boundary, part headers and no CRLF after the last one)."""
    boundary = "-" * 21 + secrets.token_hex(21)
    parts = [
        b'Content-Disposition: form-data; name="file"; filename="'
        + filename.encode()
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + image,
        b'Content-Disposition: form-data; name="threshold"\r\n\r\n0.01',
        b'Content-Disposition: form-data; name="format"\r\n\r\njson',
    ]
    glue = f"\r\n--{boundary}\r\n".encode()
    body = f"--{boundary}\r\n".encode() + glue.join(parts) + f"\r\n--{boundary}--".encode()
    return {
        "content": body,
        "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    }


def rating_scores(autotagger: Autotagger) -> dict[str, float]:
    """The model's own score for each rating, as "rating:<letter>"."""
    prepared = prepare(autotagger.image.read_bytes(), autotagger.tagger.preprocess, 10**8, True)
    assert prepared.pixels is not None
    probs = predict_stacked(autotagger.tagger, [prepared.pixels]).probs[0]
    vocab = autotagger.tagger.vocab
    letters = {name: RATING_LETTERS[RATING_TAGS.index(name)] for name in RATING_TAGS}
    return {f"rating:{letters[vocab.names[i]]}": float(probs[i]) for i in vocab.indices(RATING)}


def post(autotagger: Autotagger, **request: Any) -> httpx.Response:
    return httpx.post(autotagger.url, timeout=60, **request)


def test_danbooru_clients_request_gets_autotaggers_answer(autotagger: Autotagger) -> None:
    response = post(autotagger, **danbooru_request(autotagger.image.read_bytes(), "post.jpg"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"  # what http.rb parses
    body = response.json()
    assert [set(item) for item in body] == [{"filename", "tags"}]
    assert body[0]["filename"] == "post.jpg"
    tags: dict[str, float] = body[0]["tags"]
    scores = list(tags.values())
    assert 0 < len(tags) <= 50 and all(0.01 <= s <= 1 for s in scores)
    assert scores == sorted(scores, reverse=True)
    # Every rating at or above the threshold, not only the most likely one.
    expected = {name for name, score in rating_scores(autotagger).items() if score >= 0.01}
    assert len(expected) > 1
    assert {name for name in tags if name.startswith("rating:")} == expected


def test_the_query_string_wins_over_the_form_as_in_autotagger(autotagger: Autotagger) -> None:
    files = {"file": ("post.jpg", autotagger.image.read_bytes())}
    form = {"threshold": "0.01", "limit": "50", "format": "html"}
    query = {"threshold": "0.6", "limit": "2", "format": "json"}
    response = post(autotagger, files=files, data=form, params=query)
    assert response.status_code == 200, response.text
    tags = response.json()[0]["tags"]
    assert 0 < len(tags) <= 2 and all(score >= 0.6 for score in tags.values())
    only_query = post(autotagger, files=files, params=query).json()
    assert only_query[0]["tags"] == tags


def test_format_html_answers_a_page_with_everything_escaped(autotagger: Autotagger) -> None:
    name = "<script>alert('x')</script>&.jpg"  # (httpx would percent-encode a double quote)
    files = {"file": (name, autotagger.image.read_bytes())}
    page = post(autotagger, files=files, data={"threshold": "0.2", "format": "html"})
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "<script>" not in page.text and escape(name) in page.text
    tags = post(autotagger, files=files, data={"threshold": "0.2"}).json()  # json: the default
    assert tags[0]["tags"]
    for tag, score in tags[0]["tags"].items():
        assert f'{escape(tag)}</td><td class="score">{100 * score:.0f}%' in page.text


def test_bad_input_is_refused_in_json_whatever_the_format(autotagger: Autotagger) -> None:
    image = ("post.jpg", autotagger.image.read_bytes())
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"data": {"format": "xml"}}, 400, "bad_format"),
        ({"params": {"format": "xml"}, "data": {"format": "json"}}, 400, "bad_format"),
        ({"params": {"threshold": "1.5"}}, 422, "invalid_request"),
        ({"params": {"threshold": "abc"}}, 422, "invalid_request"),
        ({"data": {"threshold": "-0.1"}}, 422, "invalid_request"),
        ({"params": {"limit": "0"}}, 422, "invalid_request"),
        ({"files": [("file", image)] * 33}, 413, "too_large"),
        ({"files": {"file": ("a.jpg", b"x")}, "data": {"format": "html"}}, 415, "bad_image"),
    ]
    for request, status, code in cases:
        request.setdefault("files", {"file": image})
        response = post(autotagger, **request)
        assert response.status_code == status, (request.get("params"), response.text)
        assert response.json()["error"]["code"] == code, response.text


def test_one_bad_file_among_several_gets_its_error_and_the_others_their_tags(
    autotagger: Autotagger,
) -> None:
    image = autotagger.image.read_bytes()
    alone = post(autotagger, files={"file": ("post.jpg", image)}, data={"threshold": "0.2"})
    assert alone.status_code == 200, alone.text
    expected_tags = alone.json()[0]["tags"]
    assert expected_tags
    files = [
        ("file", ("a.jpg", image)),
        ("file", ("broken.jpg", b"not an image at all")),
        ("file", ("b.jpg", image)),
    ]
    response = post(autotagger, files=files, data={"threshold": "0.2"})
    assert response.status_code == 200, response.text
    a, broken, b = response.json()
    assert a == {"filename": "a.jpg", "tags": expected_tags}
    assert b == {"filename": "b.jpg", "tags": expected_tags}
    assert broken["filename"] == "broken.jpg" and broken["tags"] == {}
    assert broken["error"]["code"] == "bad_image"
    assert broken["error"]["message"].startswith("not a decodable image (")
    page = post(autotagger, files=files, data={"threshold": "0.2", "format": "html"})
    assert page.status_code == 200
    assert page.text.count("<textarea") == 2
    assert '<h2>broken.jpg</h2>\n<p class="error">bad_image: not a decodable image (' in page.text
