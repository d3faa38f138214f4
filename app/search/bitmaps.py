"""Roaring bitmaps from numpy arrays of image ids, built the fast way."""

from __future__ import annotations

import array

import numpy as np
from pyroaring import BitMap


def bitmap_of(ids: np.ndarray, presorted: bool = False) -> BitMap:
    """A roaring bitmap of uint32 ids. Built from a sorted ``array.array`` it takes ~9 ms for
    400k ids; pyroaring iterates a numpy array element by element (~120 ms)."""
    values = np.asarray(ids, dtype=np.uint32)
    if not presorted:
        values = np.sort(values)
    buffer = array.array("I")
    buffer.frombytes(values.tobytes())
    return BitMap(buffer)
