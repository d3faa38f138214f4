"""``sagashi index --ray``: the tagging on a real local Ray (two CPUs), the scan and change
detection the local index's own. Results equal a local index of the same files; bad files are
reported as locally; a missing Ray is one line and exit status 2."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.settings import Settings
from app.store import migrate
from app.store.db import create_db_engine
from app.tagger.factory import open_tagger
from app.tagger.protocol import Tagger
from indexer import jobs
from indexer.pipeline import IndexSummary
from indexer.ray_tagging import INSTALL_HINT, RayIndexer, RayOptions, ray_options
from tests.support.index_helpers import failed, index_locally, make_image
from tests.support.ray_helpers import IMAGES, assert_same, collection, settings_for

ray = pytest.importorskip("ray")
# Ray starts clusters and reads the process table: one xdist worker runs every Ray test.
pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def index_on_ray(settings: Settings, tagger: Tagger, root: Path) -> IndexSummary:
    """A Ray run, whose progress must count every file found once: never past the total,
    and all of them at the end."""
    engine = create_db_engine(settings.database_url or "")
    options = ray_options(settings, "auto", actors=1)
    seen: list[tuple[int, int]] = []
    try:
        indexer = RayIndexer(
            engine, tagger, jobs.index_options(settings), options, settings.data_dir
        )
        summary = indexer.run([root], lambda done, total: seen.append((done, total)))
    finally:
        engine.dispose()
    assert all(done <= total for done, total in seen)
    found = summary.new + summary.modified + summary.unchanged + summary.moved + summary.failed
    assert seen[-1] == (found, found)
    return summary


def test_ray_index_equals_a_local_index_through_changes(
    local_ray: None, db_url: str, tmp_path: Path, tiny_pixai_dir: Path
) -> None:
    root = collection(tmp_path / "art")
    local_url = f"sqlite:///{tmp_path / 'local.db'}"
    migrate.upgrade(local_url)
    migrate.upgrade(db_url)
    local = settings_for(local_url, tmp_path / "local-data", tiny_pixai_dir)
    on_ray = settings_for(db_url, tmp_path / "ray-data", tiny_pixai_dir)
    tagger = open_tagger(tiny_pixai_dir, "cpu", 1)

    want = index_locally(local, tagger, root)
    got = index_on_ray(on_ray, tagger, root)
    assert got.as_dict() == want.as_dict()
    assert got.new == IMAGES and got.failed == 2
    assert failed(got.failures) == failed(want.failures)  # per file, with the local run's reasons
    assert_same(db_url, local_url)
    assert not (tmp_path / "ray-data" / "ray-shards").exists() or not any(
        (tmp_path / "ray-data" / "ray-shards").rglob("*.parquet")
    ), "the shards go once imported"

    # Moved, modified, deleted, replaced by a moved file, and a copy: decided as locally
    # (a move keeps its tags and is not tagged again).
    shutil.move(root / "0" / "001.png", root / "2" / "moved.png")
    make_image(root / "0" / "002.png", seed=1000)
    (root / "1" / "011.png").unlink()
    shutil.move(root / "1" / "012.png", root / "1" / "013.png")
    shutil.copy(root / "2" / "020.png", root / "2" / "copy.png")
    (root / "0" / "not-an-image.png").unlink()
    want = index_locally(local, tagger, root)
    got = index_on_ray(on_ray, tagger, root)
    assert got.as_dict() == want.as_dict()
    # Deleted: 011 gone, and 013's old content replaced by the moved 012.
    assert (got.moved, got.modified, got.deleted) == (2, 1, 2)
    assert failed(got.failures) == failed(want.failures)
    assert_same(db_url, local_url)

    # Nothing changed: nothing read, nothing sent to Ray.
    again = index_on_ray(on_ray, tagger, root)
    assert again.as_dict() == index_locally(local, tagger, root).as_dict()
    assert again.unchanged == IMAGES - 1 and again.new == again.modified == 0  # 2 gone, a copy


def tagger_actor_pids() -> list[int]:
    """The processes of the tagger actors of this test's own local Ray."""
    listing = subprocess.run(
        ["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True
    ).stdout
    return [
        int(line.split(None, 1)[0])
        for line in listing.splitlines()
        if "ray::MapWorker" in line and "TaggerActor" in line
    ]


def test_a_killed_actor_is_restarted_and_the_result_is_exact(
    local_ray: None, tmp_path: Path, tiny_pixai_dir: Path
) -> None:
    import threading
    import time

    from indexer.ray_tagging import shard_folder

    root = collection(tmp_path / "art")
    for i in range(IMAGES, 4 * IMAGES):  # long enough to be killed midway
        make_image(root / "3" / f"{i:03d}.png", seed=i)
    url = f"sqlite:///{tmp_path / 'ray.db'}"
    local_url = f"sqlite:///{tmp_path / 'local.db'}"
    migrate.upgrade(url)
    migrate.upgrade(local_url)
    settings = settings_for(url, tmp_path / "data", tiny_pixai_dir)
    tagger = open_tagger(tiny_pixai_dir, "cpu", 1)
    folder = shard_folder(settings.data_dir, tagger)
    outcome: list[IndexSummary] = []
    run = threading.Thread(target=lambda: outcome.append(index_on_ray(settings, tagger, root)))
    run.start()
    killed: list[int] = []
    deadline = time.monotonic() + 120
    while run.is_alive() and not killed and time.monotonic() < deadline:
        if folder.is_dir() and any(folder.glob("*.parquet")):
            for pid in tagger_actor_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.02)
    run.join(timeout=300)
    assert killed, "the actor was killed while the run went on"
    assert outcome, "the run finished despite the lost actor"
    summary = outcome[0]
    assert summary.new == 4 * IMAGES and summary.failed == 2
    want = index_locally(settings_for(local_url, tmp_path / "l", tiny_pixai_dir), tagger, root)
    assert failed(summary.failures) == failed(want.failures)
    assert_same(url, local_url)


def test_without_ray_the_option_fails_in_one_line(tmp_path: Path, tiny_pixai_dir: Path) -> None:
    root = collection(tmp_path / "art")
    env = {
        **os.environ,
        "SAGASHI_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "SAGASHI_DATA_DIR": str(tmp_path / "data"),
        "SAGASHI_MODEL_DIR": str(tiny_pixai_dir),
    }
    program = (
        "import sys; sys.modules['ray'] = None; from indexer.cli import main; "
        f"sys.argv = ['sagashi', 'index', {str(root)!r}, '--ray', 'local']; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"sagashi: error: {INSTALL_HINT}"
    assert not (tmp_path / "db.sqlite").exists(), "nothing is done before the refusal"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1:1", "cannot reach Ray at '127.0.0.1:1': Connection refused"),
        ("nowhere", "bad Ray address 'nowhere': use local, auto, HOST:PORT or ray://HOST:PORT"),
    ],
)
def test_an_address_nothing_answers_at_fails_in_one_line(
    tmp_path: Path, tiny_pixai_dir: Path, address: str, reason: str
) -> None:
    env = {
        **os.environ,
        "SAGASHI_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "SAGASHI_DATA_DIR": str(tmp_path / "data"),
        "SAGASHI_MODEL_DIR": str(tiny_pixai_dir),
    }
    sagashi = str(Path(sys.executable).with_name("sagashi"))
    result = subprocess.run(
        [sagashi, "index", str(tmp_path), "--ray", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"sagashi: error: {reason}"
    assert not (tmp_path / "db.sqlite").exists(), "nothing is done before the refusal"


def test_options_follow_the_settings(tmp_path: Path, tiny_pixai_dir: Path) -> None:
    settings = settings_for("sqlite://", tmp_path, tiny_pixai_dir)
    options = ray_options(settings, "ray://head:10001", actors=3)
    assert options == RayOptions(
        "ray://head:10001",
        tiny_pixai_dir.resolve(),
        "cpu",
        settings.torch_threads,
        3,
        forward=options.forward,
    )


def test_what_ray_reports_during_a_run_stays_off_standard_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The driver prints the raylet's reports (a worker that died) with this function of
    Ray's; on standard output they once broke the JSON of 'sagashi index --ray --json'."""
    from ray._private.worker import print_to_stdstream

    from indexer.ray_tagging import results_kept

    report = {"lines": ["A worker died or was killed"], "pid": "raylet", "is_err": False}
    with results_kept():
        print_to_stdstream(report, ignore_prefix=False)
    out, err = capsys.readouterr()
    assert out == ""
    assert "A worker died or was killed" in err
