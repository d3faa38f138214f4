#!/usr/bin/env bash
# The GPU benchmark on a lent GPU machine, in one call (docs/benchmarks.md, "GPU").
#
# That machine has Python 3.12 with torch, torchvision, timm, numpy, Pillow, pyarrow and
# onnxruntime, but not the rest of Sagashi's dependencies, and it cannot reach a registry.
# So, on the development machine, first:
#     bash bench/device_gpu.sh wheels      # the missing wheels, at this venv's versions, in .whl/
# then on the GPU machine (the device tool: carry [".whl"], a timeout of about 560 s, and kind
# nvidia-h200, the card of every earlier GPU figure in docs/benchmarks.md):
#     bash bench/device_gpu.sh run [more bench_gpu options]
# which installs them under /tmp/site and runs bench_gpu --focused within 500 s, its JSON and
# log in $OUT.
set -euo pipefail

# Sagashi's dependencies, and theirs, that the GPU machine's image lacks (device KINDS.md).
MISSING=(sqlalchemy greenlet alembic mako pydantic pydantic-core pydantic-settings
    python-dotenv typing-inspection annotated-types faiss-cpu pyroaring)

wheels() {
    local python=${PYTHON:-.venv/bin/python} pins=()
    for name in "${MISSING[@]}"; do
        pins+=("$name==$("$python" -c 'import sys, importlib.metadata as m; print(m.version(sys.argv[1]))' "$name")")
    done
    rm -rf .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
    ls .whl
}

run() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    local out=${OUT:-.bench-out}
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
    timeout 500 python3 -m bench.bench_gpu --device cuda --images 2048 --batch-size 64 \
        --budget 420 --focused --out "$out" "$@" 2>&1 | tee "$out/bench_gpu.log"
}

case "${1:-}" in
    wheels) wheels ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash bench/device_gpu.sh wheels | run [bench_gpu options]" >&2; exit 2 ;;
esac
