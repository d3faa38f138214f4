"""How 'sagashi serve' runs uvicorn: limits against slow and greedy clients, from settings.

uvicorn gives a keep-alive timeout (SAGASHI_KEEP_ALIVE_TIMEOUT), a concurrency limit
(SAGASHI_MAX_CONCURRENCY: open connections or requests in progress; past it a request gets
uvicorn's plain-text 503) and a limit on the request head's size for its h11 parser
(SAGASHI_MAX_HEADER_BYTES: larger gets a 400). It has no timeout for reading the request
head: a client that connects and sends its headers a byte at a time (slowloris) keeps the
connection, and counts against the concurrency limit, for as long as it likes. The h11
protocol below adds that deadline (SAGASHI_HEADER_TIMEOUT).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

import h11
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.process import die_with_parent
from app.settings import Settings

log = logging.getLogger(__name__)

# The serving parent's pid, handed to its workers (not a setting: set by 'sagashi serve').
PARENT_VARIABLE = "_SAGASHI_SERVE_PARENT"


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not sent a complete request head
    within ``header_timeout`` seconds of connecting or of the end of the previous response.

    The timer runs while h11 waits for a request (``their_state`` IDLE) and stops once the
    head is parsed, so a slow upload of the body is not cut by it."""

    header_timeout: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _watch_head(self) -> None:
        if not self._awaiting_head():
            self._stop_head_timer()
        elif self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._awaiting_head():
            host = self.client[0] if self.client else "?"
            log.info(
                "closed a connection from %s: no complete request head in %gs",
                host,
                self.header_timeout,
            )
            self.transport.close()


def head_timeout_protocol(seconds: float) -> type[HeadTimeoutH11Protocol]:
    # uvicorn builds the protocol from a class and its own Config; the class carries the value.
    return type("HeadTimeoutH11Protocol", (HeadTimeoutH11Protocol,), {"header_timeout": seconds})


def app_from_environment() -> FastAPI:
    """The application of one worker process of ``sagashi serve --workers N``: settings from
    the environment (the parent put its command-line options there)."""
    from app.api.app import create_app

    _die_with_parent()
    settings = Settings()
    HeadTimeoutH11Protocol.header_timeout = settings.header_timeout  # this process's class
    _share_cores(settings.effective_workers())
    return create_app(settings, accept_when_ready=True)


def _die_with_parent() -> None:
    """Ask Linux to end this worker when uvicorn's parent process dies. Without it, a parent
    killed with SIGKILL (the OOM killer, kill -9) leaves its workers serving the port, and a
    restarted server cannot bind it."""
    if not sys.platform.startswith("linux"):
        return
    die_with_parent(signal.SIGTERM)
    parent = os.environ.get(PARENT_VARIABLE)
    if parent is not None and os.getppid() != int(parent):  # it died before the request
        os.kill(os.getpid(), signal.SIGTERM)


def _share_cores(workers: int) -> None:
    """FAISS's OpenMP regions in each worker get the cores divided by the workers. With every
    worker free to use every core, its threads spun waiting for cores the other workers held:
    at 1M images, 2 workers on 2 cores served 46 requests/s under 8 clients with stalls of
    seconds (search p99 6.7 s), where 1 worker served 103; with this, 80 (p99 0.64 s)."""
    import faiss

    faiss.omp_set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def uvicorn_options(settings: Settings, workers: int = 1) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` (or ``uvicorn.Config``) besides the app. With
    several workers uvicorn starts each in a new process, which gets the protocol class by
    its module path (a class made at run time cannot travel there);
    :func:`app_from_environment` gives it its timeout there. The class, not its import
    string: uvicorn before 0.36 takes a string only as one of its own protocol names."""
    protocol: Any = head_timeout_protocol(settings.header_timeout)
    if workers > 1:
        protocol = HeadTimeoutH11Protocol
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "proxy_headers": True,
        "http": protocol,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.max_concurrency,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
