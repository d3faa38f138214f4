"""The synthetic predictions generator (bench/synthetic.py): realism, structure, formats."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import NotRequired, TypedDict

import numpy as np
import pyarrow.parquet as pq
import pytest

from bench import synthetic
from bench.synthetic import Chunk, SyntheticCorpus, write_dataset
from tests.support.paths import shared_path

N = 2_000


@pytest.fixture(scope="module")
def corpus() -> SyntheticCorpus:
    return SyntheticCorpus(N, seed=0, block_rows=1_000)


@pytest.fixture(scope="module")
def sample(corpus: SyntheticCorpus) -> Chunk:
    return next(corpus.chunks(N))


def rows_of(chunk: Chunk) -> np.ndarray:
    return np.repeat(np.arange(len(chunk)), np.diff(chunk.indptr))


def incidence(chunk: Chunk, vocab_size: int, threshold: float = 0.0) -> np.ndarray:
    """(images, tags) 0/1 matrix of the tags scored at least ``threshold``."""
    matrix = np.zeros((len(chunk), vocab_size), dtype=np.float32)
    kept = chunk.score >= threshold
    matrix[rows_of(chunk)[kept], chunk.tag_index[kept]] = 1
    return matrix


def shared_tags(chunk: Chunk, threshold: float = 0.0) -> np.ndarray:
    """(images, images): how many tags scored at least ``threshold`` each pair shares."""
    kept = chunk.score >= threshold
    _, column = np.unique(chunk.tag_index[kept], return_inverse=True)
    matrix = np.zeros((len(chunk), column.max() + 1), dtype=np.float32)
    matrix[rows_of(chunk)[kept], column] = 1  # only the tags present: a 4x smaller product
    return matrix @ matrix.T


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share one), for a Spearman correlation without scipy."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - (counts - 1) / 2)[inverse]).astype(np.float64)


def assert_tagger_like(chunk: Chunk, corpus: SyntheticCorpus, tags_per_image: int) -> None:
    per_image = np.diff(chunk.indptr)
    assert abs(per_image.mean() - tags_per_image) <= 0.1 * tags_per_image
    assert chunk.score.min() >= 0.05 and chunk.score.max() <= 1.0
    general = corpus.vocab.general_count
    characters = np.bincount(rows_of(chunk)[chunk.tag_index >= general], minlength=len(chunk))
    assert characters.max() <= 2
    assert 0.3 < (characters > 0).mean() < 0.9
    frequency = incidence(chunk, corpus.vocab.size).mean(axis=0)[:general]
    counts = corpus.vocab.counts[:general]
    assert np.corrcoef(ranks(frequency), ranks(counts))[0, 1] > 0.3
    by_count = np.argsort(-counts)
    assert frequency[by_count[:20]].mean() > 10 * frequency[by_count[5_000:]].mean()


def test_tags_look_like_a_taggers(corpus: SyntheticCorpus, sample: Chunk) -> None:
    assert_tagger_like(sample, corpus, 60)
    top = int(np.argmax(corpus.vocab.counts))  # 1girl: about 2/3 of Danbooru posts
    assert 0.5 < incidence(sample, corpus.vocab.size)[:, top].mean() < 0.85
    per_image = len(sample)
    confident = (sample.score >= 0.8).sum() / per_image
    middle = ((sample.score >= 0.3) & (sample.score < 0.8)).sum() / per_image
    low = (sample.score < 0.2).sum() / per_image
    assert 3 < confident < 20 and middle > 8 and low > 20  # a handful, a middle, a long tail
    character_scores = sample.score[sample.tag_index >= corpus.vocab.general_count]
    assert np.median(character_scores) > 0.9
    grid = sample.score.astype(np.float64) * 10_000
    assert np.allclose(grid, np.rint(grid), atol=1e-3)


def test_rows_are_sorted_and_without_duplicates(sample: Chunk) -> None:
    for i in range(0, len(sample), 97):
        a, b = sample.indptr[i], sample.indptr[i + 1]
        assert np.all(np.diff(sample.score[a:b]) <= 0)
        assert len(set(sample.tag_index[a:b].tolist())) == b - a
    assert np.all((sample.width >= 600) & (sample.width <= 4000))
    assert np.all((sample.height >= 600) & (sample.height <= 4000))
    assert len({w / h for w, h in zip(sample.width, sample.height, strict=True)}) > 100


def test_embeddings_follow_the_tags(sample: Chunk) -> None:
    e = sample.embeddings
    assert e.dtype == np.float32 and e.shape == (N, 1024)
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    cosine = e @ e.T
    upper = np.triu_indices(N, 1)
    # Sharing a tag means both have it at the store's default general threshold, 0.30:
    # at 0.05, 1girl, solo and long_hair alone make 40% of random pairs share 5 tags.
    shared = shared_tags(sample, threshold=0.3)[upper]
    random_pairs = cosine[upper].mean()
    assert cosine[upper][shared >= 5].mean() > random_pairs + 0.03
    assert cosine[upper][shared >= 8].mean() > random_pairs + 0.15
    same_theme = (sample.theme[:, None] == sample.theme[None, :])[upper]
    assert cosine[upper][same_theme].mean() > random_pairs + 0.15
    np.fill_diagonal(cosine, -2)
    nearest = cosine.argmax(axis=1)
    every = shared_tags(sample)
    assert every[np.arange(N), nearest].mean() > 2 * every[upper].mean()


def test_same_seed_same_rows_whatever_the_chunking(corpus: SyntheticCorpus) -> None:
    whole = next(corpus.chunks(N))
    pieces = list(corpus.chunks(333, start=500, stop=1_700))
    assert [len(p) for p in pieces] == [333, 333, 333, 201]
    assert_same(Chunk.concat(pieces), whole.slice(500, 1_700))
    prefix = SyntheticCorpus(700, seed=0, block_rows=1_000)
    assert_same(next(prefix.chunks(N)), whole.slice(0, 700))
    other = next(SyntheticCorpus(100, seed=1, block_rows=1_000).chunks(100))
    assert not np.array_equal(other.embeddings, whole.embeddings[:100])


def assert_same(a: Chunk, b: Chunk) -> None:
    assert a.start == b.start and a.paths() == b.paths()
    for name in ("indptr", "tag_index", "score", "embeddings", "width", "height", "theme"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def small_corpus(n: int = 300) -> SyntheticCorpus:
    return SyntheticCorpus(n, dim=32, seed=3, themes=50, block_rows=128)


class SyntheticRecord(TypedDict):
    """A line of the JSONL and npy formats (bench/synthetic.py)."""

    path: str
    sha256: str
    width: int
    height: int
    tags: dict[str, float]
    embedding: NotRequired[list[float]]  # jsonl only; npy keeps them in the .npy file


def read_lines(path: Path) -> list[SyntheticRecord]:
    lines = path.read_text(encoding="ascii").splitlines()
    assert all(json.dumps(json.loads(line)) == line for line in lines)
    return [json.loads(line) for line in lines]


def check_line(record: SyntheticRecord, chunk: Chunk, i: int, names: list[str]) -> None:
    a, b = chunk.indptr[i], chunk.indptr[i + 1]
    expected = {
        names[t]: round(float(s), 4)
        for t, s in zip(chunk.tag_index[a:b], chunk.score[a:b], strict=True)
    }
    assert record["tags"] == expected
    assert list(record["tags"]) == [names[t] for t in chunk.tag_index[a:b]]
    assert record["path"] == chunk.paths()[i]
    assert record["sha256"] == hashlib.sha256(record["path"].encode()).hexdigest()
    assert (record["width"], record["height"]) == (chunk.width[i], chunk.height[i])


@pytest.mark.parametrize("fmt", synthetic.FORMATS)
def test_formats_round_trip_byte_for_byte(
    fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(synthetic, "PARQUET_ROW_GROUP", 100)
    corpus = small_corpus()
    files = write_dataset(corpus, tmp_path / f"a.{fmt}", fmt)
    again = write_dataset(small_corpus(), tmp_path / f"b.{fmt}", fmt)
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in again]
    chunk = next(corpus.chunks(corpus.n))
    names = corpus.vocab.names
    assert json.loads(files[-1].read_text()) == corpus.vocab.tags_file()
    if fmt == "parquet":
        check_parquet(files[0], chunk, names)
        return
    records = read_lines(files[0])
    assert len(records) == corpus.n and len({r["sha256"] for r in records}) == corpus.n
    for i, record in enumerate(records):
        check_line(record, chunk, i, names)
    if fmt == "jsonl":
        embeddings = np.array([r["embedding"] for r in records])
        assert np.abs(embeddings - chunk.embeddings).max() < 1e-5
    else:
        assert all("embedding" not in r for r in records)
        array = np.load(files[1])
        assert files[1].name == "a.npy.npy" and array.dtype == np.float16
        assert np.array_equal(array, chunk.embeddings.astype(np.float16))


def check_parquet(path: Path, chunk: Chunk, names: list[str]) -> None:
    parquet = pq.ParquetFile(path)
    assert parquet.schema_arrow == synthetic.parquet_schema(32)
    assert [parquet.metadata.row_group(i).num_rows for i in range(3)] == [100, 100, 100]
    table = parquet.read()
    assert table["path"].to_pylist() == chunk.paths()
    assert table["sha256"].to_pylist() == chunk.sha256()
    assert np.array_equal(table["width"].to_numpy(), chunk.width)
    tags = table["tag"].combine_chunks()
    assert tags.flatten().to_pylist() == [names[t] for t in chunk.tag_index]
    assert np.array_equal(tags.offsets.to_numpy(), chunk.indptr)
    scores = table["score"].combine_chunks().flatten().to_numpy()
    assert np.array_equal(scores, chunk.score)
    embeddings = table["embedding"].combine_chunks().flatten().to_numpy().reshape(-1, 32)
    assert np.array_equal(embeddings, chunk.embeddings.astype(np.float16))


def test_command_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "cli.jsonl"
    args = ["--images", "50", "--out", str(out), "--format", "npy", "--dim", "16"]
    with caplog.at_level(logging.INFO, logger="bench.synthetic"):
        synthetic.main([*args, "--tags-per-image", "20", "--themes", "10", "--seed", "4"])
    assert np.load(tmp_path / "cli.jsonl.npy").shape == (50, 16)
    records = read_lines(out)
    assert len(records) == 50 and records[49]["path"] == "synthetic/000/0000049.jpg"
    assert abs(np.mean([len(r["tags"]) for r in records]) - 20) < 4
    assert "50 / 50 images" in caplog.text


def test_zipf_vocabulary_when_the_real_one_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(synthetic, "TAGS_FILE", tmp_path / "missing.json")
    with caplog.at_level(logging.WARNING, logger="bench.synthetic"):
        corpus = SyntheticCorpus(N, dim=64, seed=0, block_rows=1_000)
    assert "Zipf" in caplog.text
    vocab = corpus.vocabulary()
    assert (vocab.source, vocab.size, vocab.general_count) == ("zipf", 13_461, 9_740)
    assert vocab.names[0] == "tag_00000" and vocab.groups[-1] == "character"
    assert_tagger_like(next(corpus.chunks(N)), corpus, 60)


def test_real_vocabulary() -> None:
    vocab = synthetic.load_vocabulary(shared_path("tags", "pixai_v0.9_tags_v0.9_13k.json"))
    assert (vocab.size, vocab.general_count) == (13_461, 9_740)
    assert vocab.names[0] == "1girl" and vocab.counts[0] == vocab.counts.max()
    assert vocab.groups.count("character") == 3_721
