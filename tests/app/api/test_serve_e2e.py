"""End to end over real processes: 'sagashi serve' on a free port with the tiny model, and
'sagashi worker' running the index job queued over HTTP; then search, similar by id and by
upload, tagging and metrics, all over HTTP."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api_helpers import ADMIN_TOKEN, make_library
from tests.support.cli import run_sagashi
from tests.support.network import wait_for
from tests.support.serve_helpers import serving

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path
) -> Iterator[tuple[httpx.Client, dict[str, str], Path]]:
    root = tmp_path_factory.mktemp("e2e")
    environment = {
        "SAGASHI_DATA_DIR": str(root / "data"),
        "SAGASHI_MODEL_DIR": str(tiny_pixai_dir),
        "SAGASHI_ADMIN_TOKEN": ADMIN_TOKEN,
        "SAGASHI_DEVICE": "cpu",
        "SAGASHI_TORCH_THREADS": "1",
        "SAGASHI_DECODE_WORKERS": "1",
        "SAGASHI_WORKER_POLL_SECONDS": "0.2",
    }
    assert run_sagashi("db", "upgrade", env=environment).returncode == 0
    with serving(root, environment) as served:
        client = httpx.Client(base_url=served.base, timeout=30)
        with client:
            yield client, environment, root


def test_index_search_similar_and_tag_over_http(
    server: tuple[httpx.Client, dict[str, str], Path],
) -> None:
    client, environment, root = server
    library = root / "library"
    paths = make_library(library, 8)
    queued = client.post(
        "/api/admin/reindex", headers=AUTH, json={"action": "index", "paths": [str(library)]}
    )
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["id"]
    worker = run_sagashi("worker", "--once", env=environment)
    assert worker.returncode == 0, worker.stderr
    job = client.get(f"/api/admin/jobs/{job_id}", headers=AUTH).json()
    assert job["state"] == "done" and job["summary"]["new"] == 8, job

    page = wait_for(lambda: (b := client.get("/api/search").json())["count"] == 8 and b)
    assert sorted(item["path"] for item in page["items"]) == sorted(str(p) for p in paths)

    first = page["items"][0]
    by_id = client.post("/api/similar", json={"image_id": first["id"], "k": 3}).json()
    assert len(by_id["items"]) == 3 and first["id"] not in [i["id"] for i in by_id["items"]]

    data = Path(first["path"]).read_bytes()
    by_upload = client.post(
        "/api/similar", files={"file": ("q.png", data, "image/png")}, data={"k": "2"}
    ).json()
    assert by_upload["items"][0]["id"] == first["id"]

    tags = client.post(
        "/api/tag", json={"inputs": {"image": base64.b64encode(data).decode()}}
    ).json()
    assert isinstance(tags, list) and all({"tag", "score", "group"} == set(t) for t in tags)
    evaluated = client.post("/evaluate", files={"file": ("q.png", data)}).json()
    assert evaluated[0]["filename"] == "q.png"

    thumb = client.get(f"/api/images/{first['id']}/thumb")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    bad = client.get("/api/search", params={"q": "(("})
    assert bad.status_code == 400 and bad.json()["error"]["position"] == 1
    metrics = client.get("/metrics").text
    assert "sagashi_index_images 8.0" in metrics
    assert 'sagashi_jobs{state="done"}' in metrics


def test_serve_refuses_a_database_it_cannot_open(tmp_path: Path) -> None:
    # a new database is created on first use (test_first_use); one that cannot be opened
    # stops the server before it listens, with the reason
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "sagashi.db").write_bytes(b"not a database" * 100)
    result = run_sagashi("serve", env={"SAGASHI_DATA_DIR": str(tmp_path / "fresh")})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("sagashi: error:")]
    assert len(lines) == 1 and "cannot open the database sqlite:///" in lines[0], result.stderr
