"""The file and thumbnail endpoints under a symlink race: while requests run, a thread keeps
swapping a folder inside the library for a symlink to a folder outside every root. Each
response must be the library file (or its thumbnail) or a 404 in the JSON error shape;
not one byte from outside the roots may come back."""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import select, update

from app.store.db import session_factory
from app.store.models import Image
from app.store.thumbs import ThumbnailCache
from tests.support.api_helpers import ApiEnv, JsonResponse, indexed_env

log = logging.getLogger(__name__)

RACE_SECONDS = 3.0
CLIENTS = 4
LIBRARY_COLOUR = (0, 0, 255)
SECRET_COLOUR = (255, 0, 0)
SERVED_404 = {"404 file_missing", "404 outside_roots", "404 path_changed"}


def solid_bmp(path: Path, colour: tuple[int, int, int]) -> bytes:
    """An uncompressed BMP: the library file and the secret have the same size, so a leak
    is a clean swap of bytes rather than a length mismatch the client might reject."""
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.new("RGB", (32, 32), colour).save(path, "BMP")
    return path.read_bytes()


@pytest.fixture(scope="module", params=["sqlite"])
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_pixai_dir: Path
) -> Iterator[ApiEnv]:
    root = tmp_path_factory.mktemp("race")
    solid_bmp(root / "library" / "sub" / "pic.bmp", LIBRARY_COLOUR)
    yield from indexed_env(request, root, tiny_pixai_dir, images=1)


class Swapper(threading.Thread):
    """Flips ``folder`` between the real directory and a symlink to ``outside``."""

    def __init__(self, folder: Path, outside: Path) -> None:
        super().__init__(daemon=True)
        self.folder = folder
        self.held = folder.with_name(folder.name + ".real")
        self.link = folder.with_name(folder.name + ".link")
        self.outside = outside
        self.stop = threading.Event()
        self.swaps = 0

    def run(self) -> None:
        self.link.symlink_to(self.outside, target_is_directory=True)
        while not self.stop.is_set():
            os.rename(self.folder, self.held)
            os.rename(self.link, self.folder)  # the folder is now a link out of the library
            os.rename(self.folder, self.link)
            os.rename(self.held, self.folder)
            self.swaps += 1
        self.link.unlink()


def outcome(client: TestClient, url: str, expected: bytes, secret: bytes) -> str:
    """What one request got: "200", "404 <code>", "leak", or "bad" for anything else."""
    response = client.get(url)
    if response.status_code == 404:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
        return f"404 {body['error']['code']}"
    if response.status_code != 200:
        return f"bad {response.status_code}"
    if url.endswith("/file"):
        content = response.content
        return "leak" if content == secret else "200" if content == expected else "bad body"
    try:
        pixel = PILImage.open(io.BytesIO(response.content)).convert("RGB").getpixel((0, 0))
    except OSError:
        return "bad thumbnail"
    red, _, blue = pixel  # type: ignore[misc]
    return "leak" if red > 200 else "200" if blue > 200 else "bad thumbnail"


def test_a_folder_swapped_for_a_symlink_never_serves_outside_files(env: ApiEnv) -> None:
    folder = env.library / "sub"
    original = folder / "pic.bmp"
    expected = original.read_bytes()
    secret = solid_bmp(env.root / "secret" / "pic.bmp", SECRET_COLOUR)
    assert secret != expected and len(secret) == len(expected)
    image = the_image(env)
    thumbs = ThumbnailCache(env.settings.data_dir / "thumbs", env.settings.thumb_size, 1)
    cached = thumbs.path_for(image.sha256)
    urls = [f"/api/images/{image.id}/file", f"/api/images/{image.id}/thumb"]
    # The app the fixture started, answering a server error as a 500 instead of raising it
    quiet = TestClient(env.client.app, raise_server_exceptions=False)

    def client(worker: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        deadline = time.monotonic() + RACE_SECONDS
        # One thread asks for thumbnails, deleting the cached one first so that every
        # request decodes the source; the others ask for the file.
        url = urls[1] if worker == 0 else urls[0]
        while time.monotonic() < deadline:
            if worker == 0:
                cached.unlink(missing_ok=True)
            seen[f"{url.rsplit('/', 1)[1]} {outcome(quiet, url, expected, secret)}"] += 1
        return seen

    swapper = Swapper(folder, env.root / "secret")
    swapper.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            totals = sum(pool.map(client, range(CLIENTS)), Counter())
    finally:
        swapper.stop.set()
        swapper.join()
    log.warning("%d requests, %d swaps: %s", sum(totals.values()), swapper.swaps, dict(totals))
    assert swapper.swaps > 100
    assert totals["file 200"] > 0 and totals["thumb 200"] > 0, totals
    assert totals["file leak"] == totals["thumb leak"] == 0, totals
    unexpected = {
        kind
        for kind in totals
        if kind not in {"file 200", "thumb 200"} and kind.split(" ", 1)[1] not in SERVED_404
    }
    assert not unexpected, totals
    assert folder.is_dir() and not folder.is_symlink()


# --- the response from the descriptor keeps what FileResponse gave ----------------------


@contextmanager
def stored_path(env: ApiEnv, image_id: int, path: Path) -> Iterator[None]:
    """The image row points at ``path`` for the block, and back afterwards."""
    with session_factory(env.engine)() as session:
        image = session.get(Image, image_id)
        assert image is not None
        original = image.path
        image.path = str(path)
        session.commit()
    try:
        yield
    finally:
        with session_factory(env.engine)() as session:
            session.execute(update(Image).where(Image.id == image_id).values(path=original))
            session.commit()


def the_image(env: ApiEnv) -> Image:
    with session_factory(env.engine)() as session:
        path = str(env.library / "sub" / "pic.bmp")
        return session.scalars(select(Image).where(Image.path == path)).one()


def error_code(response: JsonResponse, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return str(body["error"]["code"])


def test_byte_ranges_are_served_from_the_open_file(env: ApiEnv) -> None:
    image = the_image(env)
    data = Path(image.path).read_bytes()
    url = f"/api/images/{image.id}/file"
    whole = env.client.get(url)
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-length"] == str(len(data))
    etag = whole.headers["etag"]
    for asked, (start, end) in {
        "bytes=0-9": (0, 10),
        "bytes=-5": (len(data) - 5, len(data)),
    }.items():
        part = env.client.get(url, headers={"Range": asked, "If-Range": etag})
        assert part.status_code == 206
        assert part.content == data[start:end]
        assert part.headers["content-range"] == f"bytes {start}-{end - 1}/{len(data)}"
        assert part.headers["etag"] == etag
    for whole_file in ({"Range": "bytes=0-1,4-5"}, {"Range": "bytes=0-9", "If-Range": '"old"'}):
        response = env.client.get(url, headers=whole_file)
        assert response.status_code == 200 and response.content == data
    past = env.client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert error_code(past, 416) == "range_not_satisfiable"
    assert past.headers["content-range"] == f"bytes */{len(data)}"


def test_a_link_that_stays_inside_the_library_is_served(env: ApiEnv) -> None:
    image = the_image(env)
    link = env.library / "alias.bmp"
    link.symlink_to(Path("sub") / "pic.bmp")
    try:
        with stored_path(env, image.id, link):
            response = env.client.get(f"/api/images/{image.id}/file")
            assert response.status_code == 200
            assert response.content == Path(image.path).read_bytes()
            assert env.client.get(f"/api/images/{image.id}/thumb").status_code == 200
    finally:
        link.unlink()


def test_a_named_pipe_is_refused_without_blocking(env: ApiEnv) -> None:
    image = the_image(env)
    pipe = env.library / "pipe.bmp"
    os.mkfifo(pipe)
    try:
        with stored_path(env, image.id, pipe):
            for suffix in ("/file", "/thumb"):
                response = env.client.get(f"/api/images/{image.id}{suffix}")
                assert error_code(response, 404) == "not_a_file"
    finally:
        pipe.unlink()
