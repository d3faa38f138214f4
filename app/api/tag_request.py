"""Reading a drop-in tagging request (POST / and POST /api/tag): which contract it follows.

The Content-Type and, for JSON, the type of ``inputs`` tell the contracts apart:

- JSON whose ``inputs`` is an object: the PixAI card's endpoint contract.
- JSON whose ``inputs`` is a string: Hugging Face image classification with parameters
  (huggingface_hub then sends the image base64-encoded).
- ``image/*``, ``application/octet-stream`` or no Content-Type: Hugging Face image
  classification without parameters, the image itself as the body (huggingface_hub sends
  the file's guessed type for a path, and no Content-Type at all for bytes).

Any other Content-Type is refused with 415.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from app.api.errors import ApiError
from app.api.schemas import ClassificationRequest, PixaiRequest
from app.api.uploads import empty, too_large

RAW_TYPES = ("application/octet-stream",)


async def read_tag_request(
    request: Request, max_bytes: int
) -> PixaiRequest | ClassificationRequest | bytes:
    """The PixAI request, the classification request, or the raw image bytes."""
    media_type = _media_type(request)
    if media_type is None or media_type in RAW_TYPES or media_type.startswith("image/"):
        return await _read_raw(request, max_bytes)
    if media_type == "application/json" or media_type.endswith("+json"):
        # The body limit middleware has already capped the size of a JSON body.
        return _parse_json(await request.body())
    raise ApiError(
        415,
        "unsupported_media_type",
        f"send JSON (application/json) or the image itself (image/* or "
        f"application/octet-stream), not {media_type}",
    )


def _media_type(request: Request) -> str | None:
    header = request.headers.get("content-type", "")
    media_type = header.split(";", 1)[0].strip().lower()
    return media_type or None


async def _read_raw(request: Request, max_bytes: int) -> bytes:
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > max_bytes:
            raise too_large(max_bytes)
    if not data:
        raise empty()
    return bytes(data)


def _parse_json(body: bytes) -> PixaiRequest | ClassificationRequest:
    try:
        document = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both
        raise ApiError(422, "invalid_request", f"body: not valid JSON ({exc})") from exc
    inputs = document.get("inputs") if isinstance(document, dict) else None
    model: type[PixaiRequest | ClassificationRequest]
    model = ClassificationRequest if isinstance(inputs, str) else PixaiRequest
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        # The same handler as FastAPI's own validation: one line naming the field.
        raise RequestValidationError(exc.errors(include_url=False)) from exc


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` resolved in place: ``openapi_extra``
    cannot add components for them to refer to."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, list):
            return [resolve(item) for item in node]
        if not isinstance(node, dict):
            return node
        resolved = {key: resolve(value) for key, value in node.items() if key != "$ref"}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return {**resolve(definitions[ref.removeprefix("#/$defs/")]), **resolved}
        return resolved

    result: dict[str, Any] = resolve(schema)
    return result


TAG_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [inline_schema(PixaiRequest), inline_schema(ClassificationRequest)]
                }
            },
            # image/* is taken the same way; one binary type keeps the schema simple.
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
