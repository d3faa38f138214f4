"""A generation's segment set written straight from the database, tag by tag.

The set of a whole generation used to be built as a :class:`Segment` in memory (every
posting of every tag) and then copied into one array per file: the postings were held
twice, 0.96 GB at 1M images and ten times that at 10M. Here each tag's postings go into the
files as the database hands them over (in the posting key's order), so the build holds one
tag's postings and one block of rows; the per-image arrays and the prebuilt bitmaps (read
back from the written, mapped postings) come after. The files are the ones
:meth:`SegmentStore.write` would write for the same data, byte for byte (tested).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
from sqlalchemy.orm import Session

from app.search.postings import (
    PREBUILD_THRESHOLDS,
    Postings,
    Segment,
    generation_attributes,
    generation_images,
    generation_postings,
    tag_groups,
)
from app.search.segment_files import (
    SegmentStore,
    SetInfo,
    Written,
    image_arrays,
    prebuilt_arrays,
    save_array,
)

# An .npy header of a 1-D array is 128 bytes (padded to 64) for any length below 10**20:
# the files are written with room for it and the header filled in once the length is known.
HEADER_BYTES = 128


def build_from_database(store: SegmentStore, session: Session, seq: int) -> SetInfo:
    """Write the generation's set from the database as the current one (the caller holds
    the store's writer lock; ``seq`` is the change-log position read before the build)."""
    groups = tag_groups(session)
    live, attributes = generation_attributes(
        session, generation_images(session, store.generation_id)
    )

    def fill(staging: Path) -> Written:
        _write_postings(staging, generation_postings(session, store.generation_id))
        for name, array in image_arrays(live, attributes, groups).items():
            save_array(staging / f"{name}.npy", array)
        segment = Segment(live, _mapped_postings(staging), attributes, groups)
        segment.prebuild(PREBUILD_THRESHOLDS)
        for name, array in prebuilt_arrays(segment).items():
            save_array(staging / f"{name}.npy", array)
        return Written(len(live), attributes.format_names)

    return store.publish(seq, fill)


def _write_postings(staging: Path, postings: Iterator[tuple[int, Postings]]) -> None:
    """posting_ids, posting_neg_scores, tag_ids and tag_offsets, one tag at a time."""
    tag_ids: list[int] = []
    offsets = [0]
    with (
        _Streamed(staging / "posting_ids.npy", np.uint32) as ids,
        _Streamed(staging / "posting_neg_scores.npy", np.float32) as neg,
    ):
        for tag, tag_postings in postings:
            ids.append(tag_postings.ids)
            neg.append(tag_postings.neg_scores)
            tag_ids.append(tag)
            offsets.append(offsets[-1] + len(tag_postings.ids))
    save_array(staging / "tag_ids.npy", np.array(tag_ids, dtype=np.int64))
    save_array(staging / "tag_offsets.npy", np.array(offsets, dtype=np.int64))


def _mapped_postings(staging: Path) -> dict[int, Postings]:
    def load(name: str) -> np.ndarray:
        mapped: np.ndarray = np.load(staging / f"{name}.npy", mmap_mode="r").view(np.ndarray)
        return mapped

    ids, neg = load("posting_ids"), load("posting_neg_scores")
    offsets = load("tag_offsets").tolist()
    return {
        int(tag): Postings(ids[start:end], neg[start:end])
        for tag, start, end in zip(load("tag_ids").tolist(), offsets[:-1], offsets[1:], strict=True)
    }


class _Streamed:
    """A 1-D ``.npy`` file written in pieces: room for the header first, the data as it
    comes, the header (with the final length) last, then synced."""

    def __init__(self, path: Path, dtype: type) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.count = 0
        self.stream: IO[bytes] = open(path, "wb")  # noqa: SIM115 (closed in __exit__)

    def __enter__(self) -> _Streamed:
        self.stream.write(bytes(HEADER_BYTES))
        return self

    def append(self, values: np.ndarray) -> None:
        self.stream.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.count += len(values)

    def __exit__(self, kind: object, *rest: object) -> None:
        try:
            if kind is None:
                self.stream.seek(0)
                self.stream.write(_header(self.dtype, self.count))
                self.stream.flush()
                os.fsync(self.stream.fileno())
        finally:
            self.stream.close()


def _header(dtype: np.dtype, count: int) -> bytes:
    buffer = io.BytesIO()
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": (count,),
    }
    np.lib.format.write_array_header_1_0(buffer, header)
    data = buffer.getvalue()
    if len(data) != HEADER_BYTES:  # a layout numpy never produces for 1-D arrays
        raise ValueError(f".npy header of {len(data)} bytes, expected {HEADER_BYTES}")
    return data
