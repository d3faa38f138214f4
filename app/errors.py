"""The base of every error Sagashi reports to a person or a program.

Each error class says once how it reaches the outside: ``http_status`` and ``error_code``
for the HTTP API's JSON error shape (``{"error": {"code", "message", "position"?}}``), and
``exit_code`` for the command line. The API's handler (:mod:`app.api.errors`) and the CLI's
command class (:mod:`indexer.cli_parsing`) read these attributes; nothing else maps errors
to statuses or exit codes. An endpoint with another published contract (Danbooru's, Hugging
Face's) shapes the same error its own way, and says so where it does.

Errors that carry a code of their own (a query's syntax error, an image's decode failure)
set ``error_code`` on the instance; the others take their class's.
"""

from __future__ import annotations

from collections.abc import Mapping


class SagashiError(Exception):
    """An error with a one-line, user-facing message."""

    http_status: int = 400
    error_code: str = "bad_request"
    exit_code: int = 2  # the CLI's "bad input or refused" status; 1 means some files failed
    position: int | None = None  # a character offset into the request's query, if any
    headers: Mapping[str, str] | None = None

    def detail(self) -> str:
        """The message for a client: the HTTP error body's ``message``."""
        return str(self)

    def reason(self) -> str:
        """The line the CLI prints after ``sagashi: error:``."""
        return self.detail()
