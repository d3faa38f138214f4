"""The forward replayed from a CUDA graph (SAGASHI_CUDA_GRAPHS): off on a CPU, checked against
the uncaptured forward at load. The capture itself needs a CUDA device; those tests skip,
saying so, on a machine without one (bench.bench_gpu measures it on the GPU machine)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from app.settings import Settings
from app.tagger import TimmTagger
from app.tagger.batching import predict_stacked
from app.tagger.forward import CapturedForward, ForwardOptions, same_answers

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device; this machine has none"
)


def images(tagger: TimmTagger, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    side = tagger.preprocess.size
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(count)]


def test_graphs_are_off_unless_asked_and_on_a_cuda_device_only() -> None:
    assert Settings().cuda_graphs == "off"
    assert not ForwardOptions().graphed(CUDA)
    assert ForwardOptions(graphs="on").graphed(CUDA)
    assert not ForwardOptions(graphs="on").graphed(CPU)
    # A graph replays one input shape: it pads every batch even without compilation.
    assert ForwardOptions(graphs="on", compile="off").padded(CUDA)
    assert not ForwardOptions(graphs="on", compile="off").padded(CPU)
    assert ForwardOptions.from_settings(Settings(cuda_graphs="on")).graphs == "on"
    with pytest.raises(ValidationError, match="cuda_graphs"):
        Settings(cuda_graphs="auto")  # type: ignore[arg-type]


def test_asked_on_a_cpu_the_tagger_says_so_and_answers_as_usual(
    tiny_pixai_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plain = TimmTagger(tiny_pixai_dir, "cpu")
    plain.load()
    with caplog.at_level(logging.INFO, logger="app.tagger.timm_tagger"):
        asked = TimmTagger(tiny_pixai_dir, "cpu", forward=ForwardOptions(graphs="on"))
        asked.load()
    assert "no CUDA graphs (they need a CUDA device)" in caplog.text
    batch = images(plain, 3, 1)
    np.testing.assert_array_equal(
        predict_stacked(asked, batch).probs, predict_stacked(plain, batch).probs
    )


def test_a_forward_that_answers_differently_is_refused(tiny_pixai_dir: Path) -> None:
    tagger = TimmTagger(tiny_pixai_dir, "cpu")
    tagger.load()
    net = tagger.network.eval()
    example = torch.rand((2, 3, tagger.preprocess.size, tagger.preprocess.size))

    def shifted(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, pooled = net(batch)
        return logits + 0.5, pooled

    def stale(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, pooled = net(torch.zeros_like(batch))  # a graph that never reads its input
        return logits, pooled

    with torch.inference_mode():
        assert same_answers(net, net, example, 1e-3) == 0.0
        with pytest.raises(ValueError, match="differs by"):
            same_answers(net, shifted, example, 1e-3)
        with pytest.raises(ValueError, match="differs by"):
            same_answers(net, stale, example, 1e-3)


@needs_cuda
def test_a_captured_forward_replays_each_new_batch(tiny_pixai_dir: Path) -> None:
    tagger = TimmTagger(tiny_pixai_dir, "cuda", forward=ForwardOptions(batch_size=4))
    tagger.load()
    net = tagger.network
    side = tagger.preprocess.size
    with torch.inference_mode():
        captured = CapturedForward(net, torch.zeros((4, 3, side, side), device=CUDA))
        kept = []
        for seed in range(3):
            batch = torch.rand((4, 3, side, side), device=CUDA) + seed
            logits, pooled = captured(batch)
            kept.append((batch, logits, pooled))
        for batch, logits, pooled in kept:  # earlier outputs are not overwritten
            expected_logits, expected_pooled = net(batch)
            torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(pooled, expected_pooled, atol=1e-4, rtol=1e-4)


@needs_cuda
def test_a_tagger_with_graphs_answers_as_without(tiny_pixai_dir: Path) -> None:
    plain = TimmTagger(tiny_pixai_dir, "cuda", forward=ForwardOptions(batch_size=4, compile="off"))
    plain.load()
    graphed = TimmTagger(
        tiny_pixai_dir, "cuda", forward=ForwardOptions(batch_size=4, compile="off", graphs="on")
    )
    graphed.load()
    for rows in (1, 4, 6):
        batch = images(plain, rows, rows)
        np.testing.assert_allclose(
            predict_stacked(graphed, batch).probs, predict_stacked(plain, batch).probs, atol=1e-3
        )
