"""The farm: plan -> dispatch -> collect -> merge -> report, for jobs on a Ray cluster.

:class:`Farm` owns the connection to Ray, pools of long-lived workers (one pool per device
kind) and a dispatcher thread per pool. :meth:`Farm.submit` checks a job, returns a
:class:`JobHandle` at once and runs the job in the background; several jobs can run at once
and share the workers.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from renderfarm.bundle import MAX_BUNDLE_BYTES, BundleCache, Manifest, publish
from renderfarm.dispatcher import PoolRunner
from renderfarm.errors import (
    ClusterLostError,
    InputError,
    LimitError,
    missing_error,
)
from renderfarm.executor import (
    START_TIMEOUT,
    PoolShape,
    WorkerPool,
    autoscaled_shape,
    cluster_resources,
    plan_pool,
)
from renderfarm.frames import parse_frames
from renderfarm.handle import JobHandle, Resume
from renderfarm.job import (
    JobResult,
    JobSpec,
    Task,
    check_verify,
    is_output_folder,
    new_job_id,
    output_path,
)
from renderfarm.jobfiles import check_output_folder
from renderfarm.jobrun import JobRun
from renderfarm.pieces import PIECES_MODES, on_nodes

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
        autoscale: ask Ray's autoscaler for the workers the queue can keep busy
            (``request_resources``, one bundle of a worker's shape per worker) and release
            workers the queue no longer needs, so their nodes go back after the autoscaler's
            idle timeout; the cluster may start with no render node.
        max_workers: the most workers the farm asks for per pool (None: no bound but the
            autoscaler's own).
        wait_for_workers: seconds a job waits for its first worker before it fails, naming
            what the farm asked for.
        release_after: seconds an idle worker is kept, with ``autoscale``, while the queue
            wants fewer workers than the farm has (a short wait between two jobs keeps their
            workers).
        keep_warm: leave the workers running when the farm shuts down, for the next farm
            of this cluster to take over (the local farm commands share:
            :mod:`renderfarm.local_farm`).
        pieces: where finished pieces are kept, merged, checked and previewed: ``head``
            (they come to the driver), ``nodes`` (they stay on the nodes that rendered them:
            :mod:`renderfarm.pieces`), ``auto`` (nodes when the cluster has more than one
            node, or the driver's node has no CPU for a worker).
        node_merges: frames merged at once on the nodes (pieces on nodes: the driver's
            threads only wait for them).
        store_node_pieces: with pieces on the nodes, a job whose pieces are kept for a
            restart (``workdir``: the service's) has the node that rendered each piece also
            write it there, when that node sees that folder (a shared file system: a marker
            tells), so that a restart renders only what was not finished; False: such a
            restart renders the unfinished frames' pieces again, and the file server takes
            half the writes.
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
    autoscale: bool = False
    max_workers: int | None = None
    wait_for_workers: float = 600.0
    release_after: float = 10.0
    keep_warm: bool = False
    pieces: str = "auto"
    node_merges: int = 64
    store_node_pieces: bool = True


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


class Farm:
    """Renders jobs on a Ray cluster with long-lived Blender workers.

    Args:
        address: Ray address; None starts Ray on this machine (the embedded default).
        workers: workers per pool (see :class:`FarmConfig`).
        cpus_per_worker: CPUs per CPU worker.
        permit_scripts: allow jobs that ask to run scripts embedded in ``.blend`` files.
        config: all settings at once (the other arguments override it).
        worker_class: the worker actor class (tests and benchmarks may swap it).
        pool_class: makes the farm's worker pools (takes :class:`WorkerPool`'s arguments;
            the scale benchmark's simulated GPUs share a few processes this way).

    Use it as a context manager, or call :meth:`shutdown`, so no worker is left behind.
    """

    def __init__(self, address: str | None = None, *, workers: int | None = None,
                 cpus_per_worker: float | None = None, permit_scripts: bool | None = None,
                 config: FarmConfig | None = None, worker_class: type | None = None,
                 pool_class: Callable[..., WorkerPool] = WorkerPool) -> None:
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
        self.pool_class = pool_class
        self._started_ray = False
        self._runners: dict[str, PoolRunner] = {}
        self._lock = threading.Lock()
        if self.config.pieces not in PIECES_MODES:
            raise InputError(f"pieces must be one of {', '.join(PIECES_MODES)}, not "
                             f"{self.config.pieces!r}")
        self._merger = ThreadPoolExecutor(self.config.merge_threads,
                                          thread_name_prefix="renderfarm-merge")
        self._node_merger: ThreadPoolExecutor | None = None
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
            if self.config.keep_warm:  # the local farm later commands reuse
                raise InputError(f"cannot connect to the local farm's Ray at {address!r} "
                                 f"({exc}); run 'renderfarm local-farm stop' and try again, "
                                 "or set RENDERFARM_LOCAL_FARM=off") from exc
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
            runner.close(patience)
            runner.pool.close(runner.occupied())
        self._runners.clear()
        self._merger.shutdown(wait=self.lost is None)
        if self._node_merger is not None:
            self._node_merger.shutdown(wait=self.lost is None)
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
        out = []
        for runner in self.runners():
            out += [h.describe() for h in runner.pool.handles()]
        return sorted(out, key=lambda w: w["worker"])

    def set_worker(self, worker_id: str, enabled: bool, reason: str = "") -> dict[str, Any]:
        """Disable a worker (no more tasks for it) or enable it again.

        Raises:
            InputError: there is no such worker.
        """
        for runner in self.runners():
            if worker_id in runner.pool.workers:
                return runner.set_enabled(worker_id, enabled, reason).describe()
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
        # Ray says nothing public of its own processes' health: its private module does
        worker = ray._private.worker.global_worker  # noqa: SLF001 - Ray's, no public twin
        node = getattr(ray._private.worker, "_global_node", None)  # noqa: SLF001
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
        if self.config.autoscale:  # the cluster may have no node yet: the shape is asked
            return autoscaled_shape(device, self.config.cpus_per_worker)
        cpus, gpus = cluster_resources()
        return plan_pool(device, cpus, gpus, self.config.workers, self.config.cpus_per_worker)

    def resolve_device(self, device: str) -> str:
        """``auto`` becomes ``gpu`` when the cluster has a GPU, else ``cpu``."""
        if device != "auto":
            return device
        return "gpu" if cluster_resources()[1] >= 1 else "cpu"

    def runner(self, device: str) -> PoolRunner:
        """The pool of ``device`` workers with its dispatcher (started on first use).

        Raises:
            ClusterLostError: the farm's Ray cluster failed.
        """
        if self.lost is not None:
            raise self.lost
        with self._lock:
            runner = self._runners.get(device)
            if runner is not None and isinstance(runner.error, ClusterLostError):
                raise runner.error
            if runner is None or runner.error is not None:
                if runner is not None:  # a failed one: its workers and its request go
                    try:
                        runner.pool.kill_all()
                    except Exception:  # Ray going away
                        logger.debug("the failed pool's workers could not be stopped",
                                     exc_info=True)
                kwargs = {"actor_class": self.worker_class} if self.worker_class else {}
                # no worker count given: the pool follows the cluster (one worker per node,
                # or per GPU, as nodes come and go); a count given is kept
                pool = self.pool_class(
                    self.pool_shape(device), start_timeout=self.config.start_timeout,
                    elastic=self.config.workers is None and not self.config.autoscale,
                    autoscale=self.config.autoscale, max_workers=self.config.max_workers,
                    keep_warm=self.config.keep_warm, **kwargs)
                pool.start()
                runner = PoolRunner(pool, release_after=self.config.release_after
                                    if self.config.autoscale else None)
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
                can be merged away (on the job's own thread: a slow hook slows this job only).
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

    def runners(self) -> list[PoolRunner]:
        """The farm's pools with their dispatchers, one per device class in use."""
        with self._lock:
            return list(self._runners.values())

    @property
    def merger(self) -> ThreadPoolExecutor:
        """The farm's threads that merge and finish frames (every job's)."""
        return self._merger

    @property
    def node_merger(self) -> ThreadPoolExecutor:
        """The farm's threads that wait for frames merged on the nodes (pieces on nodes)."""
        with self._lock:
            if self._node_merger is None:
                self._node_merger = ThreadPoolExecutor(
                    self.config.node_merges, thread_name_prefix="renderfarm-node-merge")
            return self._node_merger

    def pieces_on_nodes(self) -> bool:
        """Whether a job starting now keeps its pieces on the nodes
        (:attr:`FarmConfig.pieces`)."""
        if self.config.pieces != "auto":
            return self.config.pieces == "nodes"
        import ray

        return on_nodes(ray.nodes(), ray.get_runtime_context().get_node_id())

    def forget(self, handle: JobHandle) -> None:
        """A job has ended: the farm keeps nothing of it (its plan and state go with the
        handle, which only its caller holds now)."""
        with self._lock:
            if handle in self._jobs:
                self._jobs.remove(handle)
            runners = list(self._runners.values())
        for runner in runners:  # the worker it held for its own calls is free
            runner.unhold(handle.job_id)

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
