# Sagashi in two variants from one file:
#   CPU (default):  docker build -t sagashi .
#   CUDA (workers): docker build -t sagashi:cuda --build-arg VARIANT=cuda .
# The compose file builds the API on CPU and the worker on CUDA.
ARG VARIANT=cpu

FROM python:3.11-slim AS base-cpu
ENV TORCH_INDEX=https://download.pytorch.org/whl/cpu EXTRAS=postgres

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base-cuda
# Ubuntu 24.04 ships Python 3.12; Sagashi needs 3.11, from the deadsnakes PPA.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /usr/bin/python3.11 /usr/local/bin/python
# FAISS stays faiss-cpu here too: searches and index builds run on the CPU
# (docs/query-language.md, "Similarity").
ENV TORCH_INDEX=https://download.pytorch.org/whl/cu128 EXTRAS=postgres

FROM base-${VARIANT} AS final
# More extras after the variant's, e.g. ",ray" for the compose file's Ray services.
ARG MORE_EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/sagashi PATH=/opt/sagashi/bin:$PATH \
    SAGASHI_DATA_DIR=/data SAGASHI_HOST=0.0.0.0
RUN python -m venv /opt/sagashi
WORKDIR /src
# torch first, from the index of the variant, so the project install finds it satisfied.
COPY pyproject.toml README.md ./
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" "torch>=2.4,<=2.14.1" "torchvision>=0.19,<=0.29.1"
COPY app ./app
COPY indexer ./indexer
COPY migrations ./migrations
# Editable: Alembic's scripts (migrations/) stay beside the code that finds them.
RUN pip install --no-cache-dir -e ".[${EXTRAS}${MORE_EXTRAS}]" \
 && useradd --system --uid 10001 --home-dir /data sagashi \
 && mkdir -p /data /models \
 && chown sagashi /data /models
USER sagashi
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["sagashi"]
CMD ["serve"]
