"""``sagashi tag-dataset s3://BUCKET/PREFIX``: objects listed and read through pyarrow's
S3 filesystem, against a real S3-compatible server (moto's, on a free local port). The shards
equal those of the same files on local disk (path and mtime aside: the path is the object's
URI, the mtime the listing's), with the same per-file failures, in this process and on a
local Ray; a rerun skips every object; a bad URI, an endpoint that does not answer or a
missing bucket is one line and exit status 2, in bounded time; ``sagashi index`` refuses a
URI with a pointer to tag-dataset and import."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from app.store import migrate
from app.store.db import create_db_engine, session_factory
from app.store.models import Image
from app.tagger.factory import open_tagger
from app.tagger.protocol import Tagger
from indexer import jobs
from indexer.cli import app as cli
from indexer.object_store import ObjectReader, Store, open_stores
from indexer.ray_tagging import RayOptions
from indexer.reading import ReadSpec
from indexer.tag_dataset import DatasetOptions, DatasetSummary, tag_dataset
from tests.support.cli import SAGASHI
from tests.support.index_helpers import failed
from tests.support.tag_dataset_helpers import IMAGES, collection, rows_in, settings_for

moto_server = pytest.importorskip("moto.server")
# Ray starts clusters and reads the process table: one xdist worker runs every Ray test.
pytestmark = pytest.mark.xdist_group("ray")

BUCKET = "art-bucket"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server, and the environment pyarrow's S3 filesystem reads pointing to it."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_env(endpoint).items():
            patch.setenv(name, value)
        yield endpoint
    server.stop()


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": endpoint,
    }


def upload(endpoint: str, root: Path, prefix: str) -> str:
    """Every file under ``root`` as an object under ``BUCKET/prefix``; the prefix's URI."""
    import pyarrow.fs as pafs

    s3 = pafs.S3FileSystem(
        region="us-east-1", endpoint_override=endpoint, allow_bucket_creation=True
    )
    s3.create_dir(BUCKET)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with s3.open_output_stream(f"{BUCKET}/{prefix}/{path.relative_to(root)}") as out:
            out.write(path.read_bytes())
    return f"s3://{BUCKET}/{prefix}"


def run(tagger: Tagger, source: str | Path, out: Path, ray: RayOptions | None = None) -> Any:
    settings = settings_for("sqlite://", out.parent / "data", Path(tagger.info.name))
    index = jobs.index_options(settings)
    objects = open_stores([source]) if isinstance(source, str) else None
    options = DatasetOptions(out, shard_rows=8, ray=ray, objects=objects)
    return tag_dataset(tagger, index, [source], options)


def relative(rows: list[dict[str, Any]], base: str) -> dict[str, dict[str, Any]]:
    """Rows by path below the source, without the path and the mtime."""
    out = {}
    for row in rows:
        out[row["path"].removeprefix(base + "/")] = {
            k: v for k, v in row.items() if k not in ("path", "mtime_ns")
        }
    return out


def relative_failures(summary: DatasetSummary, base: str) -> list[tuple[str, str, str]]:
    return [(p.removeprefix(base + "/"), c, m) for p, c, m in failed(summary.failures)]


def assert_same_as_local(tmp_path: Path, tagger: Tagger, endpoint: str, ray: Any) -> None:
    root = collection(tmp_path / "art")
    (root / "0" / "deep" / "deeper").mkdir(parents=True)
    (root / "0" / "deep" / "deeper" / "z.png").write_bytes((root / "0" / "001.png").read_bytes())
    (root / "notes.txt").write_text("not an image: no image extension, never read")
    uri = upload(endpoint, root, "sets/v1")

    local = run(tagger, root, tmp_path / "local", ray)
    remote = run(tagger, uri, tmp_path / "remote", ray)
    assert (remote.found, remote.tagged, remote.failed) == (IMAGES + 5, IMAGES + 3, 2)
    assert (local.found, local.tagged) == (remote.found, remote.tagged)
    assert relative_failures(remote, uri) == relative_failures(local, str(root))
    assert {code for _, code, _ in relative_failures(remote, uri)} == {"truncated", "not_an_image"}
    got, want = rows_in(tmp_path / "remote"), rows_in(tmp_path / "local")
    assert relative(got, uri) == relative(want, str(root))
    assert all(row["path"].startswith(f"{uri}/") for row in got)
    assert f"{uri}/0/deep/deeper/z.png" in {row["path"] for row in got}

    again = run(tagger, uri, tmp_path / "remote", ray)
    assert (again.already_tagged, again.tagged, again.shards_written) == (IMAGES + 3, 0, 0)
    assert rows_in(tmp_path / "remote") == got


def test_an_s3_prefix_tags_as_its_files_on_disk(
    tmp_path: Path, tiny_pixai_dir: Path, s3_endpoint: str
) -> None:
    tagger = open_tagger(tiny_pixai_dir, "cpu", 1)
    assert_same_as_local(tmp_path, tagger, s3_endpoint, None)

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"  # the rows import, URIs as their paths
    migrate.upgrade(url)
    env = {"SAGASHI_DATABASE_URL": url, "SAGASHI_DATA_DIR": str(tmp_path / "data")}
    args = ["import", str(tmp_path / "remote"), "--model-dir", str(tiny_pixai_dir)]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    engine = create_db_engine(url)
    try:
        with session_factory(engine)() as session:
            paths = session.execute(select(Image.path)).scalars().all()
    finally:
        engine.dispose()
    assert len(paths) == IMAGES + 3 and all(p.startswith(f"s3://{BUCKET}/") for p in paths)


@pytest.mark.slow
def test_an_s3_prefix_on_ray_tags_as_its_files_on_disk(
    tmp_path: Path, tiny_pixai_dir: Path, s3_endpoint: str
) -> None:
    ray = pytest.importorskip("ray")
    # the environment is set: the workers reach S3
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tagger = open_tagger(tiny_pixai_dir, "cpu", 1)
        options = RayOptions("local", tiny_pixai_dir, "cpu", threads=1, actors=1)
        assert_same_as_local(tmp_path, tagger, s3_endpoint, options)
    finally:
        ray.shutdown()


def test_an_object_over_the_byte_limit_is_refused_before_its_download() -> None:
    class NoDownload:
        def open_input_stream(self, path: str) -> None:
            raise AssertionError("downloaded")

    reader = ObjectReader((Store("s3://b/p", NoDownload(), "b/p"),))
    spec = ReadSpec(cast(Any, None), max_pixels=1000, jpeg_draft=False)  # never decodes
    read = reader.read(spec, "s3://b/p/big.png", (8001, 1))
    assert read.error is not None and read.error.code == "too_large"
    assert "8,001 bytes, over the limit of 8,000" in read.error.message


def sagashi(args: list[str], env: dict[str, str]) -> tuple[int, list[str], float]:
    started = time.monotonic()
    result = subprocess.run([SAGASHI, *args], env=env, capture_output=True, text=True, timeout=120)
    return result.returncode, result.stderr.strip().splitlines(), time.monotonic() - started


def test_bad_object_sources_exit_2_with_one_line_in_bounded_time(
    tmp_path: Path, tiny_pixai_dir: Path, s3_endpoint: str
) -> None:
    art = tmp_path / "art"
    art.mkdir()
    base = {**os.environ, "SAGASHI_DATA_DIR": str(tmp_path / "data")}
    base["SAGASHI_MODEL_DIR"] = str(tiny_pixai_dir)
    nobody = {**base, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    out = ["--out", str(tmp_path / "out")]
    cases = [
        (["tag-dataset", "foo://x/y", *out], base, "cannot use foo://x/y: "),
        (
            ["tag-dataset", "s3://x/p?endpoint_override=h", *out],
            base,
            "cannot use s3://x/p?endpoint_override=h: options in an s3:// URI are not read",
        ),
        (["tag-dataset", f"s3://{BUCKET}/p", *out], nobody, f"cannot reach s3://{BUCKET}/p: "),
        (["tag-dataset", "s3://no-such-bucket/p", *out], base, "nothing at s3://no-such-bucket/p"),
        (["tag-dataset", "s3://x/p", str(art), *out], base, "local paths and object-store URIs"),
        (["tag-dataset", "s3://x/p", "--captions", *out], base, "--captions needs local sources"),
        (
            ["index", "s3://x/p"],
            base,
            "sagashi index takes local paths only (an index serves files from disk), not "
            "s3://x/p: tag objects with 'sagashi tag-dataset s3://x/p --out DIR', then "
            "'sagashi import DIR'",
        ),
    ]
    for args, env, reason in cases:
        code, lines, seconds = sagashi(args, env)
        assert code == 2, (args, lines)
        assert len(lines) == 1 and lines[0].startswith(f"sagashi: error: {reason}"), lines
        assert seconds < 60, (args, seconds)


def test_a_file_uri_tags_as_its_path(tmp_path: Path, tiny_pixai_dir: Path) -> None:
    root = collection(tmp_path / "art")
    tagger = open_tagger(tiny_pixai_dir, "cpu", 1)
    uri = f"file://{root}"
    local = run(tagger, root, tmp_path / "local")
    remote = run(tagger, uri, tmp_path / "remote")
    assert relative_failures(remote, uri) == relative_failures(local, str(root))
    got, want = rows_in(tmp_path / "remote"), rows_in(tmp_path / "local")
    assert {row["path"] for row in got} == {f"file://{row['path']}" for row in want}
    assert relative(got, uri) == relative(want, str(root))
    assert [r["mtime_ns"] for r in got] == [r["mtime_ns"] for r in want], "the listing's mtime"
