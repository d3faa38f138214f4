"""Schema fuzzing: schemathesis generates requests from the app's own OpenAPI schema (valid
and invalid ones) against a real index; no request may cause a 500, and every error must
use the one JSON error shape (Hugging Face's, on the drop-in tagging endpoints)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from app.api.danbooru.shape import danbooru_shaped
from app.api.hf_errors import HF_SHAPED_POSTS
from tests.support.api_helpers import ADMIN_TOKEN, ApiEnv, indexed_env


@pytest.fixture(scope="module", params=["sqlite"])
def fuzz_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path
) -> Iterator[ApiEnv]:
    yield from indexed_env(request, tmp_path_factory.mktemp("fuzz"), tiny_pixai_dir)


@pytest.fixture(scope="module")
def api_schema(fuzz_env: ApiEnv) -> Any:
    # The TestClient above ran the lifespan, so the app's resources are in place for the
    # requests schemathesis sends to the same app object.
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_env.client.app)


def _fuzzer(operation: Any, admin: bool, statuses: list[int]) -> Any:
    operation_headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if admin else {}

    @given(case=operation.as_strategy())
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    def fuzz(case: Any) -> None:
        response = case.call(headers=operation_headers)
        statuses.append(response.status_code)
        where = f"{case.method} {case.formatted_path}"
        assert response.status_code < 500, f"{where}: {response.text}"
        if response.status_code >= 400 and response.status_code != 405:
            body = response.json()
            if case.method == "POST" and case.path in HF_SHAPED_POSTS:
                assert set(body) == {"error", "code"}, f"{where}: {body}"
                assert isinstance(body["error"], str) and body["error"] and body["code"], body
                return
            if danbooru_shaped({"path": case.formatted_path}):
                # Danbooru's routes answer in Danbooru's error shape, as its clients expect.
                assert set(body) == {"success", "error", "message"}, f"{where}: {body}"
                assert body["success"] is False and body["error"] and body["message"], body
                return
            assert set(body) == {"error"}, f"{where}: {body}"
            assert body["error"]["code"] and body["error"]["message"], body

    return fuzz


def test_no_request_causes_a_server_error(api_schema: Any) -> None:
    checked = []
    statuses: list[int] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/api/admin/reindex":
            continue  # queues jobs for a worker; its validation is covered in test_api
        fuzz = _fuzzer(operation, "/admin/" in operation.path, statuses)
        fuzz()

        checked.append(f"{operation.method.upper()} {operation.path}")
    assert len(checked) >= 14, checked
    # The generated requests reached the routes: both accepted and refused ones.
    assert len(statuses) >= 10 * len(checked)
    assert any(200 <= code < 300 for code in statuses)
    assert sum(400 <= code < 500 for code in statuses) >= len(checked)
