"""The farm: plan -> dispatch -> collect -> merge -> report, for jobs on a Ray cluster.

:class:`Farm` owns the connection to Ray, pools of long-lived workers (one pool per device
kind) and a dispatcher thread per pool. :meth:`Farm.submit` checks a job, returns a
:class:`JobHandle` at once and runs the job in the background; several jobs can run at once
and share the workers.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from renderfarm import faults
from renderfarm.bundle import (
    MAX_BUNDLE_BYTES,
    BundleCache,
    Manifest,
    missing_error,
    publish,
    storage_key,
    trace_missing,
)
from renderfarm.errors import (
    BlendFileError,
    BundleError,
    CancelledError,
    ClusterLostError,
    InputError,
    JobFailedError,
    MergeError,
    OutputError,
    RenderFarmError,
)
from renderfarm.events import Event
from renderfarm.executor import (
    START_TIMEOUT,
    PoolShape,
    Source,
    WorkerHandle,
    WorkerPool,
    cluster_resources,
    dispatch,
    error_from,
    file_hash,
    new_job_id,
    plan_pool,
    scene_info_from,
)
from renderfarm.frames import parse_frames
from renderfarm.job import (
    FORMAT_EXTENSIONS,
    JobResult,
    JobSpec,
    RenderSettings,
    SceneInfo,
    Task,
    TaskResult,
    Tile,
    output_format,
    output_path,
)
from renderfarm.merge import (
    Piece,
    combine_samples,
    drop_parts,
    merge_pieces,
    write_atomically,
)
from renderfarm.planner import Plan, added_colour_passes, plan_job
from renderfarm.state import JobState, TaskStatus

logger = logging.getLogger(__name__)

#: missing files named one warning each; the rest are counted in one more
MAX_MISSING_WARNINGS = 50


@dataclass(frozen=True)
class FarmConfig:
    """How a farm runs.

    Attributes:
        address: Ray address (``auto``, ``ray://head:10001``); None (and no ``$RAY_ADDRESS``)
            starts a Ray of the farm's own on this machine, even when another runs here.
        workers: workers per pool (None: one per GPU, or one per node for CPU).
        cpus_per_worker: CPUs each CPU worker takes (None: a node's CPUs shared out).
        permit_scripts: whether jobs may ask to run Python embedded in ``.blend`` files.
        max_frames: the most frames one job may render.
        start_timeout: seconds to wait for workers before calling the cluster too small.
        merge_threads: frames merged at once on the driver.
        ray_log_level: the level of Ray's own notices when this farm starts Ray.
        storage: where job files are kept by hash for the workers (a folder the workers
            see, or ``s3://bucket/prefix``); None: a temporary folder of this farm's (workers
            on nodes that cannot see it get the files through Ray's object store).
        max_bundle_bytes: the largest bundle (a job's files) the farm accepts.
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float | None = None
    permit_scripts: bool = False
    max_frames: int = 100_000
    start_timeout: float = START_TIMEOUT
    merge_threads: int = 2
    ray_log_level: int = logging.WARNING
    storage: str | None = None
    max_bundle_bytes: int = MAX_BUNDLE_BYTES


def check_spec(spec: JobSpec, config: FarmConfig | None = None) -> None:
    """Check a job before anything starts: the file, the frames, the output, the permissions.

    Raises:
        BlendFileError: the file is missing or is not a ``.blend``.
        FrameRangeError: the frames are malformed or too many.
        OutputError: the output extension is unknown or its folder cannot be written.
        InputError: the job asks to run scripts and the farm does not permit it.
    """
    from renderfarm.blendfile import check_blend_file

    config = config or FarmConfig()
    path = spec.blend_file
    if spec.bundle is not None:
        if spec.files != "bundle":
            raise InputError("a job with a bundle must use files='bundle'", path=path)
        Manifest.from_dict(spec.bundle, config.max_bundle_bytes)
    else:
        check_blend_file(path)
    if spec.project is not None and not os.path.isdir(spec.project):
        raise InputError("the project folder does not exist; give the folder the .blend's "
                         "relative paths start from (--project)", path=spec.project)
    if spec.frames is not None:
        parse_frames(spec.frames, max_count=config.max_frames)
    if spec.allow_scripts and not config.permit_scripts:
        raise InputError(
            "the job asks to run Python scripts embedded in the file, but this farm does not "
            "permit it; start the farm with scripts permitted (--permit-scripts) or render "
            "without --allow-scripts", path=path)
    output_format(spec.output)
    check_output_folder(output_path(spec.output, 0).parent)


def check_output_folder(folder: Path) -> None:
    """Create ``folder`` if needed and make sure files can be written in it.

    Raises:
        OutputError: the folder cannot be created or written.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder ({exc.strerror}); choose another "
                          "--output", path=str(folder)) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError("the output folder is not writable; choose another --output",
                          path=str(folder))


@dataclass(frozen=True)
class ResumePiece:
    """A piece rendered before the job was interrupted (e.g. the farm service restarted).

    Attributes:
        frame: its frame.
        chunk: its sample range.
        tiles: the grid tiles it covers (several when neighbouring tiles were grouped).
        tile: the :class:`~renderfarm.job.Tile` it holds, as a dict.
        path: its file.
    """

    frame: int
    chunk: int
    tiles: tuple[int, ...]
    tile: dict[str, Any]
    path: str


@dataclass(frozen=True)
class Resume:
    """What an interrupted job had finished: pieces not yet merged and merged frames.

    The job must be planned the same way again (same tiles and sample ranges), which
    :meth:`Farm.submit` makes sure of with ``tiles`` and ``chunks`` taken from the first run.
    """

    pieces: tuple[ResumePiece, ...] = ()
    frames: dict[int, str] = field(default_factory=dict)


class JobHandle:
    """A running job: its events, its result, and a way to cancel it."""

    def __init__(self, job_id: str, spec: JobSpec) -> None:
        self.job_id = job_id
        self.spec = spec
        self._events: queue.Queue[Event | None] = queue.Queue()
        self._finished = threading.Event()
        self._cancel = threading.Event()
        self._paused = threading.Event()
        self._priority_changed: list[int] = []
        self._source: Source | None = None
        self._result: JobResult | None = None
        self._error: RenderFarmError | None = None
        #: what bundling stored for this job (``bundle_files``, ``bundle_bytes``,
        #: ``sent_files``, ``sent_bytes``); empty when the client sent the bundle
        self.transfer: dict[str, int] = {}
        self._run: Any = None

    @property
    def late_results(self) -> int:
        """Results that arrived after the job ended and were dropped unread."""
        return self._run.late_results if self._run is not None else 0

    @property
    def duplicates(self) -> int:
        """Results of a task that another copy (a straggler's backup) had finished first."""
        return self._run.duplicates if self._run is not None else 0

    @property
    def merged_twice(self) -> int:
        """Frames a second merge was asked for (refused; 0 unless something is wrong)."""
        return self._run.merged_twice if self._run is not None else 0

    def events(self) -> Iterator[Event]:
        """Yield the job's events as they happen, until it ends (one consumer only)."""
        while True:
            event = self._events.get()
            if event is None:
                return
            yield event

    def result(self, timeout: float | None = None) -> JobResult:
        """Wait for the job and return its result.

        Raises:
            RenderFarmError: the job failed or was cancelled.
            TimeoutError: ``timeout`` passed first.
        """
        if not self._finished.wait(timeout):
            raise TimeoutError(f"job {self.job_id} still running after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Stop the job: running tasks are stopped, nothing more is started."""
        self._cancel.set()

    def pause(self) -> None:
        """Start no more tasks of this job; running ones finish and are kept."""
        self._paused.set()

    def resume(self) -> None:
        """Start tasks of this job again after :meth:`pause`."""
        self._paused.clear()

    @property
    def paused(self) -> bool:
        """Whether the job is paused."""
        return self._paused.is_set()

    def set_priority(self, priority: int) -> None:
        """Change the job's priority (higher first) for the tasks it has not started yet."""
        self._priority_changed.append(priority)
        if self._source is not None:
            self._source.priority = priority

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()

    def done(self) -> bool:
        """Whether the job has ended (done, failed or cancelled)."""
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job ends; True when it has."""
        return self._finished.wait(timeout)

    def _emit(self, event: Event) -> None:
        self._events.put(event)

    def _end(self, result: JobResult | None, error: RenderFarmError | None) -> None:
        self._result, self._error = result, error
        self._finished.set()
        self._events.put(None)


class _PoolRunner:
    """A worker pool with its dispatcher thread and the sources it serves."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.sources: list[Source] = []
        self.lock = threading.Lock()
        self.closing = False
        self.wake = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="renderfarm-dispatch",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            dispatch(self.pool, self._sources, lambda: self.closing, wake=self.wake)
        except RenderFarmError as exc:  # the cluster failed: its jobs end with the reason
            logger.error("dispatcher stopped: %s", exc.one_line())
            self.error = exc
        except BaseException as exc:  # keep the farm alive; jobs see it as a failure
            logger.exception("dispatcher stopped")
            self.error = exc

    def _sources(self) -> list[Source]:
        with self.lock:
            return list(self.sources)

    def add(self, source: Source) -> None:
        with self.lock:
            self.sources.append(source)
        self.wake.set()

    def remove(self, source: Source) -> None:
        with self.lock:
            if source in self.sources:
                self.sources.remove(source)


class Farm:
    """Renders jobs on a Ray cluster with long-lived Blender workers.

    Args:
        address: Ray address; None starts Ray on this machine (the embedded default).
        workers: workers per pool (see :class:`FarmConfig`).
        cpus_per_worker: CPUs per CPU worker.
        permit_scripts: allow jobs that ask to run scripts embedded in ``.blend`` files.
        config: all settings at once (the other arguments override it).
        worker_class: the worker actor class (tests and benchmarks may swap it).

    Use it as a context manager, or call :meth:`shutdown`, so no worker is left behind.
    """

    def __init__(self, address: str | None = None, *, workers: int | None = None,
                 cpus_per_worker: float | None = None, permit_scripts: bool | None = None,
                 config: FarmConfig | None = None, worker_class: type | None = None) -> None:
        config = config or FarmConfig()
        overrides: dict[str, Any] = {}
        if address is not None:
            overrides["address"] = address
        if workers is not None:
            overrides["workers"] = workers
        if cpus_per_worker is not None:
            overrides["cpus_per_worker"] = cpus_per_worker
        if permit_scripts is not None:
            overrides["permit_scripts"] = permit_scripts
        self.config = replace(config, **overrides)
        if self.config.workers is not None and self.config.workers < 1:
            raise InputError(f"workers must be 1 or more, not {self.config.workers}")
        self.worker_class = worker_class
        self._started_ray = False
        self._runners: dict[str, _PoolRunner] = {}
        self._lock = threading.Lock()
        self._merger = ThreadPoolExecutor(self.config.merge_threads,
                                          thread_name_prefix="renderfarm-merge")
        self._jobs: list[JobHandle] = []
        self._storage: Any = None
        self._own_storage: Path | None = None
        self._bundles = BundleCache()
        #: set once the Ray cluster under this farm has failed (see :meth:`cluster_problem`)
        self.lost: ClusterLostError | None = None
        self._connect()

    # -- lifecycle ---------------------------------------------------------------------------
    def _connect(self) -> None:
        import ray

        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"log_to_driver": False,
                                  "logging_level": self.config.ray_log_level}
        # no address (and no $RAY_ADDRESS): a Ray of this farm's own on this machine, never
        # whatever cluster another program left running here (a bare ray.init() joins it)
        address = self.config.address or os.environ.get("RAY_ADDRESS") or "local"
        if not address.startswith("ray://"):
            kwargs["include_dashboard"] = False
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            raise InputError(f"cannot connect to the Ray cluster at {address!r} ({exc}); "
                             "check --address and that the cluster is up") from exc
        self._started_ray = True

    def __enter__(self) -> Farm:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Cancel running jobs, kill every worker and disconnect from Ray if this farm
        connected.

        After :meth:`mark_lost` it does not wait for what a dead cluster cannot answer: jobs
        get a few seconds, workers are not killed one by one (they died with it)."""
        patience = 5.0 if self.lost is not None else 30.0
        for handle in self._jobs:
            handle.cancel()
        for handle in self._jobs:
            handle.wait(patience)
        for runner in self._runners.values():
            runner.closing = True
            runner.thread.join(patience)
            runner.pool.kill_all()
        self._runners.clear()
        self._merger.shutdown(wait=self.lost is None)
        self._bundles.clear()
        if self._own_storage is not None:
            shutil.rmtree(self._own_storage, ignore_errors=True)
            self._own_storage = None
            self._storage = None
        if self._started_ray:
            import ray

            try:
                ray.shutdown()
            except Exception:  # a dead cluster may not shut down cleanly; it is gone anyway
                logger.warning("Ray did not shut down cleanly", exc_info=True)
            self._started_ray = False

    # -- the cluster's health ----------------------------------------------------------------
    def cluster_problem(self, timeout: float = 3.0) -> str | None:
        """What is wrong with the Ray cluster under this farm, or None when it is well.

        Checks the Ray processes this farm started (GCS, raylet) and that the cluster's GCS
        answers within ``timeout`` seconds. A pool that saw its raylet die says so too.
        """
        import ray

        if self.lost is not None:
            return self.lost.message
        for runner in list(self._runners.values()):
            if runner.pool.lost is not None:
                return runner.pool.lost.message
        if not ray.is_initialized():
            return "Ray is not connected"
        worker = ray._private.worker.global_worker
        node = getattr(ray._private.worker, "_global_node", None)
        processes = getattr(node, "all_processes", None) or {}
        for name in ("gcs_server", "raylet"):
            for info in processes.get(name, ()):
                code = info.process.poll()
                if code is not None:
                    return f"Ray's {name} exited (code {code})"
        client = getattr(worker, "gcs_client", None)
        if client is not None:
            try:
                client.internal_kv_get(b"renderfarm-health", b"renderfarm", timeout=timeout)
            except Exception as exc:
                return f"Ray's GCS does not answer ({type(exc).__name__}: {exc})"
        return None

    def mark_lost(self, reason: str) -> None:
        """Say the cluster under this farm has failed: its jobs stop with
        :class:`~renderfarm.errors.ClusterLostError` (finished pieces kept) and
        :meth:`shutdown` does not wait on the dead cluster."""
        self.lost = ClusterLostError(
            f"the Ray cluster under the farm failed ({reason}); the job stopped with its "
            "finished pieces kept")
        for runner in list(self._runners.values()):
            runner.pool.lost = runner.pool.lost or self.lost

    @property
    def storage(self) -> Any:
        """Where this farm keeps job files by hash (:class:`~renderfarm.storage.Storage`)."""
        with self._lock:
            if self._storage is None:
                from renderfarm.storage import open_storage

                location = self.config.storage
                if location is None:
                    self._own_storage = Path(tempfile.mkdtemp(prefix="renderfarm-storage-"))
                    location = str(self._own_storage)
                self._storage = open_storage(location)
            return self._storage

    def pool_shape(self, device: str) -> PoolShape:
        """The shape a pool for ``device`` (``cpu`` or ``gpu``) has on this cluster."""
        cpus, gpus = cluster_resources()
        return plan_pool(device, cpus, gpus, self.config.workers, self.config.cpus_per_worker)

    def resolve_device(self, device: str) -> str:
        """``auto`` becomes ``gpu`` when the cluster has a GPU, else ``cpu``."""
        if device != "auto":
            return device
        return "gpu" if cluster_resources()[1] >= 1 else "cpu"

    def _runner(self, device: str) -> _PoolRunner:
        if self.lost is not None:
            raise self.lost
        with self._lock:
            runner = self._runners.get(device)
            if runner is not None and isinstance(runner.error, ClusterLostError):
                raise runner.error
            if runner is None or runner.error is not None:
                kwargs = {"actor_class": self.worker_class} if self.worker_class else {}
                # no worker count given: the pool follows the cluster (one worker per node,
                # or per GPU, as nodes come and go); a count given is kept
                pool = WorkerPool(self.pool_shape(device), start_timeout=self.config.start_timeout,
                                  elastic=self.config.workers is None, **kwargs)
                pool.start()
                runner = _PoolRunner(pool)
                self._runners[device] = runner
            return runner

    # -- jobs --------------------------------------------------------------------------------
    def submit(self, spec: JobSpec, priority: int = 0, *, job_id: str | None = None,
               workdir: Path | None = None, resume: Resume | None = None,
               on_piece: Callable[[Task, Path], None] | None = None) -> JobHandle:
        """Check a job and start it in the background.

        Args:
            spec: the job.
            priority: higher first; see :meth:`JobHandle.set_priority`.
            job_id: the job's id (default: a new one).
            workdir: where pieces wait for their frame's merge; kept after the job (the
                caller removes it) so an interrupted job can resume. Default: a temporary
                folder removed at the end.
            resume: what an earlier run of this job finished; those pieces and frames are
                not rendered again.
            on_piece: called with each finished task and its piece file before the piece
                can be merged away (keep it short: it runs on the dispatcher thread).

        Raises:
            InputError: the job is wrong before anything runs (file, frames, output).
        """
        check_spec(spec, self.config)
        transfer: dict[str, int] = {}
        if spec.files == "bundle" and spec.bundle is None:
            spec, transfer = self.bundle(spec)
        handle = JobHandle(job_id or new_job_id(), spec)
        handle.transfer = transfer
        self._jobs.append(handle)
        run = _JobRun(self, handle, priority, workdir=workdir, resume=resume,
                      on_piece=on_piece)
        thread = threading.Thread(target=run.run,
                                  name=f"renderfarm-job-{handle.job_id}", daemon=True)
        thread.start()
        return handle

    def bundle(self, spec: JobSpec) -> tuple[JobSpec, dict[str, int]]:
        """Bundle a job's ``.blend`` and its dependencies into this farm's storage.

        Done before :meth:`submit` returns, so the artist's files may change or move
        afterwards: the job renders what they were at submission.

        Returns:
            The job with its bundle's manifest, and what was stored: ``bundle_files``,
            ``bundle_bytes``, ``sent_files``, ``sent_bytes``.

        Raises:
            MissingFilesError: the scene needs files that cannot be found (unless the job
                allows it).
            BundleError: the dependencies cannot be read, or the bundle is too large.
        """
        manifest = self._bundles.make(spec.blend_file, spec.project,
                                      self.config.max_bundle_bytes)
        if manifest.missing and not spec.allow_missing:
            raise missing_error(manifest.missing, spec.blend_file)
        sent, sent_bytes = publish(manifest, self.storage)
        transfer = {"bundle_files": len(manifest.files), "bundle_bytes": manifest.total_bytes,
                    "sent_files": sent, "sent_bytes": sent_bytes}
        logger.info("bundle of %s: %d file(s), %d bytes; stored %d new file(s), %d bytes",
                    spec.blend_file, len(manifest.files), manifest.total_bytes, sent,
                    sent_bytes)
        return replace(spec, bundle=manifest.to_dict()), transfer

    def render(self, spec: JobSpec) -> JobResult:
        """Render a job and wait for it (:func:`renderfarm.render` can show a progress bar)."""
        return self.submit(spec).result()


class _JobRun:
    """Runs one job: inspect, plan, feed the dispatcher, merge frames, build the result."""

    def __init__(self, farm: Farm, handle: JobHandle, priority: int,
                 workdir: Path | None = None, resume: Resume | None = None,
                 on_piece: Callable[[Task, Path], None] | None = None) -> None:
        self.farm = farm
        self.on_piece = on_piece
        self.workdir = workdir
        self.resume = resume
        self.handle = handle
        self.spec = handle.spec
        self.priority = priority
        self.lock = threading.Lock()
        self.files: dict[str, Any] = {}
        self.files_ref: Any = None
        self.manifest: Manifest | None = None
        #: what the client's side found missing (warned about once, not again per worker)
        self.known_missing: tuple[str, ...] = ()
        self.results: list[TaskResult] = []
        self.outputs: dict[int, Path] = {}
        self.pieces: dict[int, list[tuple[int, Piece]]] = {}
        self.merges: list[Future[None]] = []
        handle._run = self
        self.fatal: RenderFarmError | None = None
        self.ended = threading.Event()
        #: results that arrived after the job ended (dropped without touching its files)
        self.late_results = 0
        #: results of a task another copy had finished already (stragglers' backups)
        self.duplicates = 0
        self.merged_twice = 0
        self._merged: set[int] = set()
        self.frames_done = 0
        self.warnings: list[str] = []
        self.state: JobState | None = None
        self.plan: Plan | None = None
        self.info: SceneInfo | None = None

    # -- helpers -----------------------------------------------------------------------------
    def emit(self, kind: str, **kwargs: Any) -> None:
        state, plan = self.state, self.plan
        self.handle._emit(Event(
            kind=kind, job_id=self.handle.job_id,
            tasks_done=state.count(TaskStatus.DONE) if state else 0,
            tasks_total=state.total if state else 0,
            frames_done=self.frames_done, frames_total=len(plan.frames) if plan else 0,
            **kwargs))

    def _put_blob(self) -> None:
        """Send the job's files through Ray's object store, for workers that can reach
        neither the driver's paths nor the farm's storage."""
        import ray

        with self.lock:
            if self.files.get("mode") == "shared" and not self.files.get("blob"):
                with open(self.spec.blend_file, "rb") as handle:
                    self.files["blob"] = [ray.put(handle.read())]
            elif self.files.get("mode") == "bundle" and not self.files.get("refs"):
                assert self.manifest is not None
                storage = self.farm.storage
                refs = {}
                for sha in self.manifest.hashes():
                    local = storage.local_path(storage_key(sha))
                    if local is None:
                        local = self.scratch / f"fetch-{sha}"
                        storage.get_file(storage_key(sha), local)
                    refs[sha] = ray.put(Path(local).read_bytes())
                self.files["refs"] = refs
            else:
                return
            self.files_ref = ray.put(self.files)

    def _prepare_files(self) -> str:
        """Make the job's files reachable by workers; returns the key workers load it by
        (the bundle's digest, or the shared file's hash).

        Raises:
            MissingFilesError: the scene needs files that cannot be found (unless the job
                allows it: then each is a warning).
            BundleError: the bundle cannot be made, is too large, or lacks stored files.
        """
        import ray

        spec = self.spec
        if spec.files == "shared":
            try:
                key = file_hash(spec.blend_file)
            except OSError as exc:
                raise BlendFileError(f"the file cannot be read ({exc.strerror}); with --files "
                                     "shared it must stay in place until the job ends",
                                     path=spec.blend_file) from exc
            self.known_missing = tuple(trace_missing(spec.blend_file))
            self._check_missing(self.known_missing)
            self.files = {"mode": "shared", "blob": []}
        else:
            storage = self.farm.storage
            limit = self.farm.config.max_bundle_bytes
            assert spec.bundle is not None  # Farm.submit bundled it, or the client did
            manifest = Manifest.from_dict(spec.bundle, limit)
            absent = [h for h in manifest.hashes() if not storage.exists(storage_key(h))]
            if absent:
                raise BundleError(
                    f"{len(absent)} file(s) of the job's bundle are not in the farm's "
                    "storage (the upload did not finish); submit the job again",
                    path=spec.blend_file)
            transfer = self.handle.transfer
            if transfer:
                self.emit("info", message=f"bundle: {transfer['bundle_files']} file(s), "
                          f"{transfer['bundle_bytes']} bytes; sent {transfer['sent_files']} "
                          f"new file(s), {transfer['sent_bytes']} bytes", data=transfer)
            self.known_missing = manifest.missing
            self._check_missing(manifest.missing)
            self.manifest = manifest
            key = manifest.digest
            self.files = {"mode": "bundle", "manifest": manifest.to_dict(),
                          "storage": storage.url, "refs": None}
        self.files_ref = ray.put(self.files)
        return key

    def _check_missing(self, missing: Any, seen: Any = ()) -> None:
        """Fail the job naming each missing file, or warn per file when it allows them."""
        missing = sorted(set(missing))
        if not missing:
            return
        if not self.spec.allow_missing:
            raise missing_error(missing, self.spec.blend_file)
        known = {os.path.basename(p) for p in seen}
        new = [p for p in missing if os.path.basename(p) not in known]
        for path in new[:MAX_MISSING_WARNINGS]:
            warning = f"missing file, rendered without it (--allow-missing): {path}"
            self.warnings.append(warning)
            self.emit("warning", message=warning, data={"missing": path})
        if len(new) > MAX_MISSING_WARNINGS:
            warning = (f"and {len(new) - MAX_MISSING_WARNINGS} more missing file(s), rendered "
                       "without them (--allow-missing)")
            self.warnings.append(warning)
            self.emit("warning", message=warning)

    # -- the job -----------------------------------------------------------------------------
    def run(self) -> None:
        start = time.monotonic()
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.scratch = self.workdir
        else:
            self.scratch = Path(tempfile.mkdtemp(prefix=f"renderfarm-{self.handle.job_id}-"))
        try:
            result = self._run(start)
        except RenderFarmError as exc:
            self.emit("job_cancelled" if isinstance(exc, CancelledError) else "job_failed",
                      message=exc.one_line(), data={"error": type(exc).__name__})
            self.handle._end(None, exc)
        except Exception as exc:  # never leave a handle hanging
            logger.exception("job %s crashed", self.handle.job_id)
            error = JobFailedError(f"internal error: {type(exc).__name__}: {exc}")
            self.emit("job_failed", message=error.one_line())
            self.handle._end(None, error)
        else:
            self.emit("job_done", data={"outputs": {str(k): str(v)
                                                    for k, v in result.outputs.items()}})
            self.handle._end(result, None)
        finally:
            if self.workdir is None:
                shutil.rmtree(self.scratch, ignore_errors=True)

    def _run(self, start: float) -> JobResult:
        spec = self.spec
        self.emit("job_queued")
        blend_hash = self._prepare_files()
        device = self.farm.resolve_device(spec.device)
        runner = self.farm._runner(device)
        if self.handle.cancelled:
            raise CancelledError("the job was cancelled")
        self.info = info = self._inspect(runner.pool, blend_hash)
        # what Blender itself reports missing after opening the file on a worker
        self._check_missing(info.missing_files, seen=self.known_missing)
        self.plan = plan = plan_job(spec, info, self.handle.job_id,
                                    workers=runner.pool.shape.workers)
        for note in plan.notes:
            logger.info("%s", note)
            self.emit("info", message=note)
        for warning in plan.warnings:
            logger.info("%s", warning)
            self.warnings.append(warning)
            self.emit("warning", message=warning)
        self.state = JobState(plan.tasks, spec.retries)
        self.final_format = spec.output_format
        self.piece_format = ("OPEN_EXR_MULTILAYER"
                             if plan.tiled or plan.post_denoise or plan.chunks > 1
                             else self.final_format)
        self.settings = RenderSettings(
            blend_path=os.path.abspath(spec.blend_file), blend_hash=blend_hash,
            scene=spec.scene if spec.scene is not None else info.scene,
            samples=spec.samples, percentage=spec.percentage, device=device,
            allow_scripts=spec.allow_scripts, compositing=plan.compositing,
            threads=runner.pool.shape.threads, post_denoise=plan.post_denoise,
            sample_chunks=plan.chunks > 1, post_composite=plan.post_composite,
            allow_missing=spec.allow_missing, files=spec.files)
        self.pool = runner.pool
        self.emit("job_started", data={"device": device, "workers": runner.pool.shape.workers,
                                       "tiles": list(plan.tiles), "overscan": plan.overscan,
                                       "chunks": plan.chunks,
                                       "size": list(plan.size),
                                       "canvas": [plan.canvas.x0, plan.canvas.y0,
                                                  plan.canvas.x1, plan.canvas.y1]})
        source = Source(key=blend_hash, next_task=self._next_task, call=self._call,
                        done=self._done, failed=self._failed, requeue=self._requeue,
                        backup=self._backup, pending=self._pending,
                        timeout=spec.task_timeout,
                        priority=self.priority, cancelled=self.handle._cancel)
        if self.handle._priority_changed:
            source.priority = self.handle._priority_changed[-1]
        self.handle._source = source
        if self.resume is not None:
            self._take_resume(self.resume)
        runner.add(source)
        try:
            while not self.ended.wait(0.1):
                if self.handle.cancelled:
                    break
                if source.fault is not None:
                    fault = source.fault
                    if isinstance(fault, RenderFarmError):
                        raise fault
                    raise JobFailedError(f"the job failed in its own code and was stopped "
                                         f"(other jobs go on): {type(fault).__name__}: {fault}")
                if self.farm.lost is not None:
                    raise self.farm.lost
                if runner.error is not None:
                    if isinstance(runner.error, RenderFarmError):
                        raise runner.error
                    raise JobFailedError(f"the dispatcher stopped: {runner.error}")
        finally:
            runner.remove(source)
            if source.fault is None and self.fatal is not None:
                source.fault = self.fatal  # a failed merge ended it: stop its running tasks
        for merge in list(self.merges):
            merge.exception()  # wait; errors are recorded in self.fatal
        if self.handle.cancelled:
            raise CancelledError("the job was cancelled; frames finished before that are kept")
        if self.fatal is not None:
            raise self.fatal
        return JobResult(
            job_id=self.handle.job_id, spec=spec, scene=info, frames=plan.frames,
            outputs=dict(sorted(self.outputs.items())), tasks=tuple(self.results),
            wall_seconds=time.monotonic() - start, device=device,
            workers=runner.pool.shape.workers, warnings=tuple(self.warnings), tiles=plan.tiles)

    def _take_resume(self, resume: Resume) -> None:
        """Mark what an earlier run finished as done; merge frames it left complete."""
        assert self.state is not None
        index = {(e.task.frame, e.task.tile.index, e.task.chunk): i
                 for i, e in self.state.entries.items()}
        complete: set[int] = set()
        for frame, path in resume.frames.items():
            found = [i for (f, _t, _c), i in index.items() if f == frame]
            if not found or not Path(path).is_file():
                continue
            for i in found:
                self.state.succeeded(i)
            self.outputs[frame] = Path(path)
            self._merged.add(frame)
            self.frames_done += 1
        for piece in resume.pieces:
            members = [index.get((piece.frame, t, piece.chunk)) for t in piece.tiles]
            if (piece.frame in self.outputs or None in members
                    or not Path(piece.path).is_file()):
                continue
            if any(self.state.entries[i].status is TaskStatus.DONE for i in members):
                continue
            for i in members:
                if self.state.succeeded(i):
                    complete.add(piece.frame)
            self.pieces.setdefault(piece.frame, []).append(
                (piece.chunk, Piece(Tile.from_dict(piece.tile), Path(piece.path))))
        if resume.frames or resume.pieces:
            self.emit("info", message=f"resumed: {len(self.outputs)} frame(s) and "
                      f"{self.state.count(TaskStatus.DONE)} task(s) already done")
        for frame in sorted(complete):
            self.merges.append(self.farm._merger.submit(self._merge, frame))
        self._check_end()

    def _inspect(self, pool: WorkerPool, blend_hash: str) -> SceneInfo:
        import ray

        spec = self.spec
        path = os.path.abspath(spec.blend_file)
        for attempt in range(spec.retries + 2):
            handle = pool.preferred(blend_hash)
            try:
                reply = ray.get(handle.actor.inspect.remote(
                    path, blend_hash, spec.allow_scripts, spec.scene, self.files_ref))
            except ray.exceptions.RayActorError:
                logger.warning("worker %s died while opening %s (attempt %d)",
                               handle.worker_id, path, attempt + 1)
                pool.replace(handle.worker_id)  # the next try prefers a started worker
                continue
            if reply.get("need_blob"):
                self._put_blob()
                continue
            info = scene_info_from(reply)
            handle.loaded = blend_hash
            return info
        raise BlendFileError("every worker that opened this file crashed; the file may be "
                             "damaged: open and save it again in Blender",
                             path=spec.blend_file, retryable=False)

    # -- dispatcher callbacks (dispatcher thread) --------------------------------------------
    def _next_task(self, worker: str, live: int) -> Task | None:
        faults.fire("driver.next_task", job_id=self.handle.job_id)
        if self.ended.is_set() or self.handle.paused:
            return None
        with self.lock:
            return self.state.next_for(worker, live, group=self.spec.group_tiles)

    def _call(self, handle: WorkerHandle, task: Task) -> Any:
        faults.fire("driver.call", job_id=self.handle.job_id, frame=task.frame)
        attempt = self.state.entries[task.index].attempts
        self.emit("task_started", frame=task.frame, tile=task.tile.index,
                  data={"worker": handle.worker_id, "attempt": attempt,
                        "tiles": self._tiles(task)})
        return handle.actor.render.remote(self.settings.to_dict(), self.piece_format,
                                          task.to_dict(), attempt, self.files_ref)

    def _done(self, handle: WorkerHandle, task: Task, value: Any) -> bool:
        faults.fire("driver.done", job_id=self.handle.job_id, frame=task.frame)
        if self.ended.is_set() or self.handle.cancelled:
            # the job has ended (cancelled, failed): its files may be gone; drop, count
            with self.lock:
                self.late_results += 1
            logger.info("job %s: result of %s arrived after the job ended; dropped",
                        self.handle.job_id, task.task_id)
            return True
        with self.lock:
            if self.state.all_done(task.members):
                self.duplicates += 1  # another copy (a straggler's backup) finished first
                return True
        reply, data = value
        if not reply.get("ok"):
            error = reply.get("error") or {}
            if error.get("need_blob"):
                self._put_blob()
                self._requeue(task)
                return True
            self._failed(handle, task, error_from(error), reply)
            return True
        path = self._piece_path(task)
        try:
            faults.fire("driver.store_piece", job_id=self.handle.job_id, frame=task.frame)
            path.write_bytes(data)
        except OSError as exc:
            raise OutputError(f"cannot store a finished piece where the farm keeps pieces "
                              f"({exc.strerror}); free space there (pieces stored so far are "
                              "kept)", path=str(path), frame=task.frame) from exc
        if self.on_piece is not None:  # the piece is on disk: a failing hook fails the job
            self.on_piece(task, path)
        self.results.append(TaskResult.from_dict(reply))
        with self.lock:
            self.pieces.setdefault(task.frame, []).append((task.chunk, Piece(task.tile, path)))
            frame_complete = any([self.state.succeeded(i) for i in task.members])
        self.emit("task_done", frame=task.frame, tile=task.tile.index,
                  data={**{k: reply.get(k) for k in ("worker", "render_seconds", "device")},
                        "tiles": self._tiles(task),
                        "piece": {"path": str(path), "chunk": task.chunk,
                                  "tile": task.tile.to_dict(), "size": list(task.size)}})
        if frame_complete:
            self.merges.append(self.farm._merger.submit(self._merge, task.frame))
        self._check_end()
        return True

    def _tiles(self, task: Task) -> list[int]:
        """The grid tiles a task renders (several when neighbouring tiles were grouped)."""
        assert self.state is not None
        return [self.state.entries[i].task.tile.index for i in task.members]

    def _pending(self) -> int:
        with self.lock:
            return self.state.count(TaskStatus.PENDING) if self.state is not None else 0

    def _backup(self, task: Task) -> bool:
        """Whether a lagging task may get a backup copy (once; not when paused or ended)."""
        if self.ended.is_set() or self.handle.paused:
            return False
        with self.lock:
            allowed = [self.state.backup(i) for i in task.members]
        return all(allowed)

    def _requeue(self, task: Task) -> None:
        faults.fire("driver.requeue", job_id=self.handle.job_id, frame=task.frame)
        with self.lock:
            for index in task.members:
                self.state.requeue(index)

    def _failed(self, handle: WorkerHandle, task: Task, error: RenderFarmError,
                reply: dict[str, Any] | None = None) -> None:
        faults.fire("driver.failed", job_id=self.handle.job_id, frame=task.frame)
        if self.ended.is_set():  # stopped because the job ended: nothing to record
            return
        with self.lock:
            if self.state.all_done(task.members):
                return  # the copy that lost to a backup (or the other way round)
        if error.frame is None:
            error.frame = task.frame
        if reply is not None:
            self.results.append(TaskResult.from_dict({**reply, "ok": False,
                                                      "error": error.to_dict()}))
        with self.lock:
            again = any([self.state.failed_attempt(i, error.one_line(), error.retryable)
                         for i in task.members])
        if again:
            self.emit("task_retry", frame=task.frame, tile=task.tile.index,
                      message=error.one_line())
        else:
            self.emit("task_failed", frame=task.frame, tile=task.tile.index,
                      message=error.one_line())
            if self.fatal is None and not isinstance(error, CancelledError):
                self.fatal = error
            if not error.retryable and not isinstance(error, CancelledError):
                # the same input fails on every worker: stop the job now
                with self.lock:
                    self.state.cancel_pending(error.one_line())
        self._check_end()

    def _check_end(self) -> None:
        with self.lock:
            finished = self.state.finished
        if finished:
            self.ended.set()

    # -- merging (merge threads) -------------------------------------------------------------
    def _piece_path(self, task: Task) -> Path:
        """Where the driver keeps a task's piece until its frame is merged."""
        return self.scratch / f"{task.task_id}{FORMAT_EXTENSIONS[self.piece_format]}"

    def _merge(self, frame: int) -> None:
        try:
            faults.fire("driver.merge", job_id=self.handle.job_id, frame=frame)
            if self.handle.cancelled:  # nothing more is written for a cancelled job
                return
            with self.lock:
                if frame in self._merged:  # never two merges of one frame
                    self.merged_twice += 1
                    logger.error("job %s: frame %d was to be merged twice; refused",
                                 self.handle.job_id, frame)
                    return
                self._merged.add(frame)
            target = output_path(self.spec.output, frame)
            with self.lock:
                found = self.pieces.pop(frame)
            pieces = [piece for _chunk, piece in found]
            split = self.plan.tiled or self.plan.chunks > 1
            if not split and not self.plan.post_denoise:
                write_atomically(target, lambda tmp: shutil.move(pieces[0].path, tmp))
            elif (self.plan.post_denoise or self.plan.post_composite
                  or self.final_format != "OPEN_EXR_MULTILAYER"):
                merged = self._merge_frame(found, frame)
                self._finish(merged, frame, target)
            else:
                merged = self._merge_frame(found, frame)
                write_atomically(target, lambda tmp: shutil.move(merged, tmp))
            for piece in pieces:
                piece.path.unlink(missing_ok=True)
            with self.lock:
                self.outputs[frame] = target
                self.frames_done += 1
            self.emit("frame_merged", frame=frame, data={"path": str(target)})
        except RenderFarmError as exc:
            exc.frame = frame
            self._abort(exc)
        except Exception as exc:
            self._abort(MergeError(f"{type(exc).__name__}: {exc}", frame=frame))

    def _abort(self, error: RenderFarmError) -> None:
        """End the job now with ``error`` (a merge or a write failed): nothing more starts,
        running tasks are stopped, frames merged so far are kept."""
        self.emit("task_failed", frame=error.frame, message=error.one_line())
        with self.lock:
            self.fatal = self.fatal or error
            if self.state is not None:
                self.state.cancel_pending(error.one_line())
        self.ended.set()

    def _merge_frame(self, found: list[tuple[int, Piece]], frame: int) -> Path:
        """One multilayer EXR of the frame from its pieces: tiles placed, sample ranges
        combined."""
        chunks: dict[int, list[Piece]] = {}
        for chunk, piece in found:
            chunks.setdefault(chunk, []).append(piece)
        frames = []
        for chunk in sorted(chunks):
            path = self.scratch / f"frame-{frame}-c{chunk}.exr"
            if self.plan.tiled:
                merge_pieces(chunks[chunk], self.plan.canvas, path)
            else:
                shutil.move(chunks[chunk][0].path, path)
            frames.append(path)
        if len(frames) == 1:
            return frames[0]
        merged = self.scratch / f"frame-{frame}.exr"
        lengths = [r[1] for r in self.plan.sample_ranges if r is not None]
        combine_samples(frames, lengths, merged)
        for path in frames:
            path.unlink(missing_ok=True)
        added = added_colour_passes(self.info)
        if added:  # colour passes rendered only to combine light passes exactly
            trimmed = self.scratch / f"frame-{frame}-trimmed.exr"
            drop_parts(merged, trimmed, added)
            merged.unlink()
            return trimmed
        return merged

    def _finish(self, merged: Path, frame: int, target: Path) -> None:
        """Let a worker denoise and/or convert the merged frame."""
        import ray

        payload = merged.read_bytes()
        extension = FORMAT_EXTENSIONS[self.final_format]
        for _attempt in range(self.spec.retries + 2):
            handle = self.pool.preferred(self.settings.blend_hash)
            try:
                data = ray.get(handle.actor.finish.remote(
                    self.settings.to_dict(), payload, self.final_format, extension,
                    self.files_ref))
                if data is None:  # the worker cannot reach the job's files: send them
                    self._put_blob()
                    continue
                break
            except ray.exceptions.RayActorError:
                self.pool.replace(handle.worker_id)
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, RenderFarmError) else None
                raise cause or MergeError(str(exc), frame=frame) from exc
        else:
            raise MergeError("every worker died while finishing the frame", frame=frame)
        write_atomically(target, lambda tmp: tmp.write_bytes(data))
        merged.unlink(missing_ok=True)
