"""The FastAPI application: ``create_app(settings)`` builds it; nothing happens at import.

The lifespan opens the database (refusing a schema this code does not know), builds the
search service and the upload model holder, and starts loading the index in a background
thread; /readyz answers 503 until it is loaded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.auth import ReadTokenMiddleware, Tokens
from app.api.danbooru.routes import router as danbooru_router
from app.api.decode_gate import DecodeGate
from app.api.errors import install_handlers
from app.api.inference import Inference
from app.api.limits import BodyLimitMiddleware
from app.api.metrics import JobCollector, LatencyMiddleware, Metrics, StateCollector
from app.api.openapi import install_openapi
from app.api.resources import Resources
from app.api.routes import admin, images, ops, search, tagging, tags
from app.api.schemas import ErrorBody
from app.search.build import search_service
from app.settings import Settings
from app.store.db import create_db_engine, database_url
from app.store.migrate import check_schema
from app.store.thumbs import ThumbnailCache
from app.tagger.protocol import Tagger
from app.tagrules.configured import tag_rules
from app.web import install_web

DESCRIPTION = """Search an anime image collection by Danbooru-style tags (with confidence
thresholds) and by image similarity, tag images with the PixAI or WD tagger, and run index
jobs. Every error is `{"error": {"code", "message", "position"?}}`, except on the drop-in
tagging endpoints (POST / and POST /api/tag), which answer `{"error": "<message>", "code"}`
as Hugging Face's clients read it."""


def build_resources(
    settings: Settings, metrics: Metrics, tagger: Tagger | None = None
) -> Resources:
    engine = create_db_engine(database_url(settings), settings.statement_timeout)
    check_schema(engine)
    tag_rules(settings)  # a bad implication or exclusion file stops the start with its line
    # A bad alias or rules file stops the start with its file and line.
    search = search_service(engine, settings, prefetch_vectors=True)
    thumbs = ThumbnailCache(
        settings.data_dir / "thumbs", settings.thumb_size, settings.max_image_pixels
    )
    decodes = DecodeGate(
        settings.effective_decode_slots(), settings.decode_queue, settings.decode_wait
    )
    inference = Inference(settings, decodes, tagger)
    metrics.watch(StateCollector(search.loaded_images, lambda: inference.loaded))
    metrics.watch(JobCollector(engine))
    return Resources(settings, engine, search, inference, thumbs, metrics, decodes)


def create_app(
    settings: Settings, tagger: Tagger | None = None, accept_when_ready: bool = False
) -> FastAPI:
    """The application. ``tagger`` replaces the model from SAGASHI_MODEL_DIR (tests).
    ``accept_when_ready`` (each of several worker processes): finish starting, and so let
    uvicorn accept connections, only once warm. The workers share one socket, and a request
    that reached a worker still opening its index waited seconds behind it while another
    worker already answered /readyz with 200. A single process starts at once instead, so
    /healthz and /readyz answer while it warms."""
    metrics = Metrics()  # one registry per app

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resources = build_resources(settings, metrics, tagger)
        app.state.resources = resources
        threading.Thread(target=resources.warm, name="sagashi-warm", daemon=True).start()
        if accept_when_ready:
            await asyncio.to_thread(resources.warmed.wait)
        yield
        resources.engine.dispose()

    app = FastAPI(
        title="Sagashi",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        responses={"default": {"model": ErrorBody, "description": "Error"}},
        docs_url=None,  # served from packaged assets by install_web, not from a CDN
        redoc_url=None,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes * 2 + 1_048_576)
    if settings.read_token is not None:  # outside the body limit: refuse before reading
        tokens = Tokens(settings.read_token, settings.admin_token)
        app.add_middleware(ReadTokenMiddleware, tokens=tokens)
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    install_handlers(app)
    for router in (search.router, images.router, tags.router, tagging.router, admin.router):
        app.include_router(router)
    app.include_router(ops.router)
    app.include_router(danbooru_router)
    install_web(app)
    install_openapi(app, read_protected=settings.read_token is not None)
    return app
