"""Segment sets on disk: the posting engine's state in flat files that are memory-mapped,
not parsed, so a process opens a million images in about the time it takes to map them, and
every server worker shares one copy in the page cache.

A set is a folder of ``.npy`` arrays (postings of every tag in score order, the per-image
columns that metatags and orders read, the sha256 index, the paths) and a ``manifest.json``
naming the format, the generation, the change-log position the set covers, and each file's
size and xxHash3-64 checksum. Sets are immutable and derived: one that is missing,
truncated, flipped, from another generation or another format is refused
(:class:`SegmentError`) and rebuilt from the database by the caller.

On top of the bulk set, ``CURRENT`` may list *delta segments*, as Lucene does: folders of the
same arrays holding the current state of the images changed between two change-log
positions, plus ``superseded.npy``, those images' ids, which every older segment drops. So a
large delta is mapped at open instead of read back from the database (see
app.search.segment_deltas for when they are written and folded).

At open, every file's size is checked, and every file's checksum except the postings'
(:data:`DEFERRED`, three quarters of a set's bytes): those are left to :class:`Deferred`,
which a server runs in the background once it is ready (app.search.segment_checks).

Writes are atomic: a set is written into a temporary folder, synced and renamed, then the
``CURRENT`` pointer is replaced. A reader that opened an older set keeps its mappings (the
files are only unlinked); a failed write (a full disk) leaves the current set as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import mmap
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from pyroaring import BitMap

from app.atomic_files import fsync_dir, write_atomic
from app.errors import SagashiError
from app.search.bitmaps import bitmap_of
from app.search.plan import PTag
from app.search.postings import Attributes, PathTable, Postings, Segment
from app.text import plural

log = logging.getLogger(__name__)

FORMAT = 4  # bump whenever a file's layout or meaning changes: older sets are rebuilt
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
LOCK = "write.lock"
SUPERSEDED = "superseded"
# The files whose checksums are verified after the start instead of at open: the postings,
# the bulk of a set (480 of 655 MB at 1M images). Their sizes are checked at open.
DEFERRED = frozenset({"posting_ids.npy", "posting_neg_scores.npy"})
COLUMNS = ("id", "width", "height", "size_bytes", "mpixels", "ratio", "indexed_us")


class SegmentError(SagashiError):
    """A segment set that cannot be used; the message says why (for the log)."""

    http_status = 500
    error_code = "segments_unusable"


@dataclass(frozen=True)
class DeltaInfo:
    """A delta segment: the current state of the images changed after ``base_seq`` up to
    ``seq`` (``changed`` of them; ``images`` still live)."""

    name: str
    base_seq: int
    seq: int
    images: int
    changed: int


@dataclass(frozen=True)
class SetInfo:
    """A bulk set (its own ``seq`` and ``images``) and the delta segments on top of it."""

    name: str
    generation_id: int
    seq: int
    images: int
    deltas: tuple[DeltaInfo, ...] = ()

    @property
    def covered(self) -> int:
        """The change-log position the set and its deltas cover."""
        return self.deltas[-1].seq if self.deltas else self.seq

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *(d.name for d in self.deltas))


@dataclass(frozen=True)
class Check:
    """A file whose checksum is still to be verified."""

    path: Path
    xxh3: int

    def problem(self) -> str | None:
        """Why the file is not the one written, or None."""
        try:
            if _digest(self.path) != self.xxh3:
                return f"{self.path.parent.name}/{self.path.name} fails its checksum"
        except OSError as exc:
            return f"{self.path.parent.name}/{self.path.name} cannot be read: {exc}"
        return None


@dataclass
class Mapped:
    """A set as mapped: the bulk segment and the delta segments as stored (each delta's
    ``superseded`` images not yet dropped from the older ones), and the checksums left to
    verify."""

    info: SetInfo
    segments: list[Segment]
    superseded: list[BitMap]
    deferred: list[Check]

    def composed(self) -> list[Segment]:
        """The segments as an engine holds them: each without the images a later delta
        supersedes."""
        composed: list[Segment] = []
        for i, segment in enumerate(self.segments):
            later = self.superseded[i:]
            composed.append(segment.without(BitMap.union(*later)) if later else segment)
        return composed


class PrebuiltBitmaps(dict[PTag, BitMap]):
    """The default-threshold bitmaps of common tags, stored serialized in the set and
    deserialized on first use (a worker pays only for the tags its queries touch)."""

    def __init__(self, index: dict[PTag, tuple[int, int]], blob: np.ndarray) -> None:
        super().__init__()
        self._index = index
        self._blob = blob

    def __iter__(self) -> Iterator[PTag]:
        return iter(self._index.keys() | self.keys())

    def get(self, key: PTag, default: BitMap | None = None) -> BitMap | None:  # type: ignore[override]
        found = super().get(key)
        if found is None and key in self._index:
            start, end = self._index[key]
            found = BitMap.deserialize(bytes(self._blob[start:end]))
            self[key] = found
        return found if found is not None else default


class SegmentStore:
    """The segment sets of one generation, in ``root/g<generation>/``."""

    def __init__(self, root: Path, generation_id: int) -> None:
        self.generation_id = generation_id
        self.root = root
        self.folder = root / f"g{generation_id}"

    @contextlib.contextmanager
    def writer_lock(self, wait: bool = True) -> Iterator[bool]:
        """One writer at a time across processes (server workers, merges, the indexer).
        Yields True once held; with ``wait=False``, False at once when another holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / LOCK, "a+b") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def current(self) -> SetInfo | None:
        """What ``CURRENT`` points at, without checking the files (None when absent)."""
        try:
            pointer = json.loads((self.folder / CURRENT).read_text())
            manifest = json.loads((self.folder / pointer["set"] / MANIFEST).read_text())
            deltas = [self._delta_info(name) for name in pointer.get("deltas", [])]
            return _info(pointer["set"], manifest, tuple(deltas))
        except (OSError, ValueError, KeyError, TypeError, SegmentError):
            return None

    def _delta_info(self, name: str) -> DeltaInfo:
        manifest = _manifest(self.folder / name)
        return DeltaInfo(
            name,
            int(manifest["base_seq"]),
            int(manifest["seq"]),
            int(manifest["images"]),
            int(manifest["changed"]),
        )

    def _pointer(self) -> dict[str, Any]:
        try:
            pointer: dict[str, Any] = json.loads((self.folder / CURRENT).read_text())
            str(pointer["set"])
            [str(name) for name in pointer.get("deltas", [])]
            return pointer
        except FileNotFoundError as exc:
            raise SegmentError(f"no segment set for generation {self.generation_id}") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SegmentError(f"unreadable {CURRENT} pointer: {exc}") from exc

    def read(self, tag_groups: dict[int, int]) -> tuple[Segment, SetInfo]:
        """The current bulk set alone, every file checked in full, and mapped; raises
        SegmentError."""
        name = str(self._pointer()["set"])
        manifest = self._checked_manifest(name)
        deferred = _check_files(self.folder / name, manifest["files"])
        for check in deferred:
            if (problem := check.problem()) is not None:
                raise SegmentError(problem)
        return _segment(self.folder / name, manifest, tag_groups), _info(name, manifest)

    def read_all(self, tag_groups: dict[int, int], known: Mapped | None = None) -> Mapped:
        """The current set and its deltas, mapped, their sizes and all but the
        :data:`DEFERRED` checksums checked (those of segments ``known`` already holds are
        not checked or mapped again); raises SegmentError."""
        pointer = self._pointer()
        names = [str(pointer["set"]), *(str(n) for n in pointer.get("deltas", []))]
        held = dict(zip(known.info.names, known.segments, strict=True)) if known else {}
        gone = dict(zip(known.info.names[1:], known.superseded, strict=True)) if known else {}
        segments, superseded, deferred, deltas = [], [], [], []
        base_seq = -1
        for position, name in enumerate(names):
            manifest = self._checked_manifest(name)
            if position and int(manifest.get("base_seq", -1)) != base_seq:
                raise SegmentError(f"delta {name} does not follow the segment before it")
            base_seq = int(manifest["seq"])
            if name in held:
                segments.append(held[name])
            else:
                deferred += _check_files(self.folder / name, manifest["files"])
                segments.append(_segment(self.folder / name, manifest, tag_groups))
            if position:
                deltas.append(self._delta_info(name))
                superseded.append(gone.get(name) or _superseded(self.folder / name))
        bulk = _manifest(self.folder / names[0])
        info = _info(names[0], bulk, tuple(deltas))
        return Mapped(info, segments, superseded, deferred)

    def _checked_manifest(self, name: str) -> dict[str, Any]:
        manifest = _manifest(self.folder / name)
        if manifest.get("format") != FORMAT:
            found = manifest.get("format")
            raise SegmentError(f"set {name} has format {found}, this code reads {FORMAT}")
        if manifest.get("generation_id") != self.generation_id:
            raise SegmentError(f"set {name} belongs to another generation")
        return manifest

    def write(self, segment: Segment, seq: int) -> SetInfo:
        """Write ``segment`` (covering changes up to ``seq``) as the new current set. The
        caller holds :meth:`writer_lock`. On failure the current set is left as it was."""
        return self.publish(seq, lambda staging: _write_segment(staging, segment))

    def publish(self, seq: int, fill: Callable[[Path], Written]) -> SetInfo:
        """Make a set as ``fill`` writes it into a staging folder (its ``.npy`` files, each
        synced) and make it the current one, atomically (see :meth:`write`)."""
        name = f"set-{seq:012d}-{uuid.uuid4().hex[:8]}"
        manifest = self._published(name, {"seq": seq}, fill, lambda: {"set": name})
        images = plural(int(manifest["images"]), "image")
        log.info("wrote segment set %s: %s up to change %d", name, images, seq)
        return _info(name, manifest)

    def publish_delta(
        self, base_seq: int, seq: int, keep: int, superseded: BitMap, segment: Segment
    ) -> SetInfo:
        """Write ``segment`` (the images changed after ``base_seq`` up to ``seq``, less
        those gone) as a delta segment on top of the current set's first ``keep`` deltas,
        which it then follows, atomically; the caller holds :meth:`writer_lock`."""
        pointer = self._pointer()
        kept = [str(n) for n in pointer.get("deltas", [])][:keep]
        name = f"delta-{seq:012d}-{uuid.uuid4().hex[:8]}"

        def fill(staging: Path) -> Written:
            save_array(staging / f"{SUPERSEDED}.npy", np.array(superseded, dtype=np.uint32))
            return _write_segment(staging, segment)

        extra = {"seq": seq, "base_seq": base_seq, "changed": len(superseded)}
        self._published(name, extra, fill, lambda: {"set": pointer["set"], "deltas": [*kept, name]})
        info = self.current()
        if info is None or info.deltas[-1].name != name:
            raise SegmentError(f"delta {name} was written but is not current")
        log.info(
            "wrote delta segment %s: %s changed after change %d up to %d, on %s",
            name,
            plural(len(superseded), "image"),
            base_seq,
            seq,
            plural(len(kept), "older delta"),
        )
        return info

    def _published(
        self,
        name: str,
        extra: dict[str, int],
        fill: Callable[[Path], Written],
        pointer: Callable[[], dict[str, Any]],
    ) -> dict[str, Any]:
        """Write a segment folder and point ``CURRENT`` at what ``pointer`` says."""
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = self.folder / f".tmp-{name}"
        try:
            staging.mkdir(parents=True)
            written = fill(staging)
            manifest = {
                "format": FORMAT,
                "generation_id": self.generation_id,
                **extra,
                "images": written.images,
                "format_names": written.format_names,
                "files": {path.name: _file_entry(path) for path in sorted(staging.iterdir())},
            }
            # The manifest, then the folder's name, then the pointer, each made durable
            # before the next (the arrays are checked against the manifest's checksums).
            write_atomic(staging / MANIFEST, json.dumps(manifest).encode())
            os.rename(staging, self.folder / name)
            fsync_dir(self.folder)
            current = pointer()
            write_atomic(self.folder / CURRENT, json.dumps(current).encode())
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(self.folder / name, ignore_errors=True)
            raise
        self._remove_others({str(current["set"]), *current.get("deltas", [])})
        return manifest

    def _remove_others(self, keep: set[str]) -> None:
        # Readers that mapped an older set keep reading it: unlinking does not unmap.
        for entry in self.folder.iterdir():
            if entry.is_dir() and entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)


def _info(name: str, manifest: dict[str, Any], deltas: tuple[DeltaInfo, ...] = ()) -> SetInfo:
    return SetInfo(
        name,
        int(manifest["generation_id"]),
        int(manifest["seq"]),
        int(manifest["images"]),
        deltas,
    )


def _superseded(folder: Path) -> BitMap:
    try:
        ids = np.load(folder / f"{SUPERSEDED}.npy", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SegmentError(f"{folder.name}/{SUPERSEDED}.npy cannot be read: {exc}") from exc
    return bitmap_of(ids, presorted=True)


def _manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise SegmentError(f"set {folder.name} has no readable manifest: {exc}") from exc
    if not isinstance(manifest.get("files"), dict):
        raise SegmentError(f"set {folder.name}'s manifest lists no files")
    return manifest


def _check_files(folder: Path, files: dict[str, Any]) -> list[Check]:
    """Every file's size (a truncated file costs nothing to find), then the checksum of every
    file but the :data:`DEFERRED` ones, whose checks are returned."""
    for name, expected in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise SegmentError(f"{folder.name}/{name} is missing: {exc}") from exc
        if size != expected["bytes"]:
            raise SegmentError(f"{folder.name}/{name} has {size} bytes, not {expected['bytes']}")
    checks = [Check(folder / name, int(expected["xxh3"])) for name, expected in files.items()]
    for check in checks:
        if check.path.name not in DEFERRED and (problem := check.problem()) is not None:
            raise SegmentError(problem)
    return [check for check in checks if check.path.name in DEFERRED]


def _digest(path: Path) -> int:
    """xxHash3-64 of the file, hashed from a read-only mapping: no copy, about 15 GB/s from
    the page cache (CRC-32 read through Python took 0.53 s for a 1M-image set, this 0.04 s),
    and the pages it touches are the ones the engine reads next."""
    with open(path, "rb") as stream:
        if os.fstat(stream.fileno()).st_size == 0:
            return xxhash.xxh3_64_intdigest(b"")
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return xxhash.xxh3_64_intdigest(mapped)


def _arrays(segment: Segment) -> dict[str, np.ndarray]:
    """Every array of a segment, by file name."""
    tag_ids = np.array(sorted(segment.postings), dtype=np.int64)
    lengths = [len(segment.postings[int(t)].ids) for t in tag_ids]
    offsets = np.zeros(len(tag_ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    posting_ids = [segment.postings[int(t)].ids for t in tag_ids]
    posting_neg = [segment.postings[int(t)].neg_scores for t in tag_ids]
    return {
        "tag_ids": tag_ids,
        "tag_offsets": offsets,
        "posting_ids": _joined(posting_ids, np.uint32),
        "posting_neg_scores": _joined(posting_neg, np.float32),
        **image_arrays(segment.live, segment.attributes, segment.tag_groups),
        **prebuilt_arrays(segment),
    }


def image_arrays(
    live: BitMap, attributes: Attributes, tag_groups: dict[int, int]
) -> dict[str, np.ndarray]:
    """The arrays of a set besides the postings and the prebuilt bitmaps."""
    paths = attributes.paths
    if isinstance(paths, PathTable):
        blob, path_offsets = paths.blob, paths.offsets.astype(np.int64)
    else:
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        path_offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in encoded], out=path_offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    groups = sorted(tag_groups.items())
    arrays: dict[str, np.ndarray] = {
        "live": np.frombuffer(live.to_array(), dtype=np.uint32),
        "group_tags": np.array([t for t, _ in groups], dtype=np.int64),
        "group_codes": np.array([g for _, g in groups], dtype=np.int64),
        "image_ids": attributes.ids.astype(np.uint32),
        "sha_keys": attributes.sha_keys,
        "sha_ids": attributes.sha_ids.astype(np.uint32),
        "md5_keys": attributes.md5_keys,
        "md5_ids": attributes.md5_ids.astype(np.uint32),
        "format_codes": attributes.format_codes.astype(np.uint16),
        "path_offsets": path_offsets,
        "paths": blob,
    }
    for column in COLUMNS:
        arrays[f"column_{column}"] = attributes.columns[column]
    return arrays


def prebuilt_arrays(segment: Segment) -> dict[str, np.ndarray]:
    plans = [plan for plan in segment.prebuilt_plans() if plan.hi is None and plan.lo_inclusive]
    blobs = [segment.prebuilt(plan).serialize() for plan in plans]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    return {
        "prebuilt_tags": np.array([p.tag_id for p in plans], dtype=np.int64),
        "prebuilt_thresholds": np.array([p.lo for p in plans], dtype=np.float64),
        "prebuilt_offsets": offsets,
        "prebuilt": np.frombuffer(b"".join(blobs), dtype=np.uint8),
    }


def _prebuilt(load: Callable[[str], np.ndarray]) -> PrebuiltBitmaps:
    tags, thresholds = load("prebuilt_tags").tolist(), load("prebuilt_thresholds").tolist()
    offsets = load("prebuilt_offsets").tolist()
    index = {
        PTag(int(tag), float(threshold)): (offsets[i], offsets[i + 1])
        for i, (tag, threshold) in enumerate(zip(tags, thresholds, strict=True))
    }
    return PrebuiltBitmaps(index, load("prebuilt"))


def _joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)


@dataclass(frozen=True)
class Written:
    """What a set's manifest says besides its files."""

    images: int
    format_names: list[str]


def _write_segment(staging: Path, segment: Segment) -> Written:
    for name, array in _arrays(segment).items():
        save_array(staging / f"{name}.npy", array)
    return Written(len(segment.live), segment.attributes.format_names)


def save_array(path: Path, array: np.ndarray) -> None:
    """One array of a set, as a synced ``.npy`` file."""
    with open(path, "wb") as stream:
        np.save(stream, np.ascontiguousarray(array), allow_pickle=False)
        stream.flush()
        os.fsync(stream.fileno())


def _file_entry(path: Path) -> dict[str, int]:
    return {"bytes": path.stat().st_size, "xxh3": _digest(path)}


def _segment(folder: Path, manifest: dict[str, Any], tag_groups: dict[int, int]) -> Segment:
    def load(name: str) -> np.ndarray:
        try:
            mapped = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SegmentError(f"{folder.name}/{name}.npy cannot be mapped: {exc}") from exc
        # A plain ndarray over the same mapping (it keeps the mapping alive): numpy.memmap's
        # own __getitem__ and __array_finalize__ cost microseconds an index or slice, 0.2 s
        # to slice 13k tags' postings at open and a fifth of a tag query's time at 1M.
        plain: np.ndarray = mapped.view(np.ndarray)
        return plain

    tag_ids, offsets = load("tag_ids"), load("tag_offsets")
    posting_ids, posting_neg = load("posting_ids"), load("posting_neg_scores")
    if len(offsets) != len(tag_ids) + 1 or int(offsets[-1]) != len(posting_ids):
        raise SegmentError(f"set {folder.name}: the posting offsets do not match the postings")
    postings = {
        int(tag): Postings(posting_ids[start:end], posting_neg[start:end])
        for tag, start, end in zip(
            tag_ids.tolist(), offsets[:-1].tolist(), offsets[1:].tolist(), strict=True
        )
    }
    attributes = Attributes(
        ids=load("image_ids"),
        columns={column: load(f"column_{column}") for column in COLUMNS},
        sha_keys=load("sha_keys"),
        sha_ids=load("sha_ids"),
        md5_keys=load("md5_keys"),
        md5_ids=load("md5_ids"),
        format_codes=load("format_codes"),
        format_names=[str(name) for name in manifest["format_names"]],
        paths=PathTable(load("paths"), load("path_offsets")),
    )
    stored_groups = dict(
        zip(load("group_tags").tolist(), load("group_codes").tolist(), strict=True)
    )
    live: BitMap = bitmap_of(load("live"), presorted=True)
    segment = Segment(live, postings, attributes, {**stored_groups, **tag_groups})
    segment.use_prebuilt(_prebuilt(load))
    return segment
