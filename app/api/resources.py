"""What the server holds for its lifetime, built in the app's lifespan and kept on
``app.state.resources``: the database engine, the search service (tag postings and FAISS
in memory), the upload model, the thumbnail cache and the metrics registry."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.api.decode_gate import DecodeGate
from app.api.errors import ApiError
from app.api.inference import Inference
from app.api.metrics import Metrics
from app.search.service import EmptyIndex, SearchService
from app.settings import Settings
from app.store.db import session_factory
from app.store.roots import library_roots
from app.store.thumbs import ThumbnailCache

log = logging.getLogger(__name__)

DATABASE_RETRY_SECONDS = 2.0


@dataclass
class Resources:
    settings: Settings
    engine: Engine
    search: SearchService
    inference: Inference
    thumbs: ThumbnailCache
    metrics: Metrics
    decodes: DecodeGate  # bounds the decodes requests cause: uploads and thumbnails
    warmed: threading.Event = field(default_factory=threading.Event)
    warm_error: str | None = None
    stage: str = "starting"  # what warm() is doing, for /readyz until it is done

    def warm(self) -> None:
        """Load the search state, open the FAISS index and the gather matrix (and load the
        model, when configured to) before reporting ready, so that the first request of
        each kind is served as fast as the hundredth. Runs in a background thread: a large
        index takes minutes to build. A database that is not up yet is waited for; anything
        else is reported by /readyz."""
        try:
            self._load_index()
            self._open_vectors()
            if self.settings.model_load == "startup":
                self._report("loading the model")
                self.inference.load()
        except ApiError as exc:
            self.warm_error = exc.message
            log.error("start-up failed: %s", exc.message)
        except Exception as exc:
            self.warm_error = f"{type(exc).__name__}: {exc}"
            log.exception("start-up failed")
        finally:
            self.warmed.set()
        if self.warm_error is None:
            self._verify_files()

    def _verify_files(self) -> None:
        """The checksums the start left for later, once ready (see verify_files)."""
        try:
            self.search.verify_files()
        except Exception:
            log.exception("the background check of the index files failed")

    def _report(self, stage: str) -> None:
        self.stage = stage
        log.info("start-up: %s", stage)

    def _load_index(self) -> None:
        self._report("loading the tag index")
        while True:
            try:
                self.search.current()
                return
            except EmptyIndex:
                log.info("the index is empty; serving anyway")
                return
            except (OperationalError, InterfaceError) as exc:
                log.warning("the database is not answering (%s); retrying", exc.orig or exc)
                self.stage = "waiting for the database"
                time.sleep(DATABASE_RETRY_SECONDS)

    def _open_vectors(self) -> None:
        with suppress(EmptyIndex):  # nothing to open; _load_index said so
            self.search.open_vectors(self._report)

    def session(self) -> Session:
        """A new session on the service's database: every route and helper opens its
        sessions here, in a ``with`` block as short as the work that needs it (never across
        a file's streaming, which would hold a pooled connection for the download)."""
        return session_factory(self.engine)()

    def roots(self, session: Session) -> list[str]:
        """The folders files may be served from: those indexed, and SAGASHI_MEDIA_ROOTS."""
        return [*library_roots(session), *(str(p) for p in self.settings.media_roots)]


def resources(request: Request) -> Resources:
    found: Resources = request.app.state.resources
    return found


# A route's parameter for the server's resources: ``res: Res``.
Res = Annotated[Resources, Depends(resources)]
