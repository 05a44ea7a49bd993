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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from renderfarm.bundle import MAX_BUNDLE_BYTES, BundleCache, Manifest, missing_error, publish
from renderfarm.errors import (
    ClusterLostError,
    InputError,
    LimitError,
    RenderFarmError,
)
from renderfarm.events import Event
from renderfarm.executor import (
    START_TIMEOUT,
    PoolShape,
    Source,
    WorkerPool,
    cluster_resources,
    dispatch,
    new_job_id,
    plan_pool,
)
from renderfarm.frames import parse_frames
from renderfarm.job import (
    JobResult,
    JobSpec,
    Task,
    check_verify,
    is_output_folder,
    output_path,
)
from renderfarm.jobfiles import check_output_folder
from renderfarm.jobrun import JobRun

logger = logging.getLogger(__name__)


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
        max_tasks: the most tasks one job may plan (frames x tiles x sample chunks).
        max_samples: the most samples per pixel a job may ask for.
        max_pixels: the largest frame (width x height, after the resolution percentage).
        default_task_timeout: seconds a task may run when its job gives no timeout (None:
            no limit).
        verify: the share of pieces checked on another worker when a job does not say
            (``--verify``; 0: none).
        verify_tolerance: how far two renders of a piece may differ per value and still
            agree (0: bit for bit, right for CPU workers, whose renders are exact).
        prices: price per device-hour for the job reports' cost, by device (``CPU`` per
            core-hour, a GPU by its name as Cycles reports it, e.g. ``OPTIX:NVIDIA A10``);
            ``*`` for any device not named.
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
    max_tasks: int = 1_000_000
    max_samples: int = 2**24
    max_pixels: int = 2**30
    default_task_timeout: float | None = None
    verify: float = 0.0
    verify_tolerance: float = 0.0
    prices: dict[str, float] | None = None


def _private_token() -> None:
    """Make Ray's token file (and its folder) readable by this user only: the token lets
    anyone who reads it join the cluster and run code on every node."""
    folder = Path.home() / ".ray"
    for path, mode in ((folder, 0o700), (folder / "auth_token", 0o600)):
        try:
            if path.exists() and path.stat().st_uid == os.getuid():
                path.chmod(mode)
        except OSError as exc:
            logger.warning("cannot make %s private (%s)", path, exc)


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
    if spec.samples is not None and spec.samples > config.max_samples:
        raise LimitError(f"the job asks for {spec.samples} samples; this farm allows at most "
                         f"{config.max_samples}", limit="samples", path=path)
    tasks = estimate_tasks(spec)
    if tasks is not None and tasks > config.max_tasks:
        raise LimitError(f"the job plans {tasks} tasks (frames x tiles x sample chunks); this "
                         f"farm allows at most {config.max_tasks} per job: render fewer "
                         "frames, a coarser tile grid or fewer chunks", limit="tasks_per_job",
                         path=path)
    if spec.allow_scripts and not config.permit_scripts:
        raise InputError(
            "the job asks to run Python scripts embedded in the file, but this farm does not "
            "permit it; start the farm with scripts permitted (--permit-scripts) or render "
            "without --allow-scripts", path=path)
    check_verify(config.verify)
    if spec.output is not None:  # None: the scene's own path, checked once it is known
        check_output_folder(Path(spec.output) if is_output_folder(spec.output)
                            else output_path(spec.output, 0).parent)


def estimate_tasks(spec: JobSpec) -> int | None:
    """The number of tasks a job plans at most, when the spec alone tells (its frames are
    given and its tile grid is not ``auto``); None otherwise (the plan checks it)."""
    if spec.frames is None or spec.tiles == (0, 0):
        return None
    frames = len(parse_frames(spec.frames))
    return frames * spec.tiles[0] * spec.tiles[1] * max(spec.chunks, 1)


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
    #: frames this run leaves alone (a requeue of chosen frames renders only those)
    skip: frozenset[int] = frozenset()


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

    def eta(self) -> float | None:
        """Seconds the job still needs at the pace of its own tasks, or None before its
        first task has finished and while it is paused (it needs time only once resumed)."""
        if self.done():
            return 0.0
        if self.paused:
            return None
        return self._run.eta() if self._run is not None else None

    def snapshot(self) -> dict[str, Any]:
        """What the job has recorded so far (see :meth:`JobRun.snapshot`), also after it
        failed or was cancelled."""
        if self._run is None:
            return {"job_id": self.job_id, "spec": self.spec.to_dict()}
        return dict(self._run.snapshot())

    def report(self, prices: dict[str, float] | None = None, client: str = "") -> dict[str, Any]:
        """The job's report (:func:`renderfarm.report.build_report`): device-seconds and cost
        per piece, worker, device and job, verification, outputs' SHA-256.

        Args:
            prices: price per device-hour (default: the farm's ``prices``).
            client: who submitted the job.
        """
        from renderfarm.report import build_report

        if prices is None and self._run is not None:
            prices = self._run.farm.config.prices
        state = ("running" if not self.done() else "cancelled" if self.cancelled
                 else "failed" if self._error is not None else "done")
        return build_report(self.snapshot(), client=client, name=self.spec.name, state=state,
                            prices=prices)

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
        """Start no more renders of this job; running ones finish and are kept, and frames
        whose pieces are in are still merged and written (with their checks, under
        ``verify``)."""
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
        mask = os.umask(0o077)  # Ray writes its token file (~/.ray/auth_token) as it starts
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            raise InputError(f"cannot connect to the Ray cluster at {address!r} ({exc}); "
                             "check --address and that the cluster is up") from exc
        finally:
            os.umask(mask)
        _private_token()
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
        with self._lock:
            jobs = list(self._jobs)
        for handle in jobs:
            handle.cancel()
        for handle in jobs:
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
    def workers(self) -> list[dict[str, Any]]:
        """Every worker of the farm's pools: node, device, state (idle, busy, starting,
        suspect, disabled), tasks done, failures, why it is out."""
        with self._lock:
            runners = list(self._runners.values())
        out = []
        for runner in runners:
            with runner.pool._lock:
                handles = list(runner.pool.workers.values())
            out += [h.describe() for h in handles]
        return sorted(out, key=lambda w: w["worker"])

    def set_worker(self, worker_id: str, enabled: bool, reason: str = "") -> dict[str, Any]:
        """Disable a worker (no more tasks for it) or enable it again.

        Raises:
            InputError: there is no such worker.
        """
        with self._lock:
            runners = list(self._runners.values())
        for runner in runners:
            if worker_id in runner.pool.workers:
                return runner.pool.set_enabled(worker_id, enabled, reason).describe()
        raise InputError(f"no worker {worker_id!r} on this farm (the workers: "
                         f"{', '.join(w['worker'] for w in self.workers()) or 'none'})")

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
               on_piece: Callable[[Task, Path], None] | None = None,
               on_result: Callable[[Any], None] | None = None,
               frame_gate: Callable[[int], bool] | None = None,
               outputs_folder: Path | None = None) -> JobHandle:
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
            on_result: called with each :class:`~renderfarm.job.TaskResult` the job records
                (every worker call: its timing and Blender's output), on the thread that
                recorded it (keep it short).
            frame_gate: whether a frame may render yet (called often: keep it a lookup);
                frames it refuses wait, the others go on.
            outputs_folder: the folder the job's files are delivered from (the farm
                service's folder of the job): the files of the scene's File Output nodes
                go inside it, at their paths relative to the project. Default: the output's
                folder when ``spec.output`` names one, else the project itself.

        Raises:
            InputError: the job is wrong before anything runs (file, frames, output).
        """
        check_spec(spec, self.config)
        transfer: dict[str, int] = {}
        if spec.files == "bundle" and spec.bundle is None:
            spec, transfer = self.bundle(spec)
        handle = JobHandle(job_id or new_job_id(), spec)
        handle.transfer = transfer
        with self._lock:
            self._jobs.append(handle)
        run = JobRun(self, handle, priority, workdir=workdir, resume=resume,
                      on_piece=on_piece, on_result=on_result, frame_gate=frame_gate,
                      outputs_folder=outputs_folder)
        thread = threading.Thread(target=run.run,
                                  name=f"renderfarm-job-{handle.job_id}", daemon=True)
        thread.start()
        return handle

    def _forget(self, handle: JobHandle) -> None:
        """A job has ended: the farm keeps nothing of it (its plan and state go with the
        handle, which only its caller holds now)."""
        with self._lock:
            if handle in self._jobs:
                self._jobs.remove(handle)

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
