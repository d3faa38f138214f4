"""Operations: liveness (/healthz), readiness (/readyz) and Prometheus metrics (/metrics)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.api.errors import ApiError
from app.api.resources import Res
from app.api.schemas import Health
from app.text import plural

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up and answering."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"description": "Not ready"}})
def readyz(res: Res) -> Health:
    """Ready to serve searches: the database answers, the tag index is loaded and the
    FAISS index and gather matrix are open (and, with SAGASHI_MODEL_LOAD=startup, the
    model is loaded). 503 until then, saying what start-up is doing, or when it failed,
    with the reason."""
    if not res.warmed.is_set():
        raise ApiError(503, "starting", f"still starting: {res.stage}")
    if res.warm_error is not None:
        raise ApiError(503, "failed", f"start-up failed: {res.warm_error}")
    try:
        with res.session() as session:
            session.execute(text("select 1"))
    except SQLAlchemyError as exc:
        raise ApiError(503, "database", f"the database does not answer: {exc}") from exc
    if res.search.files.startswith("damaged"):
        raise ApiError(503, "damaged", f"index files {res.search.files}")
    images = res.search.loaded_images()
    opened = res.search.opened_vectors()
    vectors = f"{opened.kind}, {plural(opened.count, 'vector')}" if opened else "empty index"
    if images is not None:
        index = plural(images, "image")
    else:  # nothing active yet, or the sql engine, which holds nothing in memory
        index = "empty" if opened is None else "read from the database"
    return Health(
        status="ready",
        checks={
            "database": "ok",
            "engine": res.search.kind,
            "index": index,
            "vectors": vectors,
            "model": _model_state(res),
            "files": res.search.files,
        },
    )


def _model_state(res: Res) -> str:
    if res.inference.loaded:
        return "loaded"
    if res.settings.model_dir is None:
        return "none (uploads to tag or embed answer 503; set SAGASHI_MODEL_DIR)"
    return "loads on the first upload"


@router.get("/metrics", response_class=Response)
def metrics(res: Res) -> Response:
    """Prometheus text format: request latencies, index size, jobs and their progress."""
    return Response(res.metrics.render(), media_type="text/plain; version=0.0.4")
