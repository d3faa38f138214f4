"""The GPU benchmark runs whole on the CPU with the tiny model, as the device session will run
it (--focused): device time is short, so a section broken by a change elsewhere must show up
here, not as a "failed" line on the GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.bench_gpu import MEASURED
from tests.support.paths import REPO_ROOT

# What a CPU run of --focused measures: the GPU-only sections (nvjpeg, png_frames) are left
# out off CUDA, and the index at batch 128 runs only when its model was loaded.
FORWARDS = {"fp32", "bf16_compiled_fused", "bf16_compiled_fused_graphs"}
READERS = {
    "read_threads_img_s",
    "png_stages",
    "read_png_threads_img_s",
    "read_png_threads_beside_busy",
    "read_png_frames_threads_img_s",
}
INDEX_RUNS = {
    "index_default",
    "index_default_gil_before",
    "index_default_readers_resize",
    "index_jpegs",
    "index_default_graphs",
    "index_jpegs_graphs",
    "index_cpu_decode",
}


def test_the_focused_gpu_benchmark_runs_every_section_on_the_cpu(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.bench_gpu", "--device", "cpu", "--tiny"]
    command += ["--images", "16", "--batch-size", "4", "--budget", "0", "--focused"]
    done = subprocess.run(
        [*command, "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "bench_gpu.json").read_text())

    sections = set(results) - {"machine", "args", "images"}
    assert sections == FORWARDS | READERS | INDEX_RUNS | {"reindex_jpegs_img_s"}
    assert not sections & MEASURED
    failed = {k: v for k, v in results.items() if str(v).startswith("failed")}
    assert not failed
    assert results["images"].startswith("16 files")

    for name in FORWARDS:
        assert results[name]["bare_img_s"] > 0
    for name in FORWARDS - {"fp32"}:  # each against fp32 on the same generated images
        assert 0 < results[name]["max_abs_prob_diff"] < 0.05
        assert results[name]["top10_agreement"] >= 0.9
        assert results[name]["min_embedding_cosine"] > 0.999
    assert results["bf16_compiled_fused_graphs"]["captured"] is False  # CUDA graphs need CUDA

    for name in {"read_threads_img_s", "read_png_threads_img_s", "read_png_frames_threads_img_s"}:
        assert results[name] > 0
    assert set(results["read_png_threads_beside_busy"]) == {"before", "now"}
    assert results["png_stages"]["files"] > 0
    for name in INDEX_RUNS:
        assert results[name]["img_s"] > 0
        assert results[name]["in_flight"].startswith("in flight:")
    assert results["reindex_jpegs_img_s"] > 0
