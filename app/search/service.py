"""One search, end to end: parse, bind to the active generation, execute on the posting
engine (or SQL), order and page the matches, and fetch the page's rows.

A :class:`SearchService` is long-lived (the server keeps one; the CLI makes one per run). It
holds the in-memory state of the active generation (the tag catalog, the posting engine and
the FAISS index) and brings it up to date before each search: a new generation is loaded
in full, new changes are applied incrementally, and a FAISS file that a writer rewrote is
reloaded. It is safe to call from several threads.
"""

from __future__ import annotations

import gc
import logging
import math
import secrets
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from pyroaring import BitMap
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from app.errors import SagashiError
from app.query import MAX_TERMS, All, ErrorCode, Order, Query, QueryError, parse
from app.query.ast import Node
from app.search import similar
from app.search.binder import Binder
from app.search.catalog import Catalog
from app.search.engine import TagEngine, open_engine
from app.search.paging import DEFAULT_ORDER, Cursor, KeySource, cursor_after, page
from app.search.plan import COUNTED_GROUPS
from app.search.postings import latest_change
from app.store import vectors
from app.store.db import session_factory
from app.store.models import Embedding, Tag
from app.store.repository import active_generation, decode_vectors, index_version
from app.store.vectors import OPENING
from app.tagger.defaults import CARD
from app.tagger.vocab import GROUPS
from app.tagrules.implications import Implications, packaged_implications

log = logging.getLogger(__name__)

EngineKind = Literal["memory", "segments", "sql"]
MAX_SIMILAR_RESULTS = 1000
DEFAULT_DUPLICATE_SIMILARITY = 0.98


class EmptyIndex(SagashiError):
    """There is no active generation to search."""

    http_status = 404
    error_code = "empty_index"


class NotFound(SagashiError, LookupError):
    """``similar:<id>`` names an image that is not in the index."""

    http_status = 404
    error_code = "not_found"


@dataclass(frozen=True)
class SearchRequest:
    query: str = ""
    limit: int = 40
    cursor: str | None = None
    thresholds: Mapping[str, float] | None = None  # per group; missing groups use defaults
    embedding: np.ndarray | None = None  # "looks like this" (an uploaded image's embedding)
    hide_duplicates: bool = False
    # "Looks like indexed image N", given apart from the query text, which is then a filter
    # of its own: gluing "similar:N" to it as text breaks a filter with a top-level "or".
    similar_to: int | None = None
    # An order given apart from the query text, replacing its order: (Danbooru's a<id> and
    # b<id> pages run by id whatever the query orders by). Not for similarity searches.
    order: Order | None = None
    # Matches passed over before the page (Danbooru's numbered pages): by the bitmap's rank
    # for the id orders, no deeper than that; other orders sort skip + limit.
    skip: int = 0
    # The request's limit wins over the query's limit: (Danbooru's limit parameter does).
    fixed_limit: bool = False


@dataclass(frozen=True)
class Hit:
    id: int
    path: str
    width: int
    height: int
    similarity: float | None = None


@dataclass(frozen=True)
class Page:
    hits: list[Hit]
    count: int  # images matching the filter
    estimated: bool
    next_cursor: str | None
    engine: str
    plan: str | None = None  # the kNN strategy, for similarity searches


@dataclass
class _State:
    generation_id: int
    embedding_dim: int
    seq: int
    catalog: Catalog
    tags: TagEngine  # the tag-query engine, current up to ``seq``
    index: vectors.FaissIndex | None = None
    # The written FAISS files being opened beside the tag engine (prefetch_vectors).
    opening: Future[vectors.FaissIndex | None] | None = None


@dataclass
class SearchService:
    engine: Engine
    data_dir: Path
    aliases: Mapping[str, str]
    kind: EngineKind = "memory"
    duplicate_similarity: float = DEFAULT_DUPLICATE_SIMILARITY
    gather_limit: int = similar.GATHER_LIMIT
    # How stale a search may be: the database is asked for changes at most this often.
    refresh_seconds: float = 1.0
    max_terms: int = MAX_TERMS
    # Open the written FAISS files in a thread while the tag engine opens (a server's
    # start-up: both wait on checksums and page mapping, so they overlap).
    prefetch_vectors: bool = False
    # Per-group thresholds of a term without one (Settings.tag_defaults(): SAGASHI_THRESHOLD_*).
    defaults: Mapping[str, float] = field(default_factory=CARD.thresholds)
    # Query-time implications (SAGASHI_IMPLICATIONS, SAGASHI_IMPLICATION_FILE); None: off.
    implications: Implications | None = field(default_factory=packaged_implications)
    _state: _State | None = field(default=None, repr=False)
    _checked_at: float = field(default=-math.inf, repr=False)
    _sessions: sessionmaker[Session] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _refreshing: bool = field(default=False, repr=False)
    # What the background check of the files found (verify_files), for /readyz.
    files: str = field(default="not verified yet", repr=False)

    def _session(self) -> Session:
        # One sessionmaker: making one per search costs more than a whole in-memory search.
        if self._sessions is None:
            self._sessions = session_factory(self.engine)
        return self._sessions()

    def search(self, request: SearchRequest) -> Page:
        query = _with_similar(parse(request.query, max_terms=self.max_terms), request.similar_to)
        thresholds = self.thresholds(request.thresholds)
        vector_query = query.similar is not None or request.embedding is not None
        order = _check_order(query, request.query, vector_query)
        if request.order is not None:
            if vector_query:
                message = "a similarity search is ordered by similarity"
                raise QueryError(ErrorCode.CONFLICTING_SINGLETON, message, 0)
            order = request.order
        limit = request.limit if request.fixed_limit else query.limit or request.limit
        state = self.current()
        binder = Binder(state.catalog, thresholds)
        plan = binder.bind(query.root)
        with self._session() as session:
            tags = state.tags  # one engine for the whole search, even if refreshed meanwhile
            matches = tags.evaluate(session, plan)
            if vector_query:
                live = tags.live(session)
                return self._similar(session, state, tags, query, request, matches, live, limit)
            keys = self._keys(session, state, tags, order, thresholds)
            cursor = Cursor.decode(request.cursor, order) if request.cursor else None
            walk = tags.presorted()
            skip = request.skip
            if skip and cursor is None and order.key == "id":
                cursor, skip = cursor_after(matches, order, skip), 0
            found = page(matches, order, skip + limit, cursor, keys, secrets.randbits(48), walk)
            hits = _hits(session, tags, found.ids[skip:])
        return Page(hits, len(matches), False, found.next_cursor, tags.name)

    def matching(self, query: str | Node, thresholds: Mapping[str, float] | None = None) -> BitMap:
        """Every image a filter matches: query text (order, limit and similarity ignored)
        or an already parsed node, such as one tag whatever characters its name holds."""
        root = parse(query, max_terms=self.max_terms).root if isinstance(query, str) else query
        state = self.current()
        plan = Binder(state.catalog, self.thresholds(thresholds)).bind(root)
        with self._session() as session:  # opens a connection only for the SQL engine
            return state.tags.evaluate(session, plan)

    def thresholds(self, wanted: Mapping[str, float] | None = None) -> dict[str, float]:
        """Every group's threshold: those ``wanted`` by a request, else the defaults."""
        return {**self.defaults, **(wanted or {})}

    def catalog(self) -> Catalog:
        return self.current().catalog

    def generation_id(self) -> int:
        return self.current().generation_id

    def loaded_images(self) -> int | None:
        """Live images of the loaded generation, without touching the database; None
        before the first load (or with the SQL engine)."""
        state = self._state
        return state.tags.held_images() if state is not None else None

    def reload(self) -> _State:
        """Drop everything held in memory and load the active generation afresh."""
        with self._lock:
            self._state = None
            self._checked_at = -math.inf
        return self.current()

    def current(self) -> _State:
        """The state of the active generation, brought up to date (at most
        ``refresh_seconds`` old). While one thread refreshes, the others keep searching
        the state they have instead of waiting for it; only the first load is waited for."""
        with self._lock:
            state = self._state
            if state is not None and (
                self._refreshing or time.monotonic() - self._checked_at < self.refresh_seconds
            ):
                return state
            self._checked_at = time.monotonic()
            self._refreshing = state is not None
        if state is None:
            with self._lock:
                return self._brought_up_to_date()
        try:
            return self._brought_up_to_date()
        finally:
            self._refreshing = False

    def _brought_up_to_date(self) -> _State:
        with self._session() as session:
            generation = active_generation(session)
            if generation is None:
                raise EmptyIndex("the index is empty; run 'sagashi index' or 'sagashi import'")
            state = self._state
            if state is None or state.generation_id != generation.id:
                state = self._load(session, generation.id, generation.embedding_dim)
            else:
                self._refresh(session, state)
            self._state = state
            return state

    def _load(self, session: Session, generation_id: int, dim: int) -> _State:
        _low, seq = latest_change(session)
        replacing = gc.get_freeze_count() > 0
        gc.unfreeze()
        opening = self._prefetch(session, generation_id) if self.prefetch_vectors else None
        tags = open_engine(self.kind, session, generation_id, self.data_dir)
        catalog = _catalog(session, self.aliases, self.implications)
        state = _State(generation_id, dim, seq, catalog, tags)
        state.opening = opening
        # The engine holds millions of long-lived objects (paths, arrays, bitmaps); a full
        # collection walking them all paused searches for 200 ms at 1M images. Frozen, they
        # are left out of collections (and still freed when the engine is dropped). Before
        # freezing, a first open clears only the young generations (a full collection walks
        # every imported module's objects: 0.14 s of a one-shot 'sagashi search'); a
        # replacement also the cycles of the state it replaces.
        gc.collect(2 if replacing else 1)
        gc.freeze()
        return state

    def _prefetch(self, session: Session, generation_id: int) -> Future[vectors.FaissIndex | None]:
        """Start opening the generation's written FAISS files, if current and intact."""
        version = index_version(session, generation_id)
        pool = ThreadPoolExecutor(1, thread_name_prefix="faiss-open")
        opening = pool.submit(vectors.open_written, self.data_dir, generation_id, version)
        pool.shutdown(wait=False)  # the thread ends with its one task
        return opening

    def _refresh(self, session: Session, state: _State) -> None:
        _low, seq = latest_change(session)
        if seq == state.seq:
            return
        state.tags = state.tags.refreshed(session)
        state.catalog = _catalog(session, self.aliases, self.implications)
        state.seq = seq

    def open_vectors(self, report: vectors.Report | None = None) -> vectors.IndexMeta:
        """Open (or build) the FAISS index and the gather matrix now, so that the first
        similarity search finds them open: a server's start-up. ``report`` is told each
        stage, for /readyz."""
        state = self.current()
        with self._lock, self._session() as session:
            return self._vectors(session, state, report).meta

    def verify_files(self) -> str:
        """Verify the checksums the start left for later (the segment files' postings, the
        FAISS files), so that a start does not read every byte of them; a server runs this
        in the background once ready. A damaged file is logged, searches that would read
        it are refused with a clear error, and it is rebuilt from the database and swapped
        in. Returns what was found, also kept in ``files`` for /readyz."""
        state = self._state
        if state is None:
            return self.files
        self.files = "verifying"
        with self._session() as session:
            found = [self._verified_tags(session, state), self._verified_vectors(state)]
        problems = [p for p in found if p is not None]
        self.files = f"rebuilt: {'; '.join(problems)}" if problems else "verified"
        return self.files

    def _verified_tags(self, session: Session, state: _State) -> str | None:
        tags = state.tags
        found = tags.verify(session)
        if found is not None:
            self.files = f"damaged, rebuilding: {found}"
            repaired = tags.refreshed(session)
            with self._lock:
                if state.tags is tags:
                    state.tags = repaired
        return found

    def _verified_vectors(self, state: _State) -> str | None:
        index = state.index
        found = index.verify() if index is not None else None
        if found is not None:
            generation = state.generation_id
            log.error("FAISS index for generation %d: %s; rebuilding", generation, found)
            self.files = f"damaged, rebuilding: {found}"
            rebuilt = vectors.load_fresh(
                self.engine, self.data_dir, generation, keep_unwritten=True, written_failed=True
            )
            with self._lock:
                if state.index is index:
                    state.index = rebuilt
        return found

    def opened_vectors(self) -> vectors.IndexMeta | None:
        """What the open FAISS index holds, without touching anything; None before it is
        opened."""
        state = self._state
        return state.index.meta if state is not None and state.index is not None else None

    def _vectors(
        self, session: Session, state: _State, report: vectors.Report | None = None
    ) -> vectors.FaissIndex:
        """The FAISS index: loaded (or built) once, then reloaded when a writer has written
        a newer file. Until then the older one serves, filtered by the live images."""
        version = index_version(session, state.generation_id)
        tried = False
        if state.index is None and state.opening is not None:
            if report is not None:
                report(OPENING)
            opened, state.opening = state.opening.result(), None
            tried = opened is None
            if opened is not None and opened.meta.version == version:
                state.index = opened
        if state.index is None:
            state.index = vectors.load_fresh(
                self.engine,
                self.data_dir,
                state.generation_id,
                keep_unwritten=True,
                report=report,
                written_failed=tried,
            )
        elif version != state.index.meta.version:
            meta = vectors.read_meta(self.data_dir, state.generation_id)
            if meta is not None and meta.version == version:
                state.index = vectors.load_fresh(
                    self.engine, self.data_dir, state.generation_id, keep_unwritten=True
                )
        return state.index

    def _similar(
        self,
        session: Session,
        state: _State,
        tags: TagEngine,
        query: Query,
        request: SearchRequest,
        matches: BitMap,
        live: BitMap,
        limit: int,
    ) -> Page:
        vector = (
            _embedding_of(session, state, query.similar)
            if query.similar is not None
            else _checked_embedding(request.embedding, state.embedding_dim)
        )
        allowed = None if _is_everything(query.root) else matches
        if query.similar is not None:
            allowed = (allowed if allowed is not None else live) - BitMap([query.similar])
        seen = 0
        if request.cursor:
            seen = Cursor.decode(request.cursor, Order("similarity", True)).seed
        wanted = min(seen + limit, MAX_SIMILAR_RESULTS)
        with self._lock:
            index = self._vectors(session, state).usable()
        # One more than wanted tells whether a next page exists; duplicates dropped below
        # are made up from extra candidates.
        extra = 1 + (limit if request.hide_duplicates else 0)
        found, knn_plan = similar.nearest(
            index, vector, wanted + extra, allowed, live, self.gather_limit
        )
        if request.hide_duplicates:
            found = [(i, s) for i, s in found if s < self.duplicate_similarity]
        window = found[seen:wanted]
        next_cursor = None
        if window and wanted < MAX_SIMILAR_RESULTS and len(found) > wanted:
            last_id, last_score = window[-1]
            next_cursor = Cursor("similarity_desc", last_score, last_id, wanted).encode()
        rows = {hit.id: hit for hit in _hits(session, tags, [i for i, _ in window])}
        hits = [_with_similarity(rows[i], s) for i, s in window if i in rows]
        count = len(allowed) if allowed is not None else len(live)
        return Page(hits, count, False, next_cursor, tags.name, knn_plan.strategy)

    def _keys(
        self,
        session: Session,
        state: _State,
        tags: TagEngine,
        order: Order,
        thresholds: Mapping[str, float],
    ) -> KeySource:
        counted = tuple((GROUPS.index(g), thresholds[g]) for g in COUNTED_GROUPS["tagcount"])
        score_tag = None
        if order.key == "score" and order.tag is not None:
            info = state.catalog.lookup(order.tag)
            score_tag = info.id if info is not None else None
        return tags.keys(session, counted, score_tag)


def _with_similar(query: Query, image_id: int | None) -> Query:
    if image_id is None or query.similar == image_id:
        return query
    if query.similar is not None:
        message = f"the query's similar:{query.similar} conflicts with the query image {image_id}"
        raise QueryError(ErrorCode.CONFLICTING_SINGLETON, message, 0)
    return replace(query, similar=image_id)


def _check_order(query: Query, text: str, vector_query: bool) -> Order:
    order = query.order
    position = max(0, text.lower().find("order:"))
    if vector_query:
        if order is not None and order.key != "similarity":
            message = "a similarity search is ordered by similarity; drop the order: term"
            raise QueryError(ErrorCode.CONFLICTING_SINGLETON, message, position)
        return Order("similarity", True)
    if order is not None and order.key == "similarity":
        message = "order:similarity needs similar:<image id> or a query image"
        raise QueryError(ErrorCode.BAD_VALUE, message, position)
    return order or DEFAULT_ORDER


def _is_everything(node: Node) -> bool:
    return isinstance(node, All)


def _hits(session: Session, tags: TagEngine, ids: list[int]) -> list[Hit]:
    known = tags.describe(session, ids)
    return [Hit(i, *known[i]) for i in ids if i in known]


def _catalog(
    session: Session, aliases: Mapping[str, str], implications: Implications | None
) -> Catalog:
    rows = session.execute(select(Tag.id, Tag.name, Tag.group, Tag.image_count)).all()
    return Catalog.from_rows([(r[0], r[1], r[2], r[3]) for r in rows], aliases, implications)


def _with_similarity(hit: Hit, score: float) -> Hit:
    return Hit(hit.id, hit.path, hit.width, hit.height, round(score, 6))


def _embedding_of(session: Session, state: _State, image_id: int) -> np.ndarray:
    blob = session.scalar(
        select(Embedding.vector).where(
            Embedding.generation_id == state.generation_id, Embedding.image_id == image_id
        )
    )
    if blob is None:
        raise NotFound(f"no image {image_id} in the index (similar:{image_id})")
    vector: np.ndarray = decode_vectors([blob], state.embedding_dim)[0]
    return vector


def _checked_embedding(embedding: np.ndarray | None, dim: int) -> np.ndarray:
    vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if vector.shape[0] != dim:
        raise ValueError(f"the query embedding has {vector.shape[0]} values; the index has {dim}")
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("the query embedding must be finite and non-zero")
    normalised: np.ndarray = vector / np.float32(norm)
    return normalised
