"""``sagashi index PATH... --ray ADDRESS``: the tagging of an index run on a Ray cluster.

The scan and the change detection are the :class:`~indexer.pipeline.Indexer`'s own (its
walk, its classification by size and mtime, and its placement of each read file: unchanged,
touched, moved or to be tagged), run on the driver. Files at a path the index never saw, when
no indexed file went missing, are sent on unread (they cannot be a move); the others are
read and hashed here, as the local run reads them, to tell a move or an unchanged file from
one to tag. Only the files to tag go to Ray Data:

    paths -> read_file on CPU workers (the same read, hash and decode to (S, S, 3) uint8)
          -> a pool of tagger actors, one model per GPU (or CPU actors): predict_stacked
          -> the driver, batch by batch

The driver turns each batch into postings exactly as the local index does
(:meth:`~app.store.repository.TagMap.postings`: aliases, the score floor, copyrights) and
writes it as one Parquet shard in the import format (with the file's size and mtime, so the
next scan sees it unchanged) under ``DATA_DIR/ray-shards/MODEL-KEY/``: written to a
temporary name, flushed, then renamed, so only whole shards exist. The shards are imported
through :class:`~indexer.importer.Importer` (the single writer) as they land; they are
removed when the run has finished. A driver killed at any moment leaves whole shards and the
database as of its last commit; the next run imports the shards' rows that still describe the
files as they are (same path, size and mtime) and sends only the rest to Ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, select

from app.errors import SagashiError
from app.store import repository as repo
from app.store.formats import canonical_format
from app.store.models import Tag
from app.store.repository import FileFacts
from app.store.roots import add_roots
from app.tagger.protocol import Tagger
from indexer.importer import Importer, ImportOptions, ImportSummary, Row
from indexer.object_store import ObjectReader
from indexer.pipeline import Indexer, IndexOptions, IndexSummary, Loaded, _Batch, loaded_from
from indexer.readers import readers_for
from indexer.reading import ReadSpec, read_file
from indexer.scan import Found, Problem
from indexer.shards import import_row, read_shard, shard_paths, shard_row, write_shard

log = logging.getLogger(__name__)

SHARDS = "ray-shards"
INSTALL_HINT = "--ray needs Ray, which is not installed: pip install 'sagashi[ray]'"


class RayUnavailable(SagashiError):
    """Ray cannot be used here (not installed, or no cluster at the address)."""

    http_status = 503
    error_code = "ray_unavailable"


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or :class:`RayUnavailable` with a one-line reason."""
    try:
        import ray
        import ray.data  # Ray Data: the part of Ray this needs
    except ImportError:
        raise RayUnavailable(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how the tagging runs on Ray."""

    address: str  # "local" (a Ray started for this run), "auto", or a cluster address
    model_dir: Path  # the same path on every node (a shared filesystem)
    device: str  # the tagger's device setting; "auto": a GPU per actor when the cluster has any
    threads: int = 0  # torch/ONNX threads per CPU actor (0: the actor's CPUs)
    actors: int = 0  # tagger actors (0: one per GPU, else one per 4 CPUs, at least one)
    local_cpus: int = 0  # CPUs of a "local" Ray (0: the machine's)
    forward: Any = None  # app.tagger.forward.ForwardOptions (precision, compilation)


class _All(frozenset[str]):
    """Every content hash: a read that hashes and never decodes (the driver only needs to
    tell a move or an unchanged file from one to tag)."""

    def __contains__(self, item: object) -> bool:
        return True


# A read file the driver decided to tag: the pixels are made on a Ray worker, not here.
_ON_RAY = np.empty((0,), dtype=np.uint8)


class _ToTag(_Batch):
    """Collects the files :meth:`Indexer._place` decides to tag, instead of tagging them."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.files: list[tuple[Found, int | None]] = []

    def add(self, loaded: Loaded, existing_id: int | None) -> None:
        self.files.append((loaded.found, existing_id))


Progress = Callable[[int, int], None]


@dataclass
class _Counts:
    done: int = 0
    total: int = 0
    failures: list[Problem] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # of the rows handed to the importer


class RayIndexer(Indexer):
    """An :class:`Indexer` whose tagging runs on Ray (see the module's docstring)."""

    def __init__(
        self,
        engine: Engine,
        tagger: Tagger,
        options: IndexOptions,
        ray_options: RayOptions,
        data_dir: Path,
    ) -> None:
        super().__init__(engine, tagger, options)
        self.ray_options = ray_options
        self.shards = shard_folder(data_dir, tagger)

    def run(self, roots: Any, progress: Progress | None = None) -> IndexSummary:
        summary = IndexSummary()
        found = self._scan(roots, summary)
        with self.sessions() as session:
            generation = repo.generation_for_index(session, self.tagger.info)
            tag_map = repo.TagMap.ensure(session, self.tagger.vocab, self.options.aliases)
            add_roots(session, roots)
            session.commit()
            existing = self._existing(session, roots)
            candidates, missing = self._classify(found, existing, generation.id, summary)
            counts = _Counts(summary.unchanged, len(found))
            if progress:
                progress(counts.done, counts.total)
            collect = _ToTag(session, generation.id, tag_map, self.options.score_floor)
            unread = [c for c in candidates if c.path not in existing and not missing]
            unread_paths = {c.path for c in unread}
            to_read = [c for c in candidates if c.path not in unread_paths]
            for loaded in self._hash_only(to_read):
                if loaded.error is None:
                    loaded.pixels = _ON_RAY
                self._place(loaded, existing, missing, collect, summary)
                counts.done += 1
                if progress:
                    progress(counts.done, counts.total)
            session.commit()  # touches and moves: nothing of theirs goes to Ray
            files = collect.files + [(c, None) for c in unread]
            names: dict[int, str] = dict(session.execute(select(Tag.id, Tag.name)).all())  # type: ignore[arg-type]
        imported = self._tag(files, len(collect.files), tag_map, names, counts, progress)
        summary.new, summary.modified = imported.new, imported.updated
        summary.failures.extend(counts.failures)
        summary.failures.extend(  # a row the importer refused (a bug, were it to happen)
            Problem(counts.paths[number - 1], "bad_row", reason)
            for number, reason in imported.failures
        )
        with self.sessions() as session:
            self._finish(session, generation.id, missing, summary)
        remove_shards(self.shards)
        return summary

    def _hash_only(self, candidates: list[Found]) -> Iterator[Loaded]:
        spec = ReadSpec(self.tagger.preprocess, self.options.max_pixels, False, _All())
        readers = readers_for(spec, self.options.workers, self.options.workers * 2, False)
        tasks = ((c.path, (c.size, c.mtime_ns)) for c in candidates)
        for item, read in zip(candidates, readers.map(tasks), strict=True):
            yield loaded_from(item, read)

    def _tag(
        self,
        files: list[tuple[Found, int | None]],
        hashed: int,
        tag_map: repo.TagMap,
        names: dict[int, str],
        counts: _Counts,
        progress: Progress | None,
    ) -> ImportSummary:
        """Import the leftover shards' rows that still describe these files, tag the rest on
        Ray into new shards, importing each as it lands. The first ``hashed`` files were
        read here, and counted in the progress then."""
        wanted = {found.path: found for found, _ in files}
        counted = {found.path for found, _ in files[:hashed]}  # in the progress already
        leftover, rows = leftover_rows(self.shards, wanted)
        remaining = [found for found, _ in files if found.path not in leftover]
        if leftover:
            log.info("%d files tagged by an earlier run come from %s", len(leftover), self.shards)

        def step(paths: list[str]) -> None:
            counts.done += sum(1 for path in paths if path not in counted)
            if progress:
                progress(counts.done, counts.total)

        def source() -> Iterator[Row]:
            for row in rows:
                counts.paths.append(row["path"])
                step([row["path"]])
                yield Row(len(counts.paths), row, None)
            if not remaining:
                return
            writer = ShardWriter(self.shards, tag_map, names, self.options.score_floor)
            for batch in tag_on_ray(self.ray_options, self.options, self.tagger, remaining):
                shard_rows, failures = writer.write(batch)
                counts.failures.extend(failures)
                step([problem.path for problem in failures])
                for row in shard_rows:
                    counts.paths.append(row["path"])
                    step([row["path"]])
                    yield Row(len(counts.paths), row, None)

        rows_per_commit = max(64, self.options.batch_size * 4)
        options = ImportOptions(
            self.tagger.info.name,
            self.tagger.vocab,
            self.options.aliases,
            self.options.score_floor,
            strict=False,
            batch_size=rows_per_commit,
            identity=repo.GenerationIdentity.of(self.tagger.info),
            commit_every=rows_per_commit,
            count_thresholds=self.options.count_thresholds,
        )
        return Importer(self.engine, options).run(source())


def shard_folder(data_dir: Path, tagger: Tagger) -> Path:
    """``DATA_DIR/ray-shards/KEY``: one folder per model identity, so that shards left by a
    run with another model are never imported into this one's index."""
    identity = repo.GenerationIdentity.of(tagger.info)
    key = hashlib.sha256(json.dumps(asdict(identity), sort_keys=True).encode()).hexdigest()
    return data_dir / SHARDS / key[:16]


def leftover_rows(folder: Path, wanted: dict[str, Found]) -> tuple[set[str], list[dict[str, Any]]]:
    """Rows of the whole shards an earlier run left that describe a file of ``wanted`` as it
    is now (same size and mtime): their paths, and the rows as the importer takes them."""
    paths: set[str] = set()
    rows: list[dict[str, Any]] = []
    for shard in shard_paths(folder):
        for row in read_shard(shard) or []:
            found = wanted.get(row["path"])
            if found is None or row["path"] in paths:
                continue
            if (row["size"], row["mtime_ns"]) != (found.size, found.mtime_ns):
                continue
            paths.add(row["path"])
            rows.append(import_row(row))
    return paths, rows


def remove_shards(folder: Path) -> None:
    """Once every row is committed: the shards (and any temporary file) go."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        entry.unlink(missing_ok=True)
    folder.rmdir()


class ShardWriter:
    """Turns each batch Ray hands back into import rows, with the postings the local index
    would store (:meth:`TagMap.postings`), and writes it as one whole Parquet shard."""

    def __init__(
        self, folder: Path, tag_map: repo.TagMap, names: dict[int, str], floor: float
    ) -> None:
        self.folder = folder
        self.tag_map = tag_map
        self.names = names
        self.floor = floor
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, batch: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Problem]]:
        """The batch's rows (as the importer takes them) once written, and its failures."""
        rows, failures = self.rows(batch)
        if rows:
            write_shard(self.folder, rows)
        return [import_row(row) for row in rows], failures

    def rows(self, batch: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Problem]]:
        """The batch's rows as a shard stores them (:func:`shard_row`), and its failures."""
        rows: list[dict[str, Any]] = []
        failures: list[Problem] = []
        num_tags = len(self.tag_map.tag_ids)
        for i, path in enumerate(batch["path"].tolist()):
            code = str(batch["error_code"][i])
            if code:
                failures.append(Problem(path, code, str(batch["error_message"][i])))
                continue
            # The scores at or above the floor, back in place; the rest below any floor.
            probs = np.full(num_tags, -1.0, dtype=np.float32)
            probs[np.asarray(batch["tag_index"][i], dtype=np.int64)] = batch["tag_score"][i]
            tag_ids, scores = self.tag_map.postings(probs, self.floor)
            facts = FileFacts(
                path,
                str(batch["sha256"][i]),
                int(batch["size"][i]),
                int(batch["mtime_ns"][i]),
                int(batch["width"][i]),
                int(batch["height"][i]),
                str(batch["format"][i]),
                str(batch["md5"][i]),
            )
            names = [self.names[t] for t in tag_ids.tolist()]
            rows.append(shard_row(facts, names, scores, batch["embedding"][i]))
        return rows, failures


# -- the Ray side ---------------------------------------------------------------------------

FILE_KEYS = (
    "path",
    "size",
    "mtime_ns",
    "sha256",
    "md5",
    "width",
    "height",
    "format",
    "error_code",
    "error_message",
)


def connect(ray: Any, options: RayOptions) -> None:
    """Join the cluster at ``options.address``, or start a local Ray for this run."""
    if ray.is_initialized():  # the caller's own (tests, a notebook)
        return
    quiet: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if options.address not in ("local", "auto"):
        probe(options.address)
    try:
        if options.address == "local":
            # "local" said, not left out: without an address Ray joins the cluster RAY_ADDRESS
            # names, or one 'ray start' left running on this machine.
            ray.init(
                address="local",
                num_cpus=options.local_cpus or None,
                include_dashboard=False,
                **quiet,
            )
        else:
            ray.init(address=options.address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayUnavailable(f"cannot reach Ray at '{options.address}': {reason}") from None


def probe(address: str, timeout: float = 5.0) -> None:
    """Refuse an address nothing answers at, in seconds: Ray itself retries for minutes."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(
            f"bad Ray address '{address}': use local, auto, HOST:PORT or ray://HOST:PORT"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RayUnavailable(f"cannot reach Ray at '{address}': {reason}") from None


@dataclass(frozen=True)
class Pool:
    """The tagger actors: how many, the device each loads its model on, what each holds."""

    actors: int
    device: str
    num_gpus: float
    num_cpus: float
    threads: int


def plan_pool(resources: dict[str, float], options: RayOptions) -> Pool:
    """One actor per GPU when the cluster has GPUs (and the device allows); else CPU actors,
    one per 4 CPUs by default, each holding half its share so the decoders get the rest."""
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    wants_gpu = options.device.startswith("cuda")
    if wants_gpu and gpus == 0:
        raise RayUnavailable(f"device '{options.device}' asked for, but the Ray cluster has no GPU")
    if wants_gpu or (gpus and options.device == "auto"):
        actors = options.actors or gpus
        return Pool(actors, "cuda", 1.0, 1.0, options.threads or 1)
    actors = options.actors or max(1, cpus // 4)
    share = max(1, cpus // (2 * actors))
    return Pool(actors, "cpu", 0.0, float(share), options.threads or share)


def tag_on_ray(
    ray_options: RayOptions,
    options: IndexOptions,
    tagger: Tagger,
    files: list[Found],
    objects: ObjectReader | None = None,
) -> Iterator[dict[str, Any]]:
    """Read, decode and tag ``files`` on Ray; yields the batches as the pool finishes them
    (file facts, per-file errors, the sparse scores at or above the floor, embeddings).
    With ``objects``, the paths are object-store URIs the workers read through it."""
    import pyarrow as pa

    ray = require_ray()
    connect(ray, ray_options)
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    pool = plan_pool(ray.cluster_resources(), ray_options)
    log.info(
        "tagging %d files on Ray: %d %s actors (%s CPUs, %s GPUs each)",
        len(files),
        pool.actors,
        pool.device,
        pool.num_cpus,
        pool.num_gpus,
    )
    spec = ReadSpec(tagger.preprocess, options.max_pixels, options.jpeg_draft)
    per_block = options.batch_size * 4
    blocks = [
        pa.table(
            {
                "path": [f.path for f in part],
                "size": [f.size for f in part],
                "mtime_ns": [f.mtime_ns for f in part],
            }
        )
        for part in (files[i : i + per_block] for i in range(0, len(files), per_block))
    ]
    dataset = ray.data.from_arrow(blocks)
    dataset = dataset.map_batches(
        decode_batch,
        fn_kwargs={"spec": spec, "objects": objects},
        batch_size=options.batch_size,
        num_cpus=1,
    )
    dataset = dataset.map_batches(
        TaggerActor,
        fn_constructor_kwargs={
            "model_dir": str(ray_options.model_dir),
            "device": pool.device,
            "threads": pool.threads,
            "floor": options.score_floor,
            "forward": ray_options.forward,
        },
        batch_size=options.batch_size,
        # Ray Data restarts an actor (or one on a lost node) and retries its batch.
        compute=ray.data.ActorPoolStrategy(size=pool.actors),
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus,
    )
    yield from dataset.iter_batches(batch_size=None, batch_format="numpy")


def decode_batch(
    batch: dict[str, np.ndarray], spec: ReadSpec, objects: ObjectReader | None = None
) -> dict[str, np.ndarray]:
    """Ray worker: :func:`read_file` on each file of a batch (what the local readers do),
    or the object store's read of each URI."""
    read_one = read_file if objects is None else objects.read
    size = spec.preprocess.size
    count = len(batch["path"])
    out: dict[str, list[Any]] = {key: [] for key in FILE_KEYS}
    pixels = np.zeros((count, size, size, 3), dtype=np.uint8)
    for i, (path, nbytes, mtime) in enumerate(
        zip(batch["path"].tolist(), batch["size"].tolist(), batch["mtime_ns"].tolist(), strict=True)
    ):
        read = read_one(spec, path, (nbytes, mtime))
        error = read.error
        if read.pixels is not None:
            pixels[i] = read.pixels
        values = {
            "path": path,
            "size": nbytes,
            "mtime_ns": mtime,
            "sha256": read.sha256,
            "md5": read.md5,
            "width": read.width,
            "height": read.height,
            "format": canonical_format(read.format),
            "error_code": error.code if error else "",
            "error_message": error.message if error else "",
        }
        for key, value in values.items():
            out[key].append(value)
    return {**{key: np.asarray(values) for key, values in out.items()}, "pixels": pixels}


class TaggerActor:
    """Ray actor: one loaded model; :func:`predict_stacked` on each batch's decoded rows."""

    def __init__(
        self, model_dir: str, device: str, threads: int, floor: float, forward: Any
    ) -> None:
        from app.tagger.factory import open_tagger

        self.tagger = open_tagger(Path(model_dir), device, threads, forward=forward)
        self.floor = floor

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from app.tagger.batching import predict_stacked

        count = len(batch["path"])
        out: dict[str, Any] = {key: batch[key] for key in FILE_KEYS}
        codes = batch["error_code"].astype(object)
        messages = batch["error_message"].astype(object)
        index = np.empty(count, dtype=object)
        score = np.empty(count, dtype=object)
        embeddings = np.zeros((count, self.tagger.info.embedding_dim), dtype=np.float32)
        for i in range(count):
            index[i], score[i] = np.zeros(0, np.int32), np.zeros(0, np.float32)
        rows = [i for i in range(count) if not codes[i]]
        if rows:
            prediction = predict_stacked(self.tagger, [batch["pixels"][i] for i in rows])
            for j, i in enumerate(rows):
                error = prediction.errors.get(j)
                if error is not None:
                    codes[i], messages[i] = error.code, error.message
                    continue
                keep = np.flatnonzero(prediction.probs[j] >= self.floor)
                index[i] = keep.astype(np.int32)
                score[i] = prediction.probs[j][keep].astype(np.float32)
                embeddings[i] = prediction.embeddings[j]
        out["error_code"], out["error_message"] = codes.astype(str), messages.astype(str)
        out.update(tag_index=index, tag_score=score, embedding=embeddings)
        return out


# -- the command ----------------------------------------------------------------------------


def ray_options(settings: Any, address: str, actors: int) -> RayOptions:
    """The run's :class:`RayOptions` from the settings (model, device, threads, precision)."""
    from app.tagger.forward import ForwardOptions

    if settings.model_dir is None:
        raise RayUnavailable("no model directory: pass --model-dir DIR or set SAGASHI_MODEL_DIR")
    return RayOptions(
        address=address,
        model_dir=Path(settings.model_dir).resolve(),
        device=settings.device,
        threads=settings.torch_threads,
        actors=actors,
        forward=ForwardOptions.from_settings(settings),
    )


@contextmanager
def results_kept(on_ray: bool = True) -> Iterator[None]:
    """Standard output kept for the command's results ('--json', paths) while Ray runs: its
    driver prints what the raylet reports (a worker that died, say) to sys.stdout, which
    put a line of Ray's before the JSON of 'sagashi index --ray ... --json'. In the block,
    those lines go to stderr with the logs."""
    if not on_ray:
        yield
        return
    with redirect_stdout(sys.stderr):
        yield


def preflight(options: RayOptions) -> None:
    """Ray installed and the address answering, before the database or the model is
    opened: either fails with a one-line :class:`RayUnavailable`."""
    require_ray()
    if options.address not in ("local", "auto"):
        probe(options.address)


def start(options: RayOptions) -> None:
    """Ray imported and the cluster joined (or a local one started) before anything else
    happens, so that a missing Ray or a wrong address stops the run at once."""
    connect(require_ray(), options)


def run_index(
    engine: Engine, settings: Any, tagger: Tagger, paths: Any, run: Any, options: RayOptions
) -> IndexSummary:
    """:func:`indexer.jobs.run_index` with the tagging on Ray: the same job record, FAISS
    and segment refresh, and summary."""
    from sqlalchemy.exc import SQLAlchemyError

    from indexer import jobs, thumbnails
    from indexer.runs import finish

    index_options = jobs.index_options(settings)
    indexer = RayIndexer(engine, tagger, index_options, options, Path(settings.data_dir))
    try:
        with thumbnails.following(engine, settings):
            summary = indexer.run(paths, run.update)
    except repo.GenerationMismatch as exc:
        raise jobs.JobStopped(str(exc)) from exc
    except SQLAlchemyError as exc:
        raise jobs.database_stop(exc) from exc
    except RayUnavailable as exc:
        raise jobs.JobStopped(str(exc)) from exc
    except Exception as exc:
        if type(exc).__module__.startswith("ray"):  # a task failed past its retries
            first = jobs.first_line(exc)
            raise jobs.JobStopped(
                f"the Ray pipeline failed: {first} (whole shards are kept; rerun to resume)"
            ) from exc
        raise
    jobs.refresh_faiss(engine, settings.data_dir)
    jobs.refresh_segments(engine, settings)
    finish(run, summary.as_dict(), [(p.path, p.code, p.message) for p in summary.failures])
    return summary


def index_paths(
    engine: Engine,
    settings: Any,
    tagger: Tagger,
    paths: Any,
    as_json: bool,
    options: RayOptions,
) -> IndexSummary:
    """'sagashi index --ray': a tracked run (progress bar, job record), failures logged,
    then the summary, as :func:`indexer.up.index_paths` does for the local run."""
    from indexer import jobs
    from indexer.runs import abort, tracked
    from indexer.summary import report

    params = {"paths": [str(p) for p in paths], "model": tagger.info.name, "ray": options.address}
    with tracked(engine, "index", params, "indexing", "files") as run:
        try:
            with results_kept():
                summary = run_index(engine, settings, tagger, paths, run, options)
        except jobs.JobStopped as exc:
            abort(run, str(exc))
            raise
    for failure in summary.failures:
        log.warning("failed: %s: %s: %s", failure.path, failure.code, failure.message)
    report("indexed on Ray", run.job_id, run.elapsed(), summary.as_dict(), as_json)
    return summary
