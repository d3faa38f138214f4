"""The compose deployment, validated without a Docker engine: `docker-compose config` (Debian's
docker-compose package) must accept the file, and the resolved services must start in the
right order on health conditions, with the worker on a GPU and the images read-only."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.support.paths import REPO_ROOT

COMPOSE = shutil.which("docker-compose")


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    return compose_config({})


def compose_config(variables: dict[str, str]) -> dict[str, Any]:
    """The file as `docker-compose config` resolves it, with LIBRARY_DIR and the admin token
    set, and these variables."""
    if COMPOSE is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose)")
    environment = {
        **os.environ,
        "LIBRARY_DIR": "/srv/art",
        "SAGASHI_ADMIN_TOKEN": "t0ken",
        **variables,
    }
    result = subprocess.run(
        [COMPOSE, "-f", str(REPO_ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_services_start_in_order_on_health(resolved: dict[str, Any]) -> None:
    services = {
        name: service
        for name, service in resolved["services"].items()
        if not service.get("profiles")  # started only when asked for (the Ray profile)
    }
    assert set(services) == {"postgres", "migrate", "api", "worker"}
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "pgdata:/var/lib/postgresql/data:rw" in _volumes(services["postgres"])
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }
    assert services["api"]["command"][0] == "serve"
    assert services["worker"]["command"] == ["worker"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])


def test_the_worker_reserves_a_gpu_and_both_see_the_images_read_only(
    resolved: dict[str, Any],
) -> None:
    services = resolved["services"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["worker"]["build"]["args"]["VARIANT"] == "cuda"
    assert services["migrate"]["build"]["args"]["VARIANT"] == "cpu"
    for name in ("api", "worker"):
        assert "/srv/art:/library:ro" in _volumes(services[name])
        assert any(v.startswith("data:/data") for v in _volumes(services[name]))
    assert any(v.startswith("models:/models") for v in _volumes(services["worker"]))
    assert "models:/models:ro" in _volumes(services["api"])


def test_every_service_talks_to_postgres_with_the_same_settings(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    urls = {
        services[n]["environment"]["SAGASHI_DATABASE_URL"] for n in ("migrate", "api", "worker")
    }
    assert urls == {"postgresql://sagashi:sagashi@postgres:5432/sagashi"}
    assert services["api"]["environment"]["SAGASHI_ADMIN_TOKEN"] == "t0ken"
    from app.settings import Settings

    for name in ("migrate", "api", "worker"):
        known = {f"SAGASHI_{field.upper()}" for field in Settings.model_fields}
        used = {key for key in services[name]["environment"] if key.startswith("SAGASHI_")}
        assert used <= known, f"{name} sets unknown settings: {used - known}"


def test_the_api_is_published_on_loopback_unless_told_otherwise(
    resolved: dict[str, Any],
) -> None:
    assert _ports(resolved["services"]["api"]) == ["127.0.0.1:8000:8000"]
    assert resolved["services"]["api"]["environment"]["SAGASHI_READ_TOKEN"] == ""
    token = "r3ad-t0ken-0123456789"
    exposed = compose_config({"API_BIND": "0.0.0.0", "SAGASHI_READ_TOKEN": token})
    assert _ports(exposed["services"]["api"]) == ["0.0.0.0:8000:8000"]
    assert exposed["services"]["api"]["environment"]["SAGASHI_READ_TOKEN"] == token
    for name in ("postgres", "migrate", "worker"):
        assert "ports" not in exposed["services"][name], name


def test_the_ray_profile_has_a_head_and_a_gpu_worker_on_the_same_paths(
    resolved: dict[str, Any],
) -> None:
    services = resolved["services"]
    head, worker = services["ray-head"], services["ray-gpu-worker"]
    assert head["profiles"] == worker["profiles"] == ["ray"]
    assert head["build"]["args"] == {"VARIANT": "cuda", "MORE_EXTRAS": ",ray"}
    assert head["image"] == worker["image"] == "sagashi:cuda-ray"
    assert head["entrypoint"] == worker["entrypoint"] == ["ray"]
    assert head["command"][:2] == ["start", "--head"] and "--port=6379" in head["command"]
    assert worker["command"][:2] == ["start", "--address=ray-head:6379"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    # The driver runs in the head: the single writer, with the database and the data dir.
    assert head["environment"]["SAGASHI_DATABASE_URL"].endswith("@postgres:5432/sagashi")
    assert any(v.startswith("data:/data") for v in _volumes(head))
    for service in (head, worker):  # Ray's workers read images and the model by path
        assert "/srv/art:/library:ro" in _volumes(service)
        assert "models:/models:ro" in _volumes(service)
    dockerfile = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert 'pip install --no-cache-dir -e ".[${EXTRAS}${MORE_EXTRAS}]"' in dockerfile
    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^ray = \["ray\[data\]', pyproject, flags=re.M)


def test_the_dockerfile_builds_both_variants() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG VARIANT=cpu" in text
    assert re.search(r"^FROM .* AS base-cpu$", text, flags=re.M)
    assert re.search(r"^FROM nvidia/cuda:.* AS base-cuda$", text, flags=re.M)
    assert "FROM base-${VARIANT}" in text
    assert 'ENTRYPOINT ["sagashi"]' in text


def _volumes(service: dict[str, Any]) -> list[str]:
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            found.append(volume)
        else:
            mode = ":ro" if volume.get("read_only") else ""
            found.append(f"{volume['source']}:{volume['target']}{mode}")
    return found


def _ports(service: dict[str, Any]) -> list[str]:
    found = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            found.append(port.removesuffix("/tcp"))
        else:
            found.append(f"{port.get('host_ip', '')}:{port['published']}:{port['target']}")
    return found
