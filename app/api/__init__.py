"""The HTTP service: REST API, admin jobs, health and metrics, and the web gallery."""

from app.api.app import create_app

__all__ = ["create_app"]
