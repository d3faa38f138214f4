"""The tag rules through the real command line: ``sagashi tag`` and ``sagashi export`` with
a user's rules file, and one-line errors with the line number for bad rules files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.cli import run_sagashi


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_sagashi(*args, env={"SAGASHI_LOG_LEVEL": "WARNING", **(env or {})})


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "a.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(path)
    return path


def test_a_users_rules_file_drops_the_lower_side(
    image: Path, tiny_pixai_dir: Path, tmp_path: Path
) -> None:
    common = ["tag", str(image), "--model-dir", str(tiny_pixai_dir), "--threshold-general", "0"]
    plain = run(*common, "--no-contradictions")
    assert plain.returncode == 0, plain.stderr
    general = [t for t in json.loads(plain.stdout)["results"] if t["group"] == "general"]
    best, second, third = (t["tag"] for t in general[:3])  # by score
    rules = tmp_path / "rules.txt"
    rules.write_text(f"# mine\n{second} | {best} {third}\n")
    listed = run(*common, "--exclusions", str(rules))
    kept = [t["tag"] for t in json.loads(listed.stdout)["results"]]
    assert best in kept and third in kept and second not in kept
    assert len(kept) == len(json.loads(plain.stdout)["results"]) - 1
    caption = run(
        *common, "--format", "caption", "--underscores", env={"SAGASHI_EXCLUSION_FILE": str(rules)}
    )
    words = caption.stdout.strip().split(", ")
    assert best in words and second not in words


@pytest.mark.parametrize(
    ("text", "line"),
    [("1girl | solo\nlong_hair\n", 2), ("\n\nsolo | |\n", 3)],
)
def test_bad_rules_files_stop_tag_and_export_with_the_line(
    image: Path, tiny_pixai_dir: Path, tmp_path: Path, text: str, line: int
) -> None:
    rules = tmp_path / "bad.txt"
    rules.write_text(text)
    commands = [
        ["tag", str(image), "--model-dir", str(tiny_pixai_dir), "--exclusions", str(rules)],
        ["export", "--captions", str(tmp_path / "out"), "--exclusions", str(rules)],
    ]
    for args in commands:
        result = run(*args, env={"SAGASHI_DATA_DIR": str(tmp_path / "data")})
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sagashi: error: "), result.stderr
        assert f"bad.txt, line {line}: " in lines[0]


def test_a_bad_implication_file_stops_the_command_with_the_line(
    image: Path, tiny_pixai_dir: Path, tmp_path: Path
) -> None:
    extra = tmp_path / "implications.csv"
    extra.write_text("antecedent_name,consequent_name\nplaid_skirt,skirt\na b,c\n")
    result = run(
        "tag", str(image), "--model-dir", str(tiny_pixai_dir),
        env={"SAGASHI_IMPLICATION_FILE": str(extra)},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"sagashi: error: {extra}, line 3: 'a b' is not a tag name"
    ]
