"""Prometheus metrics: request latencies, index size, model state and job progress.

Each app has its own registry (tests build many apps in one process). Index and job
figures are read when scraped, so they are never stale and cost nothing between scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.store.db import session_factory
from app.store.models import Job

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "sagashi_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ("method", "route", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector(Collector):
    """Index size and model state, from callables that read the live server state."""

    def __init__(self, images: Callable[[], int | None], model_loaded: Callable[[], bool]) -> None:
        self.images = images
        self.model_loaded = model_loaded

    def collect(self) -> Iterator[Metric]:
        count = self.images()
        gauge = GaugeMetricFamily(
            "sagashi_index_images", "Live images in the generation being served."
        )
        gauge.add_metric([], float(count or 0))
        yield gauge
        loaded = GaugeMetricFamily("sagashi_model_loaded", "1 when the upload model is loaded.")
        loaded.add_metric([], 1.0 if self.model_loaded() else 0.0)
        yield loaded


class JobCollector(Collector):
    """Jobs by state, and the progress of the running ones."""

    def __init__(self, engine: Engine) -> None:
        self.sessions = session_factory(engine)

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily("sagashi_jobs", "Jobs by state.", labels=["state"])
        progress = GaugeMetricFamily(
            "sagashi_job_progress_ratio", "Done / total of running jobs.", labels=["job", "kind"]
        )
        try:
            with self.sessions() as session:
                rows = session.execute(select(Job.state, func.count()).group_by(Job.state))
                for state, count in rows:
                    states.add_metric([state], float(count))
                running = session.execute(
                    select(Job.id, Job.kind, Job.done, Job.total).where(Job.state == "running")
                )
                for job_id, kind, done, total in running:
                    progress.add_metric([str(job_id), kind], done / total if total else 0.0)
        except SQLAlchemyError:
            pass  # a scrape during a database outage reports what it can
        yield states
        yield progress


class LatencyMiddleware:
    """Times every HTTP request under its route template (``/api/images/{image_id}``), so
    ids in URLs never multiply the label values."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(scope["method"], template, str(status["code"])).observe(
                time.perf_counter() - started
            )
