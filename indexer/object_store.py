"""Object-store sources for ``sagashi tag-dataset``: ``s3://``, ``gs://``, ``file://`` and
any URI :meth:`pyarrow.fs.FileSystem.from_uri` understands.

A dataset run needs no local copy of the files (nothing is served from disk), so its
sources may be prefixes on an object store. They are listed through pyarrow's filesystems,
recursively, keeping the objects with a supported image extension (the objects are never
opened to sniff an extension-less one: that would be one request per object); each object is
read whole through the same filesystem, on the Ray workers or in reader threads here, and
decoded as a local file is (:func:`indexer.reading.decode_bytes`). A row's ``path`` is the
object's URI, its size and mtime those of the listing, so a rerun skips what is described.

Costs are bounded: an object larger than :data:`BYTES_PER_PIXEL` bytes per allowed pixel is
refused as ``too_large`` from its listed size, before any byte is downloaded, and every
request has a connect and a request timeout and a few retries (an endpoint that does not
answer fails the run in seconds, not after minutes of retries).

S3 credentials are whatever pyarrow's S3 filesystem reads (``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance role); an S3-compatible server
(MinIO, Ceph) is named by ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, which this module
reads itself (the pyarrow in use does not).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from app.errors import SagashiError
from app.tagger.errors import ImageDecodeError
from indexer.readers import read_in_threads
from indexer.reading import Read, ReadSpec, decode_bytes
from indexer.scan import Found, Problem, has_image_extension

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
CONNECT_TIMEOUT = 5.0  # seconds to open a connection
REQUEST_TIMEOUT = 60.0  # seconds for one request (an object of tens of MB on a slow link)
ATTEMPTS = 3  # tries of one request, the first included
# The largest object read: 16-bit RGBA uncompressed is 8 bytes a pixel, so no image within
# SAGASHI_MAX_IMAGE_PIXELS needs more; bigger objects are refused before they are downloaded.
BYTES_PER_PIXEL = 8


class ObjectStoreError(SagashiError):
    """A source URI cannot be used (bad, unreachable, nothing there); one line says why."""

    http_status = 400
    error_code = "object_store"


def is_uri(source: str) -> bool:
    """Whether a source names an object store (``scheme://...``) rather than a local path."""
    return bool(URI.match(source))


@dataclass(frozen=True)
class Store:
    """One source on an object store: its URI, its filesystem and the path within it."""

    uri: str
    filesystem: Any  # a pyarrow.fs.FileSystem (picklable: it travels to the Ray workers)
    path: str

    def uri_of(self, path: str) -> str:
        """An object's URI from its filesystem path (``bucket/key`` -> ``s3://bucket/key``)."""
        return f"{urlsplit(self.uri).scheme}://{path}"


def open_store(uri: str) -> Store:
    """The source's filesystem, with bounded timeouts and retries where pyarrow has them."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    uri = uri.rstrip("/")
    try:
        scheme = urlsplit(uri).scheme
        if scheme == "s3":
            filesystem, path = _s3(uri)
        elif scheme in ("gs", "gcs"):
            filesystem, path = _gcs(uri)
        else:
            filesystem, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise ObjectStoreError(f"cannot use {uri}: {_first_line(exc)}") from None
    except OSError as exc:
        raise ObjectStoreError(f"cannot reach {uri}: {_first_line(exc)}") from None
    return Store(uri, filesystem, path)


def _s3(uri: str) -> tuple[Any, str]:
    """An S3 filesystem with timeouts and few retries, the endpoint from the environment
    (a bucket's region is asked of AWS only when no endpoint or region is set)."""
    import pyarrow.fs as pafs

    parts = urlsplit(uri)
    if not parts.netloc:
        raise ValueError("no bucket in the URI (s3://BUCKET/PREFIX)")
    if parts.query:
        raise ValueError(
            "options in an s3:// URI are not read: set AWS_ENDPOINT_URL, AWS_REGION instead"
        )
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region is None:
        region = "us-east-1" if endpoint else pafs.resolve_s3_region(parts.netloc)
    filesystem = pafs.S3FileSystem(
        region=region,
        endpoint_override=endpoint,
        connect_timeout=CONNECT_TIMEOUT,
        request_timeout=REQUEST_TIMEOUT,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS),
    )
    return filesystem, f"{parts.netloc}{parts.path}".rstrip("/")


def _gcs(uri: str) -> tuple[Any, str]:
    """A GCS filesystem whose retries stop after :data:`REQUEST_TIMEOUT` (pyarrow's default
    retries for 15 minutes)."""
    from datetime import timedelta

    import pyarrow.fs as pafs

    parts = urlsplit(uri)
    if not parts.netloc or parts.query:
        raise ValueError("use gs://BUCKET/PREFIX, without options")
    filesystem = pafs.GcsFileSystem(retry_time_limit=timedelta(seconds=REQUEST_TIMEOUT))
    return filesystem, f"{parts.netloc}{parts.path}".rstrip("/")


def check_store(store: Store) -> None:
    """Refuse, in one line, a source with nothing at it or an endpoint that does not answer."""
    import pyarrow.fs as pafs

    try:
        info = store.filesystem.get_file_info(store.path)
    except OSError as exc:
        raise ObjectStoreError(f"cannot reach {store.uri}: {_first_line(exc)}") from None
    if info.type == pafs.FileType.NotFound:
        raise ObjectStoreError(f"nothing at {store.uri} (no such bucket, object or prefix)")


def list_objects(store: Store) -> Iterator[Found | Problem]:
    """The images under the source, sorted by URI; a named object is kept whatever its
    extension (as a named local file is); a listing that fails is one problem."""
    import pyarrow.fs as pafs

    try:
        info = store.filesystem.get_file_info(store.path)
        if info.type == pafs.FileType.File:
            yield Found(store.uri_of(info.path), info.size, info.mtime_ns)
            return
        selector = pafs.FileSelector(store.path, recursive=True)
        infos = store.filesystem.get_file_info(selector)
    except OSError as exc:
        yield Problem(store.uri, "unreadable", f"cannot list: {_first_line(exc)}")
        return
    files = [i for i in infos if i.type == pafs.FileType.File and has_image_extension(i.path)]
    for item in sorted(files, key=lambda i: i.path):
        yield Found(store.uri_of(item.path), item.size, item.mtime_ns)


@dataclass(frozen=True)
class ObjectReader:
    """Reads an object by its URI through the filesystem of the source it was listed under.
    Picklable (the filesystems are), so it goes to the Ray workers as it is."""

    stores: tuple[Store, ...]

    def read(self, spec: ReadSpec, uri: str, expect: tuple[int, int] | None) -> Read:
        """The object read whole and decoded as a local file is; ``expect`` is the listed
        (size, mtime_ns): an object over the byte limit is refused before its download, and
        one that differs from the listing (replaced since) is skipped as ``changed``."""
        read = Read(uri)
        store = self._store(uri)
        if expect is not None:
            read.size, read.mtime_ns = expect
            limit = spec.max_pixels * BYTES_PER_PIXEL
            if expect[0] > limit:
                read.error = ImageDecodeError(
                    "too_large",
                    f"object is {expect[0]:,} bytes, over the limit of {limit:,} "
                    f"({BYTES_PER_PIXEL} bytes per pixel of SAGASHI_MAX_IMAGE_PIXELS); "
                    "not downloaded",
                )
                return read
        try:
            data = self._download(store, uri)
        except FileNotFoundError:
            read.error = ImageDecodeError("not_found", "object vanished since it was listed")
            return read
        except OSError as exc:
            read.error = ImageDecodeError("unreadable", f"cannot read object: {_first_line(exc)}")
            return read
        if expect is not None and len(data) != expect[0]:
            read.error = ImageDecodeError(
                "changed", "object changed since it was listed; it will be tagged on a rerun"
            )
            return read
        read.size = len(data)
        return decode_bytes(spec, read, data)

    def _store(self, uri: str) -> Store:
        return max(
            (s for s in self.stores if uri == s.uri or uri.startswith(s.uri.rstrip("/") + "/")),
            key=lambda s: len(s.uri),
            default=self.stores[0],
        )

    @staticmethod
    def _download(store: Store, uri: str) -> bytes:
        path = uri.split("://", 1)[1]  # the inverse of Store.uri_of
        with store.filesystem.open_input_stream(path) as stream:
            data: bytes = stream.read()
        return data


class ObjectReaders:
    """The in-process readers for objects: reader threads, in input order (as
    :class:`indexer.readers.ThreadReaders` for files); network reads leave the GIL free."""

    def __init__(self, reader: ObjectReader, spec: ReadSpec, workers: int) -> None:
        self.reader, self.spec, self.workers = reader, spec, max(1, workers)

    def map(self, tasks: Iterable[tuple[str, tuple[int, int] | None]]) -> Iterator[Read]:
        def read(task: tuple[str, tuple[int, int] | None]) -> Read:
            return self.reader.read(self.spec, *task)

        return read_in_threads(read, tasks, self.workers, self.workers * 2, "sagashi-object")


def open_stores(uris: Sequence[str]) -> ObjectReader:
    """Each source opened and checked, before any model is loaded; refusals are one line."""
    stores = tuple(open_store(uri) for uri in uris)
    for store in stores:
        check_store(store)
    return ObjectReader(stores)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
