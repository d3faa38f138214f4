"""Synthetic tagger predictions (tag scores and embeddings) for import and search benchmarks.

    python -m bench.synthetic --images 1000000 --out /tmp/synth.jsonl --format npy
    python -m bench.synthetic --images 2000 --out /tmp/small.parquet --format parquet --seed 1

**The model.** Tags come from the real PixAI v0.9 vocabulary and its Danbooru post counts
(``../shared/data/tags/pixai_v0.9_tags_v0.9_13k.json``; without it, a generated Zipf
vocabulary of the same size and general/character split, with a warning). Every image belongs
to one of ``themes`` latent clusters (Zipf-popular, so some are large); a theme prefers 16
general tags, and 30% of themes are "same character" clusters. An image's tags are:

- *confident* ones (about 45% of ``tags_per_image``): the 256 most-posted general tags each
  drawn with probability ~ post count / Danbooru's 9M posts (so ``1girl`` is in about two
  thirds of images), its theme's tags, and rarer tags drawn in proportion to post count; scores
  are sigmoid(N(0.9, 1.6)): a handful above 0.8, a broad middle;
- 0-2 character tags, mostly scored above 0.9 (the theme's character for character themes);
- *near misses* filling up to ~``tags_per_image``: the theme's other tags and popular tags,
  scored just above the 0.05 floor, as a real tagger's long tail is.

The embedding of an image is normalise(P·z + β·noise), z = normalise(normalise(Σ score·w_t·v_t)
+ 0.5·v_theme + 0.6·c): v_t, v_theme, c fixed random unit vectors in a 128-d latent space (c
shared by all images, as real embeddings share a mean direction), w_t = sqrt(log(1 +
9M/count)) (rare tags and characters say more about an image than ``1girl``), P a fixed
random isometry to ``dim`` dimensions, noise isotropic in all ``dim`` and β ~ U(0.35, 0.75)
per image. At 2,000 images: random pairs' cosine ~0.18, same theme ~0.41, pairs sharing 8+
tags scored >= 0.3 ~0.40; an image's nearest neighbour shares ~10.7 tags, a random one ~4.2.
Images that share tags or a theme are near each other, as with a real tagger's embeddings;
pure random vectors would make ANN look far worse than it is. Scores are on the 1e-4 grid
(``round(score, 4)`` in every format).

Everything is deterministic for a seed: row blocks of ``block_rows`` (10,000) each draw from
their own ``(seed, block)`` random stream, so the first k rows are the same for every n (with
the same block_rows), and
blocks can be built in any order or in parallel (``SyntheticCorpus.block``).

**Python API.** ``SyntheticCorpus(n, dim, seed, tags_per_image).chunks(size)`` yields
``Chunk``s: CSR tags (``indptr``, ``tag_index`` int32, ``score`` float32, each row's tags by
descending score), ``embeddings`` float32 (rows, dim) L2-normalised, ``width``/``height``
int32, ``theme`` int32 (the latent cluster: ground truth for benchmarks), ``start`` (the first
row's number), and ``paths()`` / ``sha256()``. ``vocabulary()`` gives names, groups
(``general``/``character``) and post counts.

**Formats** (``--format``; ``PATH.vocab.json`` is written beside each, in PixAI's tags-file
format ``{"tag_map": {name: index}, "tag_split": {"gen_tag_count": G,
"character_tag_count": C}}``, indices below G general, the rest character):

- ``jsonl``: one object per line, ``{"path": "synthetic/000/0000123.jpg", "sha256": "<64
  hex>", "width": int, "height": int, "tags": {name: score, ...}, "embedding": [floats]}``;
  sha256 is that of the path string, embedding values rounded to 5 decimals. Lines are
  exactly ``json.dumps`` of the object.
- ``npy``: the same lines without ``"embedding"``, and ``PATH.npy`` beside them: a
  row-aligned (N, dim) float16 array.
- ``parquet``: row groups of 50,000 rows with this schema::

      path       string
      sha256     string
      width      int32
      height     int32
      tag        list<string>                  names, by descending score
      score      list<float32>                 aligned with tag
      embedding  fixed_size_list<float16, dim> L2-normalised

Sizes and times at the defaults, per 1M images (2 busy cores): ``npy`` 1.5 GB of JSONL and
2.0 GB of npy in 113 s; ``parquet`` ~2.2 GB in ~2.5 min and ``jsonl`` ~11 GB in ~3 min
(measured at 100k images). Peak
memory stays under 1 GB (most of it is torch's and pyarrow's import).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from numpy.lib.format import open_memmap

log = logging.getLogger("bench.synthetic")

TAGS_FILE = (
    Path(__file__).resolve().parents[1].parent / "shared/data/tags/pixai_v0.9_tags_v0.9_13k.json"
)

# Danbooru's post count, so that a tag's post count / N_POSTS is the share of images with it.
N_POSTS = 9_000_000
FALLBACK_GENERAL = 9_740
FALLBACK_CHARACTER = 3_721

BLOCK_ROWS = 10_000
PARQUET_ROW_GROUP = 50_000
LATENT_DIM = 128
HEAD_TAGS = 256  # drawn one by one; rarer tags are drawn with replacement (duplicates are rare)
THEME_TAGS = 16
CHARACTER_THEMES = 0.3
THEME_WEIGHT = 0.5
COMMON_WEIGHT = 0.6
CONFIDENT_SHARE = 0.45
SCORE_FLOOR = 0.05
LOGIT_FLOOR = float(np.log(SCORE_FLOOR / (1 - SCORE_FLOOR)))
ASPECTS = np.array([1.0, 0.707, 0.75, 0.5625, 0.5, 1.333, 1.5, 1.778])
ASPECT_P = np.array([0.15, 0.25, 0.15, 0.1, 0.05, 0.1, 0.05, 0.15])


@dataclass(frozen=True)
class Vocabulary:
    """Tag names in index order, post counts, and the general/character split."""

    names: list[str]
    counts: np.ndarray
    general_count: int
    source: str

    @property
    def size(self) -> int:
        return len(self.names)

    @property
    def groups(self) -> list[str]:
        character = self.size - self.general_count
        return ["general"] * self.general_count + ["character"] * character

    def tags_file(self) -> dict[str, Any]:
        """PixAI's tags-file format, as an importer reads it."""
        return {
            "tag_map": {name: i for i, name in enumerate(self.names)},
            "tag_split": {
                "gen_tag_count": self.general_count,
                "character_tag_count": self.size - self.general_count,
            },
        }


def load_vocabulary(path: Path | None = None) -> Vocabulary:
    path = TAGS_FILE if path is None else path
    if not path.is_file():
        log.warning("%s not found: using a generated Zipf vocabulary", path)
        return zipf_vocabulary()
    data = json.loads(path.read_text(encoding="utf-8"))
    names = [""] * len(data["tag_map"])
    for name, index in data["tag_map"].items():
        names[index] = name
    frequency = data["tag_frequency_name"]
    counts = np.array([frequency.get(name, 1) for name in names], dtype=np.int64)
    general = int(data["tag_split"]["gen_tag_count"])
    return Vocabulary(names, counts, general, str(path))


def zipf_vocabulary() -> Vocabulary:
    """PixAI's sizes, with post counts shaped like the real ones (6M down to 601)."""
    general = 6_000_000 / np.arange(1, FALLBACK_GENERAL + 1)
    character = 107_000 / np.arange(1, FALLBACK_CHARACTER + 1) ** 0.65
    counts = np.maximum(np.concatenate([general, character]), 601).astype(np.int64)
    names = [f"tag_{i:05d}" for i in range(counts.size)]
    return Vocabulary(names, counts, FALLBACK_GENERAL, "zipf")


def image_path(row: int) -> str:
    return f"synthetic/{row // 1000:03d}/{row:07d}.jpg"


@dataclass(frozen=True)
class Chunk:
    """Rows ``start`` .. ``start + len - 1``; tags as CSR: row i is indptr[i]:indptr[i+1]."""

    start: int
    indptr: np.ndarray
    tag_index: np.ndarray
    score: np.ndarray
    embeddings: np.ndarray
    width: np.ndarray
    height: np.ndarray
    theme: np.ndarray

    def __len__(self) -> int:
        return len(self.width)

    def paths(self) -> list[str]:
        return [image_path(row) for row in range(self.start, self.start + len(self))]

    def sha256(self) -> list[str]:
        return [hashlib.sha256(path.encode()).hexdigest() for path in self.paths()]

    def slice(self, lo: int, hi: int) -> Chunk:
        a, b = self.indptr[lo], self.indptr[hi]
        return Chunk(
            self.start + lo,
            self.indptr[lo : hi + 1] - a,
            self.tag_index[a:b],
            self.score[a:b],
            self.embeddings[lo:hi],
            self.width[lo:hi],
            self.height[lo:hi],
            self.theme[lo:hi],
        )

    @staticmethod
    def concat(chunks: Sequence[Chunk]) -> Chunk:
        if len(chunks) == 1:
            return chunks[0]
        offsets = np.cumsum([0] + [c.indptr[-1] for c in chunks[:-1]])
        indptr = [chunks[0].indptr[:1]] + [
            c.indptr[1:] + o for c, o in zip(chunks, offsets, strict=True)
        ]
        return Chunk(
            chunks[0].start,
            np.concatenate(indptr),
            *(
                np.concatenate([getattr(c, name) for c in chunks])
                for name in ("tag_index", "score", "embeddings", "width", "height", "theme")
            ),
        )


class Entries(NamedTuple):
    """(row, tag, score) triples of a block, in the making."""

    row: np.ndarray
    tag: np.ndarray
    score: np.ndarray

    @staticmethod
    def cat(parts: Sequence[Entries]) -> Entries:
        return Entries(*(np.concatenate(column) for column in zip(*parts, strict=True)))

    def take(self, keep: np.ndarray) -> Entries:
        return Entries(self.row[keep], self.tag[keep], self.score[keep])


def first_unique(row: np.ndarray, tag: np.ndarray, n_tags: int) -> np.ndarray:
    """Mask keeping the first occurrence of each (row, tag): earlier parts take priority."""
    _, first = np.unique(row.astype(np.int64) * n_tags + tag, return_index=True)
    keep = np.zeros(row.size, dtype=bool)
    keep[first] = True
    return keep


def rank_in_row(row: np.ndarray) -> np.ndarray:
    """0, 1, 2 ... over each row's entries, in array order."""
    order = np.argsort(row, kind="stable")
    ordered = row[order]
    rank = np.empty(row.size, dtype=np.int64)
    rank[order] = np.arange(row.size) - np.searchsorted(ordered, ordered, side="left")
    return rank


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-x)))


def quantise(score: np.ndarray) -> np.ndarray:
    """The 1e-4 grid, floor included, so that every format stores the same value."""
    grid = np.clip(np.rint(score * 10_000), SCORE_FLOOR * 10_000, 10_000)
    return np.asarray(grid / 10_000, dtype=np.float32)


def confident_scores(rng: np.random.Generator, count: int) -> np.ndarray:
    return quantise(sigmoid(rng.normal(0.9, 1.6, count)))


def near_miss_scores(rng: np.random.Generator, count: int) -> np.ndarray:
    # Half-normal above the floor's logit: most just above 0.05, few beyond 0.25.
    return quantise(sigmoid(LOGIT_FLOOR + np.abs(rng.normal(0.0, 0.9, count))))


def character_scores(rng: np.random.Generator, count: int) -> np.ndarray:
    high = quantise(sigmoid(rng.normal(4.0, 1.8, count)))
    return np.where(rng.random(count) < 0.85, high, near_miss_scores(rng, count))


def cdf(weights: np.ndarray) -> np.ndarray:
    c = np.cumsum(weights, dtype=np.float64)
    return np.asarray(c / c[-1])


def draw(rng: np.random.Generator, table: np.ndarray, cumulative: np.ndarray, n: int) -> np.ndarray:
    """n draws from ``table`` with the probabilities of ``cumulative``."""
    picks = np.searchsorted(cumulative, rng.random(n), side="right")
    return np.asarray(table[np.minimum(picks, table.size - 1)])


def unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.asarray(x / np.maximum(norm, 1e-12))


def isometry(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A random (rows, cols) float32 matrix with orthonormal rows (where rows <= cols), so
    that it keeps cosines. Gram-Schmidt, twice per column for accuracy: LAPACK's QR or eigh
    take up to seconds when other processes keep the cores busy, this ~30 ms."""
    gaussian = rng.standard_normal((max(rows, cols), rows))
    basis = np.empty_like(gaussian)
    for j in range(rows):
        v = gaussian[:, j]
        for _ in range(2):
            v = v - basis[:, :j] @ (basis[:, :j].T @ v)
        basis[:, j] = v / np.linalg.norm(v)
    return np.ascontiguousarray(basis[:cols].T, dtype=np.float32)


class Themes(NamedTuple):
    cdf: np.ndarray  # popularity
    tags: np.ndarray  # (themes, THEME_TAGS) int32, -1 where a theme has fewer
    inclusion: np.ndarray  # (themes, THEME_TAGS) float32
    character: np.ndarray  # (themes,) int32 tag index, -1 for no character
    latent: np.ndarray  # (themes, LATENT_DIM)


class SyntheticCorpus:
    """n images' synthetic predictions; see the module docstring for the model."""

    def __init__(
        self,
        n: int,
        dim: int = 1024,
        seed: int = 0,
        tags_per_image: int = 60,
        *,
        themes: int = 2_000,
        block_rows: int = BLOCK_ROWS,
        tags_file: Path | None = None,
    ) -> None:
        if n < 0 or dim < 1 or tags_per_image < 1 or themes < 1 or block_rows < 1:
            raise ValueError("n >= 0 and dim, tags_per_image, themes, block_rows >= 1")
        self.n, self.dim, self.seed = n, dim, seed
        self.tags_per_image, self.block_rows = tags_per_image, block_rows
        self.vocab = load_vocabulary(tags_file)
        rng = self._rng(0)
        self._tag_tables()
        self.themes = self._make_themes(rng, themes)
        self._budget()
        self._latent_tables(rng)

    def vocabulary(self) -> Vocabulary:
        return self.vocab

    @property
    def n_blocks(self) -> int:
        return -(-self.n // self.block_rows)

    def _rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(stream,)))

    def _tag_tables(self) -> None:
        counts = self.vocab.counts.astype(np.float64)
        g = self.vocab.general_count
        by_count = np.argsort(-counts[:g], kind="stable").astype(np.int32)
        self.head = by_count[:HEAD_TAGS]
        self.head_p = np.minimum(counts[self.head] / N_POSTS, 0.95)
        self.tail = by_count[HEAD_TAGS:]
        self.tail_cdf = cdf(counts[self.tail])
        self.general = np.arange(g, dtype=np.int32)
        self.near_cdf = cdf(counts[:g] ** 0.6)  # near misses are less skewed than true tags
        self.characters = np.arange(g, self.vocab.size, dtype=np.int32)
        self.character_cdf = cdf(counts[g:])

    def _make_themes(self, rng: np.random.Generator, count: int) -> Themes:
        popularity = cdf(np.arange(1, count + 1) ** -0.8)
        counts = self.vocab.counts[: self.vocab.general_count].astype(np.float64)
        # A theme's tags favour the middle of the vocabulary: sqrt(count) weights.
        draws = 3 * THEME_TAGS
        row = np.repeat(np.arange(count), draws)
        tag = draw(rng, self.general, cdf(np.sqrt(counts)), row.size)
        keep = first_unique(row, tag, self.vocab.size)
        row, tag = row[keep], tag[keep]
        rank = rank_in_row(row)
        tags = np.full((count, THEME_TAGS), -1, dtype=np.int32)
        tags[row[rank < THEME_TAGS], rank[rank < THEME_TAGS]] = tag[rank < THEME_TAGS]
        inclusion = rng.uniform(0.25, 0.85, (count, THEME_TAGS)).astype(np.float32)
        weights = self.vocab.counts[self.vocab.general_count :].astype(np.float64) ** 0.8
        chosen = draw(rng, self.characters, cdf(weights), count)
        character = np.where(rng.random(count) < CHARACTER_THEMES, chosen, -1).astype(np.int32)
        latent = unit(rng.standard_normal((count, LATENT_DIM)).astype(np.float32))
        return Themes(popularity, tags, inclusion, character, latent)

    def _budget(self) -> None:
        """Scale the confident draws so they make ~45% of tags_per_image; near misses
        fill the rest. At 60 tags the most-posted tags keep their real frequencies."""
        share = np.diff(self.themes.cdf, prepend=0.0)
        with_character = float(share @ (self.themes.character >= 0))
        # Expected character tags per image, from the draws in _characters.
        characters = with_character * (0.9 + 0.12) + (1 - with_character) * (0.42 + 2 * 0.13)
        budget = max(CONFIDENT_SHARE * self.tags_per_image - characters, 1.0)
        head = float(self.head_p.sum())
        theme = float(share @ (self.themes.inclusion * (self.themes.tags >= 0)).sum(axis=1))
        self.head_p = self.head_p * min(1.0, 0.55 * budget / head)
        self.theme_scale = min(1.0, 0.3 * budget / theme)
        used = self.head_p.sum() + self.theme_scale * theme
        self.tail_mean = max(budget - used, 0.0)

    def _latent_tables(self, rng: np.random.Generator) -> None:
        counts = self.vocab.counts.astype(np.float64)
        weight = np.sqrt(np.log1p(N_POSTS / counts)).astype(np.float32)
        vectors = unit(rng.standard_normal((self.vocab.size, LATENT_DIM)).astype(np.float32))
        self.tag_latent_t = torch.from_numpy(vectors * weight[:, None])
        # A direction every image shares, as real embeddings do (random pairs' cosine ~0.18
        # instead of ~0): it hardly changes rankings but it shapes IVF cells and PQ residuals.
        self.common = COMMON_WEIGHT * unit(rng.standard_normal(LATENT_DIM).astype(np.float32))
        self.projection = isometry(rng, LATENT_DIM, self.dim)

    # -- one block ---------------------------------------------------------------------

    def block(self, index: int) -> Chunk:
        """Block ``index``, whole (rows beyond n included): the same for every n."""
        rng = self._rng(index + 1)
        m = self.block_rows
        theme = draw(rng, np.arange(len(self.themes.cdf), dtype=np.int32), self.themes.cdf, m)
        sure = Entries.cat([self._characters(rng, theme), self._confident(rng, theme)])
        sure = sure.take(first_unique(sure.row, sure.tag, self.vocab.size))
        entries = self._with_near_misses(rng, theme, sure)
        order = np.lexsort((-entries.score, entries.row))
        entries = entries.take(order)
        indptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.bincount(entries.row, minlength=m), out=indptr[1:])
        embeddings = self._embed(rng, indptr, entries, theme)
        width, height = self._sizes(rng, m)
        tags = entries.tag.astype(np.int32)
        start = index * m
        return Chunk(start, indptr, tags, entries.score, embeddings, width, height, theme)

    def _characters(self, rng: np.random.Generator, theme: np.ndarray) -> Entries:
        m = theme.size
        own = self.themes.character[theme]
        has_own = (own >= 0) & (rng.random(m) < 0.9)
        others = rng.choice(3, size=m, p=[0.45, 0.42, 0.13])
        extra = np.where(own >= 0, rng.random(m) < 0.12, others)  # never more than 2 in all
        rows = np.concatenate([np.flatnonzero(has_own), np.repeat(np.arange(m), extra)])
        picked = draw(rng, self.characters, self.character_cdf, int(extra.sum()))
        tags = np.concatenate([own[has_own], picked])
        return Entries(rows, tags, character_scores(rng, rows.size))

    def _confident(self, rng: np.random.Generator, theme: np.ndarray) -> Entries:
        m = theme.size
        head_rows, head_cols = np.nonzero(rng.random((m, self.head.size)) < self.head_p)
        theme_tags = self.themes.tags[theme]
        chance = self.themes.inclusion[theme] * self.theme_scale
        theme_rows, theme_cols = np.nonzero((rng.random(chance.shape) < chance) & (theme_tags >= 0))
        tail_counts = rng.poisson(self.tail_mean, m)
        tail_rows = np.repeat(np.arange(m), tail_counts)
        rows = np.concatenate([head_rows, theme_rows, tail_rows])
        tags = np.concatenate(
            [
                self.head[head_cols],
                theme_tags[theme_rows, theme_cols],
                draw(rng, self.tail, self.tail_cdf, tail_rows.size),
            ]
        )
        return Entries(rows, tags, confident_scores(rng, rows.size))

    def _with_near_misses(
        self, rng: np.random.Generator, theme: np.ndarray, sure: Entries
    ) -> Entries:
        """Near misses up to each row's target count (tags_per_image, varying per image)."""
        m = theme.size
        # Busy images get more tags than plain ones; the lognormal's mean is 1.
        target = np.rint(self.tags_per_image * rng.lognormal(-0.03, 0.25, m))
        wanted = np.maximum(np.maximum(target, 1) - np.bincount(sure.row, minlength=m), 0)
        draws = (np.ceil(1.5 * wanted) + 6).astype(np.int64)  # duplicates are dropped
        rows = np.repeat(np.arange(m), draws)
        from_theme = rng.random(rows.size) < 0.3  # the theme's other tags: related misses
        slot = rng.integers(0, THEME_TAGS, rows.size)
        tags = np.where(
            from_theme,
            self.themes.tags[theme[rows], slot],
            draw(rng, self.general, self.near_cdf, rows.size),
        )
        near = Entries(rows, tags, near_miss_scores(rng, rows.size)).take(tags >= 0)
        both = Entries.cat([sure, near])
        keep = first_unique(both.row, both.tag, self.vocab.size)  # keeps all of ``sure``
        near = both.take(keep).take(np.arange(keep.sum()) >= sure.row.size)
        near = near.take(rank_in_row(near.row) < wanted[near.row])
        return Entries.cat([sure, near])

    def _embed(
        self, rng: np.random.Generator, indptr: np.ndarray, entries: Entries, theme: np.ndarray
    ) -> np.ndarray:
        m = theme.size
        # Σ score·w_t·v_t per row: embedding_bag is a sparse-dense product, ~15x numpy's.
        summed = torch.nn.functional.embedding_bag(
            torch.from_numpy(entries.tag.astype(np.int64)),
            self.tag_latent_t,
            torch.from_numpy(indptr[:-1]),
            mode="sum",
            per_sample_weights=torch.from_numpy(entries.score),
        ).numpy()
        latent = unit(summed) + THEME_WEIGHT * self.themes.latent[theme] + self.common
        noise = rng.standard_normal((m, self.dim), dtype=np.float32)
        beta = rng.uniform(0.35, 0.75, (m, 1)).astype(np.float32) / np.sqrt(self.dim)
        embeddings = unit(latent) @ self.projection
        embeddings += beta * noise
        return unit(embeddings)

    def _sizes(self, rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
        aspect = rng.choice(ASPECTS, size=m, p=ASPECT_P)
        long_side = np.clip(rng.lognormal(np.log(1800), 0.35, m), 600, 4000)
        width = np.where(aspect >= 1, long_side, long_side * aspect)
        height = np.where(aspect >= 1, long_side / aspect, long_side)
        clip = np.clip(np.rint(np.stack([width, height])), 600, 4000).astype(np.int32)
        return clip[0], clip[1]

    # -- iteration ---------------------------------------------------------------------

    def chunks(
        self, size: int = BLOCK_ROWS, start: int = 0, stop: int | None = None
    ) -> Iterator[Chunk]:
        """Rows start..stop-1 (default: all n) in chunks of ``size`` rows (the last may be
        shorter). The rows are the same whatever the chunk size."""
        stop = self.n if stop is None else min(stop, self.n)
        pending: list[Chunk] = []
        held = 0
        for index in range(start // self.block_rows, -(-stop // self.block_rows)):
            base = index * self.block_rows
            lo, hi = max(start, base) - base, min(stop, base + self.block_rows) - base
            pending.append(self.block(index).slice(lo, hi))
            held += hi - lo
            while held >= size:
                joined = Chunk.concat(pending)
                yield joined.slice(0, size)
                pending, held = [joined.slice(size, held)], held - size
        if held:
            yield Chunk.concat(pending)


# -- writers -----------------------------------------------------------------------------


@functools.cache
def number_texts(scale: int, low: int) -> np.ndarray:
    """json.dumps of k / scale for k in low..scale: formatting by table look-up is ~10x
    faster than formatting each number."""
    return np.array([repr(k / scale) for k in range(low, scale + 1)], dtype=object)


class JsonlWriter:
    """One ``json.dumps``-identical line per image, built from string tables (fast)."""

    def __init__(self, path: Path, vocab: Vocabulary, with_embedding: bool) -> None:
        self.file = path.open("wb")
        self.keys = np.array([json.dumps(name) + ": " for name in vocab.names], dtype=object)
        self.scores = number_texts(10_000, 0)
        self.values = number_texts(100_000, -100_000) if with_embedding else None

    def write(self, chunk: Chunk) -> None:
        quantised = np.rint(chunk.score * 10_000).astype(np.int64)
        entries = (self.keys[chunk.tag_index] + self.scores[quantised]).tolist()
        embeddings = self._embedding_text(chunk)
        indptr = chunk.indptr.tolist()
        lines = []
        facts = zip(
            chunk.paths(), chunk.sha256(), chunk.width.tolist(), chunk.height.tolist(), strict=True
        )
        for i, (path, digest, width, height) in enumerate(facts):
            tags = ", ".join(entries[indptr[i] : indptr[i + 1]])
            tail = f', "embedding": [{embeddings[i]}]' if embeddings else ""
            lines.append(
                f'{{"path": "{path}", "sha256": "{digest}", "width": {width}, '
                f'"height": {height}, "tags": {{{tags}}}{tail}}}\n'
            )
        self.file.write("".join(lines).encode("ascii"))

    def _embedding_text(self, chunk: Chunk) -> list[str]:
        if self.values is None:
            return []
        dim = chunk.embeddings.shape[1]
        grid = np.rint(chunk.embeddings * 100_000).astype(np.int64) + 100_000
        values = self.values[np.clip(grid, 0, 200_000)].ravel().tolist()
        return [", ".join(values[i : i + dim]) for i in range(0, len(values), dim)]

    def close(self) -> None:
        self.file.close()


class NpyWriter:
    """JSONL without embeddings, and a row-aligned float16 ``PATH.npy`` beside it."""

    def __init__(self, path: Path, vocab: Vocabulary, n: int, dim: int) -> None:
        self.lines = JsonlWriter(path, vocab, with_embedding=False)
        self.path = npy_path(path)
        # Creates the file at its full size, header included; rows are written per chunk.
        open_memmap(self.path, mode="w+", dtype=np.float16, shape=(n, dim)).flush()
        self.row = 0

    def write(self, chunk: Chunk) -> None:
        self.lines.write(chunk)
        # Mapped anew per chunk: one mapping held throughout counts every page written
        # in the process's resident memory (2 GB at 1M images), this one chunk's.
        array = open_memmap(self.path, mode="r+")
        array[self.row : self.row + len(chunk)] = chunk.embeddings
        array.flush()
        del array
        self.row += len(chunk)

    def close(self) -> None:
        self.lines.close()


def parquet_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("path", pa.string()),
            ("sha256", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("tag", pa.list_(pa.string())),
            ("score", pa.list_(pa.float32())),
            ("embedding", pa.list_(pa.float16(), dim)),
        ]
    )


class ParquetWriter:
    """Row groups of PARQUET_ROW_GROUP rows: chunks are held until one is full."""

    def __init__(self, path: Path, vocab: Vocabulary, dim: int) -> None:
        self.schema = parquet_schema(dim)
        self.writer = pq.ParquetWriter(path, self.schema)
        self.names = pa.array(vocab.names, type=pa.string())
        self.pending: list[pa.Table] = []
        self.held = 0

    def write(self, chunk: Chunk) -> None:
        offsets = pa.array(chunk.indptr.astype(np.int32))
        embeddings = chunk.embeddings.astype(np.float16).ravel()
        columns = [
            pa.array(chunk.paths(), type=pa.string()),
            pa.array(chunk.sha256(), type=pa.string()),
            pa.array(chunk.width),
            pa.array(chunk.height),
            pa.ListArray.from_arrays(offsets, self.names.take(pa.array(chunk.tag_index))),
            pa.ListArray.from_arrays(offsets, pa.array(chunk.score)),
            pa.FixedSizeListArray.from_arrays(pa.array(embeddings), chunk.embeddings.shape[1]),
        ]
        self.pending.append(pa.Table.from_arrays(columns, schema=self.schema))
        self.held += len(chunk)
        if self.held >= PARQUET_ROW_GROUP:
            self._flush()

    def _flush(self, last: bool = False) -> None:
        """Write the full row groups held (all that is held when ``last``), keep the rest."""
        table = pa.concat_tables(self.pending) if self.pending else None
        size = self.held if last else self.held - self.held % PARQUET_ROW_GROUP
        if table is not None and size:
            self.writer.write_table(table.slice(0, size), row_group_size=PARQUET_ROW_GROUP)
            self.pending, self.held = [table.slice(size)], self.held - size

    def close(self) -> None:
        self._flush(last=True)
        self.writer.close()


def npy_path(path: Path) -> Path:
    return path.with_name(path.name + ".npy")


def vocab_path(path: Path) -> Path:
    return path.with_name(path.name + ".vocab.json")


FORMATS = ("jsonl", "npy", "parquet")


def write_dataset(corpus: SyntheticCorpus, out: Path, fmt: str) -> list[Path]:
    """Write the corpus in ``fmt`` (one of FORMATS); returns the files written."""
    vocab = corpus.vocabulary()
    writer: JsonlWriter | NpyWriter | ParquetWriter
    if fmt == "jsonl":
        writer = JsonlWriter(out, vocab, with_embedding=True)
    elif fmt == "npy":
        writer = NpyWriter(out, vocab, corpus.n, corpus.dim)
    elif fmt == "parquet":
        writer = ParquetWriter(out, vocab, corpus.dim)
    else:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    started = time.perf_counter()
    done = 0
    try:
        for chunk in corpus.chunks(corpus.block_rows):
            writer.write(chunk)
            done += len(chunk)
            if done % 100_000 < len(chunk) or done == corpus.n:
                rate = done / max(time.perf_counter() - started, 1e-9)
                log.info("%d / %d images (%.0f images/s)", done, corpus.n, rate)
    finally:
        writer.close()
    vocab_path(out).write_text(json.dumps(vocab.tags_file()), encoding="utf-8")
    files = [out, npy_path(out)] if fmt == "npy" else [out]
    return [*files, vocab_path(out)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, required=True, help="how many images (N)")
    parser.add_argument("--out", type=Path, required=True, help="output file")
    parser.add_argument("--format", choices=FORMATS, default="jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--tags-per-image", type=int, default=60)
    parser.add_argument("--themes", type=int, default=2_000, help="latent clusters")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()
    corpus = SyntheticCorpus(
        args.images, args.dim, args.seed, args.tags_per_image, themes=args.themes
    )
    log.info("vocabulary: %s (%d tags)", corpus.vocab.source, corpus.vocab.size)
    files = write_dataset(corpus, args.out, args.format)
    for path in files:
        log.info("%s: %.1f MB", path, path.stat().st_size / 1e6)
    log.info("%d images in %.1f s", args.images, time.perf_counter() - started)


if __name__ == "__main__":
    main()
