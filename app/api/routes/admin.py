"""Admin endpoints: queue index, reindex and FAISS-rebuild jobs for 'sagashi worker', follow
their progress, and reload the server's in-memory index.

They need ``Authorization: Bearer <SAGASHI_ADMIN_TOKEN>``; without a configured token they
are disabled (403), so a fresh install never exposes them.
"""

from __future__ import annotations

import hmac
import os
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.errors import ApiError
from app.api.openapi import BEARER_SCHEME
from app.api.resources import Res
from app.api.schemas import AdminJobRequest, ExportJobRequest, JobOut, ReloadResponse
from app.query import parse
from app.search.service import EmptyIndex
from app.store.job_records import (
    enqueue,
    failure_records,
    get_job,
    job_record,
    recent_jobs,
    valid_export_name,
)

# Declares the scheme in the OpenAPI schema (clients and Swagger UI's "Authorize" send the
# token); the checks and their error codes stay ours, hence auto_error=False.
bearer = HTTPBearer(auto_error=False, scheme_name=BEARER_SCHEME, description="SAGASHI_ADMIN_TOKEN")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


def require_admin(res: Res, credentials: Credentials) -> None:
    token = res.settings.admin_token
    if token is None:
        raise ApiError(
            403, "admin_disabled", "admin endpoints are disabled: set SAGASHI_ADMIN_TOKEN"
        )
    given = credentials.credentials.strip() if credentials is not None else ""
    if not given:
        raise ApiError(
            401,
            "unauthorized",
            "admin endpoints need Authorization: Bearer <SAGASHI_ADMIN_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise ApiError(403, "forbidden", "the admin token is not valid")


router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])


@router.post("/api/admin/reindex", response_model=JobOut, status_code=202)
def queue_job(body: AdminJobRequest, res: Res) -> JobOut:
    """Queue a job: index (paths, optional model_dir), reindex (optional model_dir and
    where) or rebuild_faiss. A 'sagashi worker' process runs it; follow it at
    /api/admin/jobs/{id}."""
    params = _job_params(body)
    job = enqueue(res.engine, body.action, params)
    return JobOut(**job_record(job))


@router.post("/api/admin/export", response_model=JobOut, status_code=202)
def queue_export(body: ExportJobRequest, res: Res) -> JobOut:
    """Queue an export of a search (q, at the given thresholds) into a dataset folder named
    name under SAGASHI_EXPORT_DIR: images (copied, hard-linked, symlinked or none), a caption
    beside each, and metadata.jsonl, as 'sagashi export --where Q DIR' writes it. A
    'sagashi worker' process runs it; follow it at /api/admin/jobs/{id}."""
    if not valid_export_name(body.name):
        raise ApiError(
            422, "invalid_request", "name: one folder name, without '/' and not starting with '.'"
        )
    try:
        body.q.encode("utf-8")
        parse(body.q)
    except UnicodeEncodeError as exc:
        raise ApiError(422, "invalid_request", "q: not valid Unicode text") from exc
    params = body.model_dump()
    params["where"] = params.pop("q")
    job = enqueue(res.engine, "export", params)
    return JobOut(**job_record(job))


@router.get("/api/admin/jobs", response_model=list[JobOut])
def list_jobs(res: Res, limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> list[JobOut]:
    """Recent jobs, newest first (CLI runs and queued jobs alike)."""
    return [JobOut(**job_record(job)) for job in recent_jobs(res.engine, limit)]


@router.get("/api/admin/jobs/{job_id}", response_model=JobOut)
def job_status(job_id: Annotated[int, Path(ge=1, le=2**31 - 1)], res: Res) -> JobOut:
    """A job's state and progress (done of total, failed), summary, and failed files."""
    job = get_job(res.engine, job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    return JobOut(**job_record(job), failures=failure_records(res.engine, job_id))


@router.post("/api/admin/index/reload", response_model=ReloadResponse)
def reload_index(res: Res) -> ReloadResponse:
    """Reload the tag postings and FAISS index from the database now (the server also
    follows changes by itself, within a second)."""
    try:
        state = res.search.reload()
    except EmptyIndex:
        return ReloadResponse(generation=None, images=0)
    return ReloadResponse(generation=state.generation_id, images=res.search.loaded_images() or 0)


def _job_params(body: AdminJobRequest) -> dict[str, object]:
    if body.action == "index":
        if not body.paths:
            raise ApiError(422, "invalid_request", "paths: an index job needs at least one folder")
        relative = [p for p in body.paths if not os.path.isabs(p) or "\x00" in p]
        if relative:
            raise ApiError(
                422, "invalid_request", f"paths: give absolute paths, not {relative[0]!r}"
            )
        return {"paths": body.paths, "model_dir": body.model_dir}
    if body.paths:
        raise ApiError(422, "invalid_request", "paths: only index jobs take paths")
    if body.action == "reindex":
        if body.where is not None:
            parse(body.where)  # a QueryError is a 400 with the query's code and position
        return {"model_dir": body.model_dir, "where": body.where}
    return {}
