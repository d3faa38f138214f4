"""Errors raised by the tagger. Each carries a one-line, user-facing message."""

from __future__ import annotations

from app.errors import SagashiError


class ModelLoadError(SagashiError):
    """The model directory is missing files, or its files disagree with each other."""

    http_status = 503
    error_code = "model_unavailable"


class ImageDecodeError(SagashiError):
    """One image could not be turned into a model input. Reported per file, never fatal."""

    http_status = 422

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = self.error_code = code
        self.message = message

    def __reduce__(self) -> tuple[type[ImageDecodeError], tuple[str, str]]:
        # Sent back from reader processes: rebuilt from both fields, not from args.
        return (type(self), (self.code, self.message))

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}
