"""The reading half of a large ``sagashi import``, run as a child process.

    python -m indexer.import_reader   (started by :func:`indexer.importer.prepared_in_child`)

It takes ``(path, embeddings, options, known tag names)`` as one pickle on stdin, and
answers on stdout with a stream of pickled ``(kind, payload)`` messages: ``item`` for each
thing :func:`indexer.importer.prepare` yields, then ``end``; or ``error`` (a file-level
error, raised again by the parent as :class:`~indexer.importer.ImportError_`) or ``crash``
(a traceback). A full pipe blocks it, so it reads at most about a batch ahead of the
writer, and a parent that dies breaks the pipe, which ends it.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from typing import BinaryIO

from indexer.importer import ImportError_, prepare, read_rows


def _send(channel: BinaryIO, kind: str, payload: object) -> None:
    pickle.dump((kind, payload), channel, protocol=pickle.HIGHEST_PROTOCOL)
    channel.flush()


def main() -> None:
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the channel
    path, embeddings, options, known = pickle.load(sys.stdin.buffer)
    try:
        for item in prepare(read_rows(path, embeddings), options, known):
            _send(channel, "item", item)
        _send(channel, "end", None)
    except BrokenPipeError:
        sys.exit(1)  # the importer is gone
    except ImportError_ as exc:
        _send(channel, "error", str(exc))
    except BaseException:  # reported to the parent, which raises it
        _send(channel, "crash", traceback.format_exc())


if __name__ == "__main__":
    main()
