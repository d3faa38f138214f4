"""What a person reads at the terminal: log lines above the progress bar (never inside it),
Pillow's warnings as one line naming the file, a first build said as such, counts in
English, and the run's summary as a table (or JSON with --json)."""

from __future__ import annotations

import json
import os
import pty
import re
from pathlib import Path

import pytest

from tests.support.bad_images import invalid_apng
from tests.support.cli import SAGASHI, run_sagashi
from tests.support.index_helpers import make_image

LOG_LINE = re.compile(r"\d\d:\d\d:\d\d (?:INFO|WARNING|ERROR) ")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``sagashi`` with a pseudo-terminal as its stdout and stderr, as a person does:
    the progress bar is live. Returns the exit status and everything written."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its stdout and stderr
        # wide: a log line naming a file under pytest-xdist's longer temporary folders
        # would wrap at 150 columns, and its end land on a line of its own
        os.execve(SAGASHI, [SAGASHI, *args], {**os.environ, "COLUMNS": "400", **env})
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def terminal_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path
) -> tuple[Path, dict[str, str], int, str]:
    root = tmp_path_factory.mktemp("terminal")
    make_image(root / "art" / "one.png", seed=1)
    invalid_apng(root / "art" / "two.png")
    # Index-time thumbnails on (the default): their thread decodes two.png again.
    env = {"SAGASHI_DATA_DIR": str(root / "data"), "SAGASHI_MODEL_DIR": str(tiny_pixai_dir)}
    status, output = run_in_terminal(["index", str(root / "art")], env)
    return root, env, status, output


def test_log_lines_print_above_the_progress_bar(
    terminal_run: tuple[Path, dict[str, str], int, str],
) -> None:
    _root, _env, status, output = terminal_run
    assert status == 0, output
    assert "\x1b[2K" in output and "indexing" in output  # the live bar was drawn
    starts = [m.start() for m in LOG_LINE.finditer(output)]
    assert len(starts) >= 5, output
    for start in starts:
        # each log line starts a line of its own: at the start, after a newline, or where
        # the bar's line was just erased; never after the bar's text on the same line
        before = output[max(0, start - 4) : start]
        assert start == 0 or before.endswith(("\n", "\x1b[2K")), repr(output[start - 80 : start])


def test_a_new_index_and_pillows_warnings_read_as_sagashis_lines(
    terminal_run: tuple[Path, dict[str, str], int, str],
) -> None:
    root, _env, _status, output = terminal_run
    lines = ANSI.sub("", output).replace("\r", "\n").splitlines()
    messages = [line[9:] for line in lines if LOG_LINE.match(line)]  # without the time
    warning = (
        f"WARNING sagashi: {root / 'art' / 'two.png'}: invalid APNG animation data; the still "
        "PNG image in the file was used"
    )
    # said once, by the run's decode; the thumbnail thread's decode of it says it at DEBUG
    assert [message for message in messages if "APNG" in message] == [warning], messages
    assert "INFO indexer.thumbnails: made 2 gallery thumbnails in the background" in (
        " ".join(messages)
    )
    assert "INFO app.store.vectors: FAISS index for generation 1: building it" in messages
    assert "INFO app.store.vectors: built flat FAISS index of 2 vectors for generation 1" in (
        messages
    )
    text = "\n".join(lines)
    assert "site-packages" not in text and "UserWarning" not in text
    assert "missing" not in text and "stale" not in text and "rebuilding" not in text


def test_the_summary_is_a_table_or_json(
    terminal_run: tuple[Path, dict[str, str], int, str],
) -> None:
    root, env, _status, output = terminal_run
    text = ANSI.sub("", output).replace("\r\n", "\n")
    table = re.search(r"^indexed in \d+\.\ds \(job 1\)\n((?:  .*\n?)+)", text, re.MULTILINE)
    assert table is not None, text
    assert table.group(1).rstrip("\n").splitlines() == [
        "  new        2",
        "  modified   0",
        "  unchanged  0",
        "  moved      0",
        "  deleted    0",
        "  failed     0",
    ]
    (root / "art" / "three.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    make_image(root / "art" / "four.png", seed=4)
    again = run_sagashi("index", str(root / "art"), "--json", env=env)
    assert again.returncode == 1
    summary = json.loads(again.stdout)
    assert summary.pop("seconds") >= 0
    assert summary == {
        "job": 2,
        "new": 1,
        "modified": 0,
        "unchanged": 2,
        "moved": 0,
        "deleted": 0,
        "failed": 1,
        "failed_by_reason": {"not_an_image": 1},
    }
    third = run_sagashi("index", str(root / "art"), env=env)  # the table goes to stderr
    assert third.returncode == 1 and third.stdout == ""
    assert "\n  unchanged  3\n  moved      0\n  deleted    0\n  failed     1  (not_an_image 1)" in (
        third.stderr
    )


def test_counts_read_as_english(
    terminal_run: tuple[Path, dict[str, str], int, str], tmp_path: Path
) -> None:
    _root, env, _status, _output = terminal_run
    found = run_sagashi("search", "id:1", env=env)
    assert found.returncode == 0, found.stderr
    assert "INFO sagashi: 1 match; 1 shown" in found.stderr
    make_image(tmp_path / "single.png", seed=3)
    tagged = run_sagashi("tag", str(tmp_path / "single.png"), env=env)
    assert tagged.returncode == 0, tagged.stderr
    assert re.search(r"INFO sagashi: tagged 1 of 1 file in ", tagged.stderr), tagged.stderr
    (tmp_path / "broken.avif").write_bytes(b"\x00\x00\x00\x1cftypavif" + b"\x00" * 64)
    avif = run_sagashi("tag", str(tmp_path / "broken.avif"), env=env)
    error = json.loads(avif.stdout)["error"]
    assert error["message"].startswith(
        "not a recognised image format: the file starts with an AVIF signature but"
    )
