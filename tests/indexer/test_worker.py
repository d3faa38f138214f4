"""Jobs queued through the admin API and run by the worker, on SQLite and PostgreSQL: the
same code as the CLI commands, one claim per job, a busy writer puts the job back, and a
failure is recorded on the job with its reason."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.store.job_records import (
    MAX_ATTEMPTS,
    JobRecorder,
    claim_next,
    enqueue,
    get_job,
    recover_dead,
)
from app.store.locks import writer_lock
from indexer.worker import Worker
from tests.support.api_helpers import ADMIN_TOKEN, ApiEnv, indexed_env
from tests.support.index_helpers import make_image

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path, tiny_pixai_dir: Path) -> Iterator[ApiEnv]:
    yield from indexed_env(request, tmp_path, tiny_pixai_dir)


def queue(client: TestClient, body: dict[str, object]) -> int:
    response = client.post("/api/admin/reindex", headers=AUTH, json=body)
    assert response.status_code == 202, response.text
    job_id: int = response.json()["id"]
    return job_id


def job(client: TestClient, job_id: int) -> dict:  # type: ignore[type-arg]
    body: dict = client.get(f"/api/admin/jobs/{job_id}", headers=AUTH).json()  # type: ignore[type-arg]
    return body


def run_queue(env: ApiEnv) -> int:
    return Worker(env.engine, env.settings).serve(threading.Event(), once=True)


def test_queued_jobs_run_like_the_commands(env: ApiEnv) -> None:
    before = env.client.get("/api/search").json()["count"]
    extra = env.root / "more"
    for i in range(3):
        make_image(extra / f"new{i}.png", seed=100 + i)
    index_job = queue(env.client, {"action": "index", "paths": [str(extra)]})
    rebuild_job = queue(env.client, {"action": "rebuild_faiss"})
    retag_job = queue(env.client, {"action": "reindex", "where": "path:*/more/*"})
    assert run_queue(env) == 3
    indexed = job(env.client, index_job)
    assert indexed["state"] == "done", indexed
    assert indexed["summary"]["new"] == 3
    assert indexed["done"] == indexed["total"] == 3
    rebuilt = job(env.client, rebuild_job)
    assert rebuilt["state"] == "done"
    assert rebuilt["summary"]["vectors"] == before + 3
    retagged = job(env.client, retag_job)
    assert retagged["state"] == "done", retagged
    assert retagged["summary"]["retagged"] == 3
    reload = env.client.post("/api/admin/index/reload", headers=AUTH).json()
    assert reload["images"] == before + 3
    found = env.client.get("/api/search", params={"q": "path:*/more/*"}).json()
    assert sorted(item["path"] for item in found["items"]) == sorted(
        str(p) for p in extra.iterdir()
    )
    assert run_queue(env) == 0  # nothing left


def test_failures_are_recorded_on_the_job(env: ApiEnv) -> None:
    missing = queue(env.client, {"action": "index", "paths": [str(env.root / "nowhere")]})
    bad_model = queue(
        env.client,
        {"action": "index", "paths": [str(env.library)], "model_dir": str(env.root / "nomodel")},
    )
    assert run_queue(env) == 2
    missing_job = job(env.client, missing)
    assert missing_job["state"] == "done"
    assert missing_job["failed"] == 1
    assert missing_job["failures"][0]["path"].endswith("nowhere")
    failed = job(env.client, bad_model)
    assert failed["state"] == "failed"
    assert "nomodel" in failed["error"]


def test_jobs_wait_while_another_run_writes(env: ApiEnv) -> None:
    job_id = queue(env.client, {"action": "rebuild_faiss"})
    with writer_lock(env.engine):
        assert run_queue(env) == 0
        record = get_job(env.engine, job_id)
        assert record is not None and record.state == "queued"
    assert run_queue(env) == 1
    assert job(env.client, job_id)["state"] == "done"


def test_dead_jobs_are_settled_by_the_next_lock_holder(env: ApiEnv) -> None:
    queued = enqueue(env.engine, "rebuild_faiss", {})
    claimed = claim_next(env.engine)  # its worker "dies" here, holding no lock
    assert claimed is not None and claimed.id == queued.id
    cli_run = JobRecorder(env.engine, "index", {"paths": ["/x"]})  # a command that died
    assert run_queue(env) == 1
    resumed = job(env.client, queued.id)
    assert resumed["state"] == "done" and resumed["attempts"] == 2
    died = job(env.client, cli_run.id)
    assert died["state"] == "failed" and "process died" in died["error"]


def test_a_job_that_keeps_dying_is_given_up(env: ApiEnv) -> None:
    queued = enqueue(env.engine, "rebuild_faiss", {})
    for _ in range(MAX_ATTEMPTS):
        assert claim_next(env.engine) is not None
        with writer_lock(env.engine):
            recover_dead(env.engine)
    record = job(env.client, queued.id)
    assert record["state"] == "failed"
    assert f"{MAX_ATTEMPTS} times" in record["error"]


def test_each_job_is_claimed_once(env: ApiEnv) -> None:
    ids = {enqueue(env.engine, "rebuild_faiss", {}).id for _ in range(6)}
    claimed: list[int] = []

    def claim() -> None:
        while (found := claim_next(env.engine)) is not None:
            claimed.append(found.id)

    threads = [threading.Thread(target=claim) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids)
