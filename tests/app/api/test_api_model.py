"""The upload model in the server: the micro-batcher gives every request its own row while
sharing forward passes, a missing or broken model is a 503 with the reason (never a 500),
and SAGASHI_MODEL_LOAD=startup holds readiness until the model is loaded."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.api import create_app
from app.api.inference import MicroBatcher
from app.store.migrate import upgrade
from app.tagger import TimmTagger
from tests.support.api_helpers import hf_error_of, settings_for, wait_ready
from tests.support.index_helpers import make_image


def test_micro_batcher_answers_each_request_with_its_own_row(tiny_pixai_dir: Path) -> None:
    tagger = TimmTagger(tiny_pixai_dir, "cpu", 1)
    tagger.load()
    size = tagger.preprocess.size
    rng = np.random.default_rng(0)
    tensors = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(24)]
    alone = [tagger.predict_pixels(torch.from_numpy(t)[None]) for t in tensors]
    batcher = MicroBatcher(tagger, batch_size=8)
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    start = threading.Barrier(len(tensors))

    def ask(index: int) -> None:
        start.wait()
        results[index] = batcher.submit(tensors[index]).result(timeout=60)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(tensors))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, prediction in enumerate(alone):
        probs, embedding = results[index]
        np.testing.assert_allclose(probs, prediction.probs[0], atol=1e-5)
        np.testing.assert_allclose(embedding, prediction.embeddings[0], atol=1e-5)
    assert batcher.batches < len(tensors), "concurrent requests should share forward passes"


def _client(tmp_path: Path, model_dir: Path, **overrides: object) -> TestClient:
    url = f"sqlite:///{tmp_path / 'sagashi.db'}"
    upgrade(url)
    return TestClient(create_app(settings_for(tmp_path, url, model_dir, **overrides)))


def image_body(tmp_path: Path) -> dict[str, object]:
    import base64

    data = make_image(tmp_path / "q.png", seed=1).read_bytes()
    return {"inputs": {"image": base64.b64encode(data).decode()}}


@pytest.mark.parametrize("model", ["missing", "broken"])
def test_an_unusable_model_is_a_503_with_the_reason(tmp_path: Path, model: str) -> None:
    model_dir = tmp_path / "model"
    if model == "broken":
        model_dir.mkdir()
        (model_dir / "model.safetensors").write_bytes(b"not a model")
        (model_dir / "selected_tags.csv").write_text("tag_id,name,category,count\n")
    with _client(tmp_path, model_dir) as client:
        wait_ready(client)  # lazy loading: the server is ready without a model
        response = client.post("/api/tag", json=image_body(tmp_path))
        assert hf_error_of(response, 503) == "model_unavailable"
        assert "model" in response.json()["error"]
        files = {"file": ("q.png", (tmp_path / "q.png").read_bytes(), "image/png")}
        assert client.post("/evaluate", files=files).status_code == 503


def test_no_model_configured_is_a_503(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sagashi.db'}"
    upgrade(url)
    settings = settings_for(tmp_path, url, tmp_path).model_copy(update={"model_dir": None})
    with TestClient(create_app(settings)) as client:
        response = client.post("/api/tag", json=image_body(tmp_path))
        assert hf_error_of(response, 503) == "model_unavailable"
        assert "SAGASHI_MODEL_DIR" in response.json()["error"]


def test_startup_loading_holds_readiness(tmp_path: Path, tiny_pixai_dir: Path) -> None:
    with _client(tmp_path, tiny_pixai_dir, model_load="startup") as client:
        wait_ready(client)
        ready = client.get("/readyz").json()
        assert ready["checks"]["model"] == "loaded"
        assert "sagashi_model_loaded 1.0" in client.get("/metrics").text
    broken = tmp_path / "broken"
    broken.mkdir()
    with _client(tmp_path, broken, model_load="startup") as client:
        for _ in range(600):
            response = client.get("/readyz")
            if response.json()["error"]["code"] != "starting":
                break
            threading.Event().wait(0.05)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "failed"
        assert client.get("/healthz").status_code == 200


def test_a_users_rules_file_applies_to_api_tag_and_evaluate(
    tmp_path: Path, tiny_pixai_dir: Path
) -> None:
    body = {**image_body(tmp_path), "parameters": {"threshold_general": 0.0, "top_k": 50}}
    files = {"file": ("q.png", (tmp_path / "q.png").read_bytes(), "image/png")}
    form = {"threshold": "0", "limit": "50", "format": "json"}
    (tmp_path / "plain").mkdir()
    (tmp_path / "ruled").mkdir()
    with _client(tmp_path / "plain", tiny_pixai_dir) as client:
        wait_ready(client)
        plain = client.post("/api/tag", json=body).json()
        plain_eval = client.post("/evaluate", files=files, data=form).json()[0]["tags"]
    general = [t for t in plain if t["group"] == "general"]
    best, second, third = (t["tag"] for t in general[:3])  # by score
    rules = tmp_path / "rules.txt"
    rules.write_text(f"{second} | {best} {third}\n")
    with _client(tmp_path / "ruled", tiny_pixai_dir, exclusion_file=rules) as client:
        wait_ready(client)
        ruled = [t["tag"] for t in client.post("/api/tag", json=body).json()]
        ruled_eval = client.post("/evaluate", files=files, data=form).json()[0]["tags"]
    assert best in ruled and third in ruled and second not in ruled
    assert len(ruled) == len(plain) - 1
    assert second in plain_eval and second not in ruled_eval and best in ruled_eval
