"""A local stub of the Hugging Face Hub: serves the files of the repos it is given, or
refuses them as the Hub does."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub(http.server.BaseHTTPRequestHandler):
    """Serves /{repo}/resolve/main/{file} for the repos in ``files``; ``status`` overrides."""

    files: ClassVar[dict[str, bytes]] = {}
    status = 200
    code = ""
    stall: str | None = None  # a file whose body never finishes
    requests: ClassVar[list[str]] = []

    def _answer(self, body: bool) -> None:
        self.requests.append(f"{self.command} {self.path}")
        name = self.path.split("/resolve/main/", 1)[-1].split("?")[0]
        repo = self.path.split("/resolve/", 1)[0].strip("/")
        content = self.files.get(f"{repo}/{name}")
        if self.status != 200 or content is None:
            status = self.status if self.status != 200 else 404
            self.send_response(status)
            self.send_header("X-Error-Code", self.code or "EntryNotFound")
            self.send_header("X-Error-Message", "refused by the stub")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if not body:
            return
        if name == self.stall:
            self.wfile.write(content[: len(content) // 2])
            self.wfile.flush()
            time.sleep(60)
            return
        self.wfile.write(content)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving_hub(files: dict[str, bytes]) -> Iterator[tuple[str, type[Hub]]]:
    """A stub of its own serving ``files`` ({repo/file: content}) on a free loopback port:
    its base URL and its handler class (whose ``status``, ``code`` and ``stall`` a test may
    set, and whose ``requests`` it may read)."""
    handler: type[Hub] = type("StubHub", (Hub,), {"files": files, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
