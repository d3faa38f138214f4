"""The web gallery: static files served by the API app itself (no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def install_web(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def gallery() -> FileResponse:
        # no-cache: the page is tiny, and a stale one after an upgrade would call old routes
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
