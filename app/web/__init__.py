"""The web gallery: static files served by the API app itself (no build step), the login
form for SAGASHI_READ_TOKEN, and the API documentation pages."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.web import login
from app.web.docs import install_docs

STATIC = Path(__file__).parent / "static"


def install_web(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(login.router)
    install_docs(app)

    @app.get("/", include_in_schema=False)
    def gallery() -> FileResponse:
        # no-cache: the page is tiny, and a stale one after an upgrade would call old routes
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        # for clients that ask the old path; the page itself links /static/favicon.svg
        return FileResponse(STATIC / "favicon.ico", media_type="image/x-icon")
