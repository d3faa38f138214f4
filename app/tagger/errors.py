"""Errors raised by the tagger. Each carries a one-line, user-facing message."""

from __future__ import annotations


class ModelLoadError(Exception):
    """The model directory is missing files, or its files disagree with each other."""


class ImageDecodeError(Exception):
    """One image could not be turned into a model input. Reported per file, never fatal."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[ImageDecodeError], tuple[str, str]]:
        # Sent back from reader processes: rebuilt from both fields, not from args.
        return (type(self), (self.code, self.message))

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}
