"""A two-node Ray cluster on one machine (``ray start --head`` and a second ``ray start
--address``, one CPU-only node each with 2 CPUs, the second with a ``node2`` resource), and
``sagashi index --ray HOST:PORT`` and ``sagashi tag-dataset --ray HOST:PORT`` run against
it as a user would: the index equals a local index of the same files, the shards equal a
local tag-dataset's, and the tagger actors ran on both nodes (seen by their parent raylet).

The cluster's processes are found by the session each ``ray start`` was started in and
killed by id at the end (never ``ray stop``, which would end every Ray on the machine). Its
HOME is a temporary folder, so a token another Ray left in ``~/.ray`` is not sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from app.store import migrate
from app.tagger.factory import open_tagger
from indexer import jobs
from indexer.shards import shard_paths
from indexer.tag_dataset import DatasetOptions, tag_dataset
from tests.support.cli import SAGASHI
from tests.support.index_helpers import failed, index_locally
from tests.support.ray_helpers import assert_same, collection, settings_for

pytest.importorskip("ray")
# Ray starts clusters and reads the process table: one xdist worker runs every Ray test.
pytestmark = pytest.mark.xdist_group("ray")

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Cluster:
    address: str
    home: Path
    sessions: list[int]

    def processes(self) -> list[tuple[int, int, str]]:
        """(pid, parent pid, command line) of the processes of the cluster's sessions."""
        listing = subprocess.run(
            ["ps", "-ww", "-eo", "pid=,ppid=,sid=,args="],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found = []
        for line in listing.splitlines():
            pid, ppid, sid, args = line.split(None, 3)
            if int(sid) in self.sessions:
                found.append((int(pid), int(ppid), args))
        return found

    def raylets(self) -> set[int]:
        return {pid for pid, _, args in self.processes() if "raylet/raylet" in args}


def shell_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` as a user's shell has it, without what an earlier in-process Ray left in this
    process's environment: its address, and the token mode a local ``ray.init`` (Ray 2.60)
    turns on for itself and its children, with a token in the real home. With that mode and
    the cluster's fresh home, ``ray start`` and the driver find no token and refuse to run."""
    return {k: v for k, v in env.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}


def ray_start(args: list[str], env: dict[str, str]) -> int:
    """``ray start`` in a session of its own; the session's id (its Ray processes keep it)."""
    process = subprocess.Popen(
        [RAY, "start", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    return process.pid


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="sgr", dir="/tmp"))  # short: Ray's socket paths
    home = root / "home"
    home.mkdir()
    env = shell_environment({**os.environ, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"})
    port = free_port()
    common = ["--num-cpus=2", "--object-store-memory=150000000", "--disable-usage-stats"]
    common += ["--node-ip-address=127.0.0.1"]
    sessions: list[int] = []
    try:
        sessions.append(
            ray_start(
                [
                    "--head",
                    f"--port={port}",
                    f"--temp-dir={root / 'ray'}",
                    "--include-dashboard=false",
                    f"--dashboard-port={free_port()}",
                    f"--dashboard-agent-listen-port={free_port()}",
                    *common,
                ],
                env,
            )
        )
        sessions.append(
            ray_start(
                [
                    f"--address=127.0.0.1:{port}",
                    '--resources={"node2": 1}',
                    f"--dashboard-agent-listen-port={free_port()}",
                    *common,
                ],
                env,
            )
        )
        found = Cluster(f"127.0.0.1:{port}", home, sessions)
        assert len(found.raylets()) == 2, "two nodes, one raylet each"
        yield found
    finally:
        stop(sessions)
        shutil.rmtree(root, ignore_errors=True)


def stop(sessions: list[int]) -> None:
    """Kill the cluster's processes by id (SIGKILL: nothing of theirs needs to survive)."""
    for _ in range(3):
        listing = subprocess.run(
            ["ps", "-eo", "pid=,sid="], capture_output=True, text=True, check=True
        ).stdout
        pids = [
            int(p) for p, s in (line.split() for line in listing.splitlines()) if int(s) in sessions
        ]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)


def run_watching_actors(
    cluster: Cluster, args: list[str], env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], set[int]]:
    """Run sagashi; the raylets whose workers held a tagger actor while it ran."""
    process = subprocess.Popen(
        [SAGASHI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    raylets = cluster.raylets()
    hosts: set[int] = set()
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        for _pid, ppid, command in cluster.processes():
            if "TaggerActor" in command and ppid in raylets:
                hosts.add(ppid)
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr), hosts


def test_index_and_tag_dataset_on_two_nodes_equal_local_runs(
    cluster: Cluster, tmp_path: Path, tiny_pixai_dir: Path
) -> None:
    root = collection(tmp_path / "art")
    url = f"sqlite:///{tmp_path / 'cluster.db'}"
    local_url = f"sqlite:///{tmp_path / 'local.db'}"
    migrate.upgrade(url)
    migrate.upgrade(local_url)
    env = {
        **os.environ,
        "HOME": str(cluster.home),
        "SAGASHI_DATABASE_URL": url,
        "SAGASHI_DATA_DIR": str(tmp_path / "data"),
        "SAGASHI_MODEL_DIR": str(tiny_pixai_dir),
        "SAGASHI_BATCH_SIZE": "8",
        "SAGASHI_DEVICE": "cpu",
        "SAGASHI_LOG_LEVEL": "WARNING",
    }
    env = shell_environment(env)
    tagger = open_tagger(tiny_pixai_dir, "cpu", 1)
    want = index_locally(settings_for(local_url, tmp_path / "local", tiny_pixai_dir), tagger, root)

    ray = ["--ray", cluster.address, "--ray-actors", "2"]
    result, hosts = run_watching_actors(cluster, ["index", str(root), "--json", *ray], env)
    assert result.returncode == 1, result.stderr[-3000:]  # the two bad files
    got = json.loads(result.stdout)
    assert {k: got[k] for k in want.as_dict()} == want.as_dict()
    assert_same(url, local_url)
    assert hosts == cluster.raylets(), "a tagger actor on each node"

    out = tmp_path / "out"
    result, hosts = run_watching_actors(
        cluster, ["tag-dataset", str(root), "--out", str(out), "--json", *ray], env
    )
    assert result.returncode == 1, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert (summary["tagged"], summary["failed"]) == (want.new, want.failed)
    assert hosts == cluster.raylets()
    local_out = tmp_path / "local-out"
    settings = settings_for(local_url, tmp_path / "local", tiny_pixai_dir)
    local = tag_dataset(tagger, jobs.index_options(settings), [root], DatasetOptions(local_out))
    assert failed(local.failures) == failed(want.failures)
    rows = {r["path"]: r for s in shard_paths(out) for r in pq.read_table(s).to_pylist()}
    local_rows = {
        r["path"]: r for s in shard_paths(local_out) for r in pq.read_table(s).to_pylist()
    }
    assert sorted(rows) == sorted(local_rows)
    for path, row in rows.items():
        expected = local_rows[path]
        assert (row["sha256"], row["size"], row["mtime_ns"], row["tag"]) == (
            expected["sha256"],
            expected["size"],
            expected["mtime_ns"],
            expected["tag"],
        )
        np.testing.assert_allclose(row["score"], expected["score"], atol=1e-5)
        np.testing.assert_allclose(row["embedding"], expected["embedding"], atol=1e-5)
