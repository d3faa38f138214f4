"""Which requests answer errors in Danbooru's shape, and that shape. Kept apart from the
routes so the error handlers (``app.api.errors``) and the read-token middleware can use it
without importing them."""

from __future__ import annotations

import re
from typing import Any

from starlette.types import Scope

# Danbooru's exception class for our error codes, as its error bodies name it.
ERROR_CLASSES = {
    "not_found": "ActiveRecord::RecordNotFound",
    "pagination": "PaginationExtension::PaginationError",
    "unauthorized": "SessionLoader::AuthenticationFailure",
}
NOT_FOUND_MESSAGE = "That record was not found."

_PATHS = re.compile(
    r"/(?:posts|posts/[^/]+|counts/posts|tags|autocomplete|related_tag|iqdb_queries)\.json"
    r"|/data/(?:original|preview)/.*"
)


def danbooru_shaped(scope: Scope) -> bool:
    """Whether an error for this request is answered in Danbooru's shape."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return _PATHS.fullmatch(path) is not None


def error_body(code: str, message: str) -> dict[str, Any]:
    """Danbooru's JSON error (static/error.json): ``success``, the exception, the message."""
    return {"success": False, "error": ERROR_CLASSES.get(code, code), "message": message}
