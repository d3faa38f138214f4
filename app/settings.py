"""Runtime configuration: one pydantic-settings class, read from ``SAGASHI_*`` variables.

Settings are built by the entry points (CLI, server) at start-up, never at import time,
so tests can construct them with explicit values.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.tagger.defaults import CARD, TagDefaults

Probability = Annotated[float, Field(ge=0.0, le=1.0)]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps|cuda:all|cuda:\d+(,cuda:\d+)+)$")
MIN_READ_TOKEN = 16
# SAGASHI_DEVICE_INPUT_MEMORY_MB's default: about four batches of 64 large PNGs' frames.
DEVICE_INPUT_MEMORY_MB = 2048


class Settings(BaseSettings):
    """Every setting has an environment variable named ``SAGASHI_<FIELD>`` (upper case)."""

    # protected_namespaces: pydantic before 2.10 reserves every "model_" name and warns, on
    # every command's stderr, about model_dir and the like; no field shadows BaseModel's own.
    model_config = SettingsConfigDict(
        env_prefix="SAGASHI_", extra="ignore", validate_default=True, protected_namespaces=()
    )

    data_dir: Path = Field(
        default=Path("./sagashi-data"),
        description="Directory for the SQLite database, embeddings, FAISS index and caches.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the database, e.g. postgresql://user@host/sagashi. "
        "Unset: SQLite in SAGASHI_DATA_DIR.",
    )
    score_floor: Probability = Field(
        default=0.05,
        description="Storage floor: tags scoring below it are not stored. Thresholds are "
        "chosen at query time above it.",
    )
    alias_file: Path | None = Field(
        default=None,
        description="Extra Danbooru tag-alias CSV (antecedent_name,consequent_name[,status]) "
        "on top of the subset shipped with Sagashi.",
    )
    implications: bool = Field(
        default=True,
        description="Search: a tag term also matches images of the tags that imply it "
        "(plaid_skirt for skirt); unimplied:TAG turns it off for one term.",
    )
    implication_file: Path | None = Field(
        default=None,
        description="Extra Danbooru tag-implication CSV (antecedent_name,consequent_name"
        "[,status]) on top of the subset shipped with Sagashi; search and captions use it.",
    )
    exclusion_file: Path | None = Field(
        default=None,
        description="Rules file of mutually exclusive tags (docs/tagging-and-datasets.md) in place "
        "of the one shipped with Sagashi.",
    )
    model_dir: Path | None = Field(
        default=None,
        description="Local model directory (PixAI v0.9 or WD v3 layout). "
        "Commands that tag require it, here or as --model-dir.",
    )
    device: str = Field(
        default="auto",
        description="Inference device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N; "
        "several GPUs as cuda:all or cuda:0,cuda:1 (one model per GPU, batches shared out).",
    )
    precision: Literal["auto", "fp32", "bf16", "autocast"] = Field(
        default="auto",
        description="Model weights' precision: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, "
        "or autocast (fp32 weights under bf16 autocast). ONNX models on OpenVINO (the "
        "openvino extra) compute in bf16 unless this is fp32.",
    )
    compile: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="torch.compile the model (auto: on CUDA for index, reindex and tag; off in "
        "the server, whose uploads come one at a time); compiled models pad every batch "
        "to batch_size.",
    )
    cuda_graphs: Literal["on", "off"] = Field(
        default="off",
        description="Replay the model's forward as one CUDA graph a batch (on a CUDA device; "
        "pads every batch to batch_size), so the model thread needs the GIL once a batch, "
        "not once a kernel; checked against the uncaptured forward at load, which is kept "
        "when the two differ or the capture fails. Off until measured on a GPU.",
    )
    read_processes: Literal["on", "off"] = Field(
        default="off",
        description="Read and decode files for index and reindex in worker processes instead "
        "of threads (off by default: threads measured faster on a 16-core GPU host).",
    )
    device_jpeg: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="index and reindex decode JPEGs on the model's device (nvJPEG through "
        "torchvision) instead of in the readers (auto: when the model runs on a GPU).",
    )
    device_resize: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="index and reindex pad and resize the images the readers decode (PNG, "
        "WebP, GIF, JPEGs the device does not decode; up to 2.6M pixels) on the model's "
        "device instead of in the readers (auto: when the model runs on a GPU).",
    )
    device_input_memory_mb: int = Field(
        default=DEVICE_INPUT_MEMORY_MB,
        ge=64,
        le=1 << 20,
        description="Host memory (MiB) that the JPEG bytes and decoded frames waiting for the "
        "device (device_jpeg, device_resize) may hold at once in index and reindex; beyond "
        "it the readers (threads or processes) decode and resize on the CPU.",
    )
    batch_size: int = Field(default=8, ge=1, le=4096, description="Images per forward pass.")
    decode_workers: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Threads that decode and preprocess images; 0 means one per CPU core.",
    )
    torch_threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="CPU threads for the model forward; 0 means one per CPU core.",
    )
    max_image_pixels: int = Field(
        default=178_956_970,
        ge=1,
        description="Decompression-bomb guard: images with more pixels are refused.",
    )
    jpeg_draft: bool = Field(
        default=True,
        description="Decode large JPEGs at a reduced DCT scale (at least twice the model input "
        "size) before resizing. Much faster; changes scores only by resize noise.",
    )
    # The tag defaults: every consumer reads them through tag_defaults() (app.tagger.defaults).
    top_k: int = Field(
        default=CARD.top_k,
        ge=1,
        le=100_000,
        description="Most general and character tags reported per image by 'sagashi tag', "
        "'sagashi export' and the tagging endpoints (PixAI card default).",
    )
    threshold_general: Probability = Field(
        default=CARD.general,
        description="Score threshold for general tags wherever a request gives none: search "
        "(CLI, API, gallery), tagging, export (PixAI card default).",
    )
    threshold_character: Probability = Field(
        default=CARD.character,
        description="Score threshold for character tags wherever a request gives none "
        "(PixAI card default).",
    )
    threshold_copyright: Probability = Field(
        default=CARD.copyright,
        description="Score threshold for copyright tags (each scored as its character) wherever "
        "a request gives none.",
    )
    threshold_rating: Probability = Field(
        default=CARD.rating,
        description="Score threshold for rating tags in search (rating: and tag lists) wherever "
        "a request gives none.",
    )
    search_engine: Literal["memory", "segments", "sql"] = Field(
        default="segments",
        description="Tag-query engine: memory (the posting engine, read from the database at "
        "start and kept current), segments (the same engine opened from memory-mapped segment "
        "files in SAGASHI_DATA_DIR/segments, rebuilt from the database when missing or stale; "
        "opens in seconds, shared by every worker) or sql (queries the database directly; no "
        "memory held, slower per query).",
    )
    max_query_terms: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Most tag, wildcard and metatag terms a query may hold.",
    )
    duplicate_similarity: Probability = Field(
        default=0.98,
        description="Cosine similarity at or above which a result counts as a near-duplicate "
        "of the query image (hidden on request).",
    )
    statement_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="PostgreSQL: seconds any one statement of the server may run before it is "
        "cancelled (the request gets a 503).",
    )
    host: str = Field(default="127.0.0.1", description="Address 'sagashi serve' listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port 'sagashi serve' listens on.")
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for the /api/admin endpoints. Unset: admin endpoints are "
        "disabled.",
    )
    read_token: SecretStr | None = Field(
        default=None,
        description="Bearer token every route but /healthz, /readyz and /login needs (the "
        "admin token works too; the web gallery logs in with it and keeps a cookie). Unset: "
        "reading is open, fine on 127.0.0.1 only. Set it whenever the port is reachable from "
        "other machines.",
    )
    workers: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Server processes 'sagashi serve' runs. 0: one per CPU core with the "
        "segments or sql engine (they share the segment files and the FAISS file through the "
        "page cache), one with the memory engine (each of its workers loads its own copy).",
    )
    keep_alive_timeout: int = Field(
        default=5,
        ge=1,
        le=600,
        description="Seconds 'sagashi serve' keeps an idle keep-alive connection open.",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Seconds a client has to send a complete request head (request line and "
        "headers) after connecting or after the previous response; slower ones are "
        "disconnected (slowloris).",
    )
    max_concurrency: int = Field(
        default=200,
        ge=1,
        le=100_000,
        description="Most open connections (or requests in progress) 'sagashi serve' takes; "
        "past it, new requests get a 503.",
    )
    max_header_bytes: int = Field(
        default=16_384,
        ge=1024,
        le=1024 * 1024,
        description="Most bytes of an unfinished request head (request line and headers) "
        "the server buffers while it waits for the rest; past it the client gets a 400 and is "
        "disconnected.",
    )
    model_load: Literal["lazy", "startup"] = Field(
        default="lazy",
        description="When the server loads the model: lazy (on the first upload to tag or "
        "embed) or startup (before it reports ready).",
    )
    max_upload_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest image accepted by upload, base64 or URL (HTTP 413 above it).",
    )
    max_upload_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Most pixels of a query image sent by upload, base64 or URL (HTTP 413 "
        "above it), checked from the header before decoding. Lower than "
        "SAGASHI_MAX_IMAGE_PIXELS, which bounds the library's own files: anyone who reaches the "
        "port can send these. 50 MP holds a 48 MP photo and an 8K frame; Danbooru itself "
        "accepts up to 441 MP from its registered uploaders.",
    )
    decode_slots: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Most query-image and thumbnail decodes the server runs at once; 0 means "
        "one per CPU core. Decoding memory stays under this times about 12 bytes per "
        "SAGASHI_MAX_UPLOAD_PIXELS pixel.",
    )
    decode_queue: int = Field(
        default=16,
        ge=0,
        le=100_000,
        description="Decodes that may wait for a slot; past it a request gets a 503 with "
        "Retry-After at once.",
    )
    decode_wait: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Seconds a decode may wait for a slot before its request gets a 503.",
    )
    url_fetch: bool = Field(
        default=False,
        description="Allow the API to download query images from http(s) URLs. Private, "
        "loopback, link-local and metadata addresses are always refused.",
    )
    url_fetch_timeout: float = Field(
        default=10.0, gt=0, le=300, description="Seconds a URL download may take in all."
    )
    url_fetch_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Networks (CIDR, comma-separated) that URL downloads may reach even "
        "though they are private, e.g. an internal image host: 10.1.2.0/24.",
    )
    media_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Extra folders (comma-separated) the server may serve files from, besides "
        "the folders 'sagashi index' was run on; for imported predictions.",
    )
    thumb_size: int = Field(
        default=320, ge=32, le=2048, description="Longest side of thumbnails, in pixels."
    )
    index_thumbs: bool = Field(
        default=True,
        description="'sagashi index' (and index jobs) makes the gallery's thumbnails of new "
        "and changed images in the background of the run, so a first gallery view needs no "
        "decode.",
    )
    export_dir: Path | None = Field(
        default=None,
        description="Folder that exports started from the API or the gallery are written "
        "under, one subfolder each (on the worker's host). Unset: SAGASHI_DATA_DIR/exports.",
    )
    worker_poll_seconds: float = Field(
        default=2.0, gt=0, le=3600, description="How often 'sagashi worker' looks for jobs."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Logging level."
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError(
                f"must be auto, cpu, cuda, cuda:N, cuda:all, cuda:0,cuda:1,... or mps, "
                f"not {value!r}"
            )
        return value

    @field_validator(
        "admin_token",
        "read_token",
        "model_dir",
        "alias_file",
        "implication_file",
        "exclusion_file",
        "database_url",
        "export_dir",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # VAR= in an environment file or compose means "unset", not an empty token or path.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("read_token")
    @classmethod
    def _check_read_token(cls, value: SecretStr | None) -> SecretStr | None:
        # It guards an exposed port: a short one falls to guessing.
        if value is not None and len(value.get_secret_value()) < MIN_READ_TOKEN:
            raise ValueError(
                f"must be at least {MIN_READ_TOKEN} characters (e.g. openssl rand -hex 32)"
            )
        return value

    @field_validator("url_fetch_allow", "media_roots", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        # Environment variables give "a,b" (or a JSON list).
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("url_fetch_allow")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not a network (CIDR such as 10.1.2.0/24)") from exc
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def effective_decode_workers(self) -> int:
        return self.decode_workers or max(1, os.cpu_count() or 1)

    def effective_decode_slots(self) -> int:
        return self.decode_slots or max(1, os.cpu_count() or 1)

    def tag_defaults(self) -> TagDefaults:
        return TagDefaults(
            general=self.threshold_general,
            character=self.threshold_character,
            copyright=self.threshold_copyright,
            rating=self.threshold_rating,
            top_k=self.top_k,
        )

    def effective_workers(self) -> int:
        if self.workers:
            return self.workers
        return 1 if self.search_engine == "memory" else max(1, os.cpu_count() or 1)

    def effective_export_dir(self) -> Path:
        return self.export_dir if self.export_dir is not None else self.data_dir / "exports"

    def effective_torch_threads(self) -> int:
        return self.torch_threads or max(1, os.cpu_count() or 1)
