"""Errors in Hugging Face's shape on the endpoints its clients call.

huggingface_hub's ``hf_raise_for_status`` (0.2x through 2.x) reads an error body's
``"error"`` as a string (or a list of strings) and appends it to the exception it raises;
Sagashi's own ``{"error": {"code", "message"}}`` reached users as a Python dict's repr. So
POSTs to the drop-in tagging endpoints answer ``{"error": "<message>", "code": "<code>"}``
instead, with the same status codes; every other request keeps Sagashi's one shape.

The choice is made from the request's method and path, not its route, because the body
limit refuses an oversized body before routing has happened.
"""

from __future__ import annotations

from starlette.types import Scope

ENDPOINT_PATH = "/"  # an Inference Endpoint's URL is posted to itself
PIXAI_PATH = "/api/tag"
HF_SHAPED_POSTS = frozenset({ENDPOINT_PATH, PIXAI_PATH})


def hf_shaped(scope: Scope) -> bool:
    """Whether an error for this request is answered in Hugging Face's shape."""
    return scope.get("method") == "POST" and _route_path(scope) in HF_SHAPED_POSTS


def hf_error_body(code: str, message: str) -> dict[str, str]:
    return {"error": message, "code": code}


def _route_path(scope: Scope) -> str:
    # Behind a proxy prefix (uvicorn --root-path) the path may include the root path.
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"
