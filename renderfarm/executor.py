"""The Ray side: worker actors, the pool that keeps them alive, and the dispatcher.

Workers are long-lived Ray actors that keep a ``.blend`` loaded between tasks. The dispatcher
gives a worker its next task only when it is free, so fast workers do more; it prefers a worker
that already has the task's file loaded, retries failed tasks on other workers, replaces dead
workers and stops tasks that exceed their timeout.

Ray is imported inside functions so that ``import renderfarm`` stays light.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from renderfarm.errors import (
    CancelledError,
    RenderError,
    RenderFarmError,
    ResourceError,
    TaskTimeoutError,
    WorkerDiedError,
)
from renderfarm.job import FORMAT_EXTENSIONS, RenderSettings, SceneInfo, Task

logger = logging.getLogger(__name__)

#: seconds to wait for workers to start before calling the cluster too small
START_TIMEOUT = 180.0


def file_hash(path: str) -> str:
    """SHA-256 of a file's content (workers cache loaded scenes by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _error_dict(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, RenderFarmError):
        return exc.to_dict()
    tail = "".join(traceback.format_exception(exc)[-6:])
    return RenderError(f"{type(exc).__name__}: {exc}", log_tail=tail).to_dict()


# ------------------------------------------------------------------------------------------
# the worker actor
# ------------------------------------------------------------------------------------------
class BlenderWorker:
    """A Ray actor that keeps a scene loaded and renders tasks (one per call, main thread).

    Args:
        worker_id: a name for reports.
    """

    def __init__(self, worker_id: str) -> None:
        import ray

        from renderfarm.blender.session import BlenderSession

        self.worker_id = worker_id
        self.node = ray.get_runtime_context().get_node_id()
        gpu_ids = ray.get_gpu_ids()
        self.session = BlenderSession([int(g) for g in gpu_ids] if gpu_ids else None)
        self.scratch = tempfile.mkdtemp(prefix="renderfarm-worker-")
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._paths: dict[str, str] = {}
        self._bundles: list[str] = []
        self._storages: dict[str, Any] = {}
        self._cache: Any = None
        self._counter = itertools.count()

    def ping(self) -> dict[str, Any]:
        """Who and where this worker is."""
        return {"worker": self.worker_id, "node": self.node, "pid": os.getpid(),
                "loaded": self.session.loaded_hash}

    def _blend_path(self, path: str, blend_hash: str,
                    files: dict[str, Any] | None) -> str | None:
        """A local path of the job's ``.blend``, or None when the driver must send the files
        through Ray's object store (this node sees neither its path nor the farm's storage).

        ``files`` says how the job's files travel: ``{"mode": "bundle", "manifest": ...,
        "storage": url, "refs": {sha: ref}}`` lays the bundle out from this node's cache,
        filled from the farm's storage; ``{"mode": "shared", "blob": [ref]}`` uses the
        driver's own path when this node sees the same file, else a copy of the file.
        """
        files = files or {}
        if files.get("mode") == "bundle":
            return self._bundle_root(blend_hash, files)
        if blend_hash in self._paths and os.path.isfile(self._paths[blend_hash]):
            return self._paths[blend_hash]
        if os.path.isfile(path):
            stat = os.stat(path)
            key = (path, stat.st_size, stat.st_mtime_ns)
            if key not in self._hashes:
                self._hashes[key] = file_hash(path)
            if self._hashes[key] == blend_hash:
                self._paths[blend_hash] = path
                return path
        blob = files.get("blob") or ()
        if not blob:
            return None
        import ray

        data = ray.get(blob[0])
        folder = os.path.join(self.scratch, "blends", blend_hash)
        os.makedirs(folder, exist_ok=True)
        local = os.path.join(folder, os.path.basename(path))
        with open(local, "wb") as handle:
            handle.write(data)
        self._paths[blend_hash] = local
        return local

    def _bundle_root(self, key: str, files: dict[str, Any]) -> str | None:
        """Lay the job's bundle out from the node cache; its root ``.blend``'s path."""
        from renderfarm.bundle import (
            Manifest,
            NodeCache,
            default_cache_bytes,
            default_cache_root,
            materialise,
        )

        known = self._paths.get(key)
        if known is not None and os.path.isfile(known):
            return known
        manifest = Manifest.from_dict(files.get("manifest"))  # checked here too: untrusted
        download = self._downloader(files)
        if download is None:
            return None
        if self._cache is None:
            self._cache = NodeCache(default_cache_root(), default_cache_bytes())
        cache = self._cache
        root = materialise(manifest, os.path.join(self.scratch, "bundles", key),
                           lambda entry: cache.get(entry.sha256, entry.size,
                                                   lambda tmp: download(entry.sha256, tmp)))
        self._paths[key] = str(root)
        self._bundles.append(key)
        while len(self._bundles) > 4:  # keep the latest few bundles laid out
            old = self._bundles.pop(0)
            self._paths.pop(old, None)
            shutil.rmtree(os.path.join(self.scratch, "bundles", old), ignore_errors=True)
        return str(root)

    def _downloader(self, files: dict[str, Any]) -> Callable[[str, Any], None] | None:
        """How this node gets a file by hash: straight from the farm's storage when it can
        reach it, else from Ray's object store (None when the driver must put them there)."""
        from pathlib import Path

        from renderfarm.bundle import storage_key

        refs = files.get("refs")
        url = str(files.get("storage") or "")
        if url.startswith("s3://") or (url and os.path.isdir(url)):
            if url not in self._storages:
                from renderfarm.storage import open_storage

                self._storages[url] = open_storage(url)
            storage = self._storages[url]
            return lambda sha, tmp: storage.get_file(storage_key(sha), Path(tmp))
        if not refs:
            return None
        import ray

        def from_refs(sha: str, tmp: Any) -> None:
            if sha not in refs:
                raise RenderError(f"the driver sent no file with SHA-256 {sha[:12]}…")
            Path(tmp).write_bytes(ray.get(refs[sha]))

        return from_refs

    def inspect(self, path: str, blend_hash: str, allow_scripts: bool, scene: str | None,
                files: dict[str, Any] | None = None) -> dict[str, Any]:
        """Open the file (if needed) and return the scene's facts."""
        try:
            local = self._blend_path(path, blend_hash, files)
            if local is None:
                return {"ok": False, "need_blob": True}
            info = self.session.info(local, blend_hash, allow_scripts, scene)
            return {"ok": True, "info": info.to_dict()}
        except Exception as exc:  # reported to the driver, never fatal to the worker
            return {"ok": False, "error": _error_dict(exc)}

    def render(self, settings: dict[str, Any], output_format: str, task: dict[str, Any],
               attempt: int, files: dict[str, Any] | None = None
               ) -> tuple[dict[str, Any], bytes | None]:
        """Render one task and return its result and the piece's bytes."""
        job_settings = RenderSettings.from_dict(settings)
        the_task = Task.from_dict(task)
        base = {"task_index": the_task.index, "frame": the_task.frame,
                "tile": the_task.tile.index, "worker": self.worker_id, "node": self.node,
                "attempt": attempt, "started": time.time(), "covers": list(the_task.covers)}
        start = time.perf_counter()
        piece = os.path.join(self.scratch,
                             f"piece-{next(self._counter)}{FORMAT_EXTENSIONS[output_format]}")
        try:
            local = self._blend_path(job_settings.blend_path, job_settings.blend_hash, files)
            if local is None:
                return {**base, "ok": False, "error": {"need_blob": True}}, None
            load = self.session.prepare(local, job_settings, output_format)
            stats = self.session.render(the_task, piece)
            with open(piece, "rb") as handle:
                data = handle.read()
            return {**base, "ok": True, "device": self.session.device_label,
                    "render_seconds": stats.render_seconds, "load_seconds": load,
                    "task_seconds": time.perf_counter() - start, "finished": time.time(),
                    "peak_memory_mb": stats.peak_memory_mb, "rss_mb": stats.rss_mb}, data
        except Exception as exc:  # reported to the driver, never fatal to the worker
            error = _error_dict(exc)
            error["frame"] = the_task.frame
            error["tile"] = the_task.tile.index
            return {**base, "ok": False, "task_seconds": time.perf_counter() - start,
                    "error": error}, None
        finally:
            if os.path.exists(piece):
                os.remove(piece)

    def finish(self, settings: dict[str, Any], merged_exr: bytes, file_format: str,
               extension: str, files: dict[str, Any] | None = None) -> bytes | None:
        """Finish a merged frame (multilayer EXR): denoise it when the job renders noisy
        pieces, and write it in ``file_format`` with the colour management of the job's scene;
        return the file's bytes (None when this worker needs the job's files sent)."""
        job_settings = RenderSettings.from_dict(settings)
        local = self._blend_path(job_settings.blend_path, job_settings.blend_hash, files)
        if local is None:
            return None  # the driver puts the files in Ray's object store and asks again
        self.session.prepare(local, job_settings, "OPEN_EXR_MULTILAYER")
        number = next(self._counter)
        source = os.path.join(self.scratch, f"finish-{number}.exr")
        target = os.path.join(self.scratch, f"finish-{number}{extension}")
        try:
            with open(source, "wb") as handle:
                handle.write(merged_exr)
            self.session.finish(source, target, file_format)
            with open(target, "rb") as handle:
                return handle.read()
        finally:
            for name in (source, target):
                if os.path.exists(name):
                    os.remove(name)

    def shutdown(self) -> None:
        """Remove this worker's scratch files."""
        shutil.rmtree(self.scratch, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# sizing the pool
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolShape:
    """How many workers a pool has and what each asks Ray for."""

    device: str
    workers: int
    num_cpus: float
    num_gpus: float
    threads: int


def plan_pool(device: str, node_cpus: Sequence[float], total_gpus: float,
              workers: int | None = None, cpus_per_worker: float | None = None) -> PoolShape:
    """Decide the pool's shape from the cluster's resources. Pure.

    Args:
        device: ``"cpu"`` or ``"gpu"``.
        node_cpus: CPUs of each alive node.
        total_gpus: GPUs in the cluster.
        workers: workers wanted (None: one per GPU, or one per node for CPU).
        cpus_per_worker: CPUs each CPU worker takes (None: the node's CPUs shared out).

    Raises:
        ResourceError: the cluster cannot hold even one such worker.
    """
    if device == "gpu":
        if total_gpus < 1:
            raise ResourceError(
                "this job asks for GPU workers but the Ray cluster has no GPU; render with "
                "--device cpu, or connect to a cluster with GPU nodes (--address)")
        count = workers or int(total_gpus)
        if count > total_gpus:
            raise ResourceError(
                f"{count} GPU workers asked but the Ray cluster has {total_gpus:g} GPUs; "
                "ask for fewer workers")
        return PoolShape("gpu", count, 1.0, 1.0, 0)
    cpus = [c for c in node_cpus if c > 0]
    if not cpus:
        raise ResourceError("the Ray cluster has no CPU to run workers on")
    count = workers or len(cpus)
    if cpus_per_worker is None:
        cpus_per_worker = max(1.0, math.floor(sum(cpus) / count)) if count <= sum(cpus) \
            else sum(cpus) / count
        cpus_per_worker = min(cpus_per_worker, max(cpus))
    if cpus_per_worker > max(cpus):
        raise ResourceError(
            f"each worker asks for {cpus_per_worker:g} CPUs but the largest node has "
            f"{max(cpus):g}; ask for fewer CPUs per worker")
    return PoolShape("cpu", count, float(cpus_per_worker), 0.0,
                     max(1, int(cpus_per_worker)))


def cluster_resources() -> tuple[list[float], float]:
    """CPUs of each alive node and the total GPUs of the connected Ray cluster."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = [float(n.get("Resources", {}).get("CPU", 0.0)) for n in nodes]
    gpus = sum(float(n.get("Resources", {}).get("GPU", 0.0)) for n in nodes)
    return cpus, gpus


# ------------------------------------------------------------------------------------------
# the pool
# ------------------------------------------------------------------------------------------
@dataclass
class WorkerHandle:
    """The driver's view of one worker."""

    worker_id: str
    actor: Any
    loaded: str | None = None
    busy: bool = False
    node: str = ""
    tasks_done: int = 0


class WorkerPool:
    """Long-lived worker actors of one shape; dead ones are replaced on demand.

    Args:
        shape: how many workers and what each asks for.
        actor_class: the actor's class (``BlenderWorker``, or a synthetic stand-in for
            scheduler benchmarks); it must take ``worker_id`` and answer ``ping()``.
        start_timeout: seconds to wait for workers to start.
    """

    def __init__(self, shape: PoolShape, actor_class: type = BlenderWorker,
                 start_timeout: float = START_TIMEOUT) -> None:
        self.shape = shape
        self.actor_class = actor_class
        self.start_timeout = start_timeout
        self.workers: dict[str, WorkerHandle] = {}
        self._numbers = itertools.count(1)
        self._remote: Any = None
        # the dispatcher, job threads (inspect) and merge threads (convert) all replace
        # workers; without the lock two of them could replace the same one and grow the pool
        # past its shape, leaving an actor that never gets resources and a call that waits
        # on it forever
        self._lock = threading.RLock()

    def _new_actor(self) -> WorkerHandle:
        import ray

        if self._remote is None:
            self._remote = ray.remote(self.actor_class)
        worker_id = f"{self.shape.device}-{next(self._numbers)}"
        actor = self._remote.options(
            num_cpus=self.shape.num_cpus, num_gpus=self.shape.num_gpus, max_restarts=0,
            max_concurrency=1, name=None,
        ).remote(worker_id)
        handle = WorkerHandle(worker_id, actor)
        self.workers[worker_id] = handle
        return handle

    def start(self) -> None:
        """Start the missing workers and wait until each answers.

        Raises:
            ResourceError: the workers did not start in time (the cluster lacks resources).
        """
        import ray

        with self._lock:
            fresh = [self._new_actor() for _ in range(self.shape.workers - len(self.workers))]
        if not fresh:
            return
        pings = {h.actor.ping.remote(): h for h in fresh}
        ready, waiting = ray.wait(list(pings), num_returns=len(pings),
                                  timeout=self.start_timeout)
        for ref in ready:
            handle = pings[ref]
            try:
                handle.node = ray.get(ref)["node"]
            except Exception as exc:
                self.kill_all()
                raise ResourceError(f"a worker failed to start: {exc}") from exc
        if waiting:
            self.kill_all()
            raise ResourceError(
                f"{len(waiting)} of {len(pings)} workers did not start within "
                f"{self.start_timeout:g} s (each asks for {self.shape.num_cpus:g} CPU, "
                f"{self.shape.num_gpus:g} GPU); the cluster lacks free resources")

    def replace(self, worker_id: str) -> WorkerHandle | None:
        """Kill a worker (if alive) and start another in its place.

        Returns:
            The new worker, or None when ``worker_id`` had been replaced already (by another
            thread) or the pool is full.
        """
        with self._lock:
            if worker_id not in self.workers:
                return None
            self.kill(worker_id)
            if len(self.workers) >= self.shape.workers:
                return None
            return self._new_actor()

    def kill(self, worker_id: str) -> None:
        """Kill one worker."""
        import ray

        with self._lock:
            handle = self.workers.pop(worker_id, None)
        if handle is not None:
            try:
                ray.kill(handle.actor, no_restart=True)
            except Exception:  # already dead
                logger.debug("worker %s was already gone", worker_id)

    def kill_all(self) -> None:
        """Kill every worker of the pool."""
        for worker_id in list(self.workers):
            self.kill(worker_id)

    def preferred(self, blend_hash: str) -> WorkerHandle:
        """A worker for a one-off call on a file: one that has it loaded, else an idle one."""
        with self._lock:
            handles = list(self.workers.values())
        handles.sort(key=lambda h: (h.loaded != blend_hash, h.busy, h.tasks_done))
        return handles[0]


# ------------------------------------------------------------------------------------------
# dispatch
# ------------------------------------------------------------------------------------------
@dataclass
class Source:
    """Work from one job, as the dispatcher sees it.

    Attributes:
        key: what a worker must have loaded to run it without reopening a file.
        next_task: ``next_task(worker_id, live_workers)`` returns the next task or None.
        call: ``call(handle, task)`` starts a task on a worker and returns Ray object refs
            (the first is awaited).
        done: ``done(handle, task, value)`` takes a finished call's value; it returns False
            when the worker must be replaced.
        failed: ``failed(handle, task, error)`` takes a failure (a dead worker, a timeout).
        requeue: ``requeue(task)`` puts back a task that was queued on a worker but never
            started there (the worker was replaced); no attempt is counted.
        timeout: per-task timeout in seconds, or None; a task standing for several
            (``members``) gets it once per member.
        priority: higher first.
        cancelled: set to stop the job: its running tasks are stopped.
    """

    key: str
    next_task: Callable[[str, int], Any]
    call: Callable[[WorkerHandle, Any], Any]
    done: Callable[[WorkerHandle, Any, Any], bool]
    failed: Callable[[WorkerHandle, Any, RenderFarmError], None]
    requeue: Callable[[Any], None]
    timeout: float | None = None
    priority: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    exhausted: bool = False


@dataclass
class _Running:
    source: Source
    task: Any
    handle: WorkerHandle
    started: float | None  # None while queued behind the worker's current task


def dispatch(pool: WorkerPool, sources: Callable[[], list[Source]],
             stop: Callable[[], bool], poll: float = 0.05, depth: int = 2) -> None:
    """Run tasks from ``sources`` on ``pool`` until ``stop()`` is true and nothing runs.

    ``sources()`` is asked again on every round, so jobs can come and go. A worker with fewer
    than ``depth`` tasks takes the next one from the first source (by priority, then order)
    that has work, preferring one whose ``key`` it has loaded among sources of the same
    priority. With ``depth=2`` each worker has its next task queued while it renders, so it
    never waits for the driver between tasks; a worker still only gets work when it is
    nearly free, so fast workers do more.
    """
    import ray

    running: dict[Any, _Running] = {}
    queues: dict[str, list[Any]] = {}
    while True:
        active = [s for s in sources() if not s.cancelled.is_set()]
        _stop_cancelled(pool, running, queues)
        for handle in list(pool.workers.values()):
            queue = queues.setdefault(handle.worker_id, [])
            while len(queue) < depth:
                ref = _start_one(pool, handle, active, running, started=not queue)
                if ref is None:
                    break
                queue.append(ref)
            handle.busy = len(queue) >= depth
        if not running:
            if stop():
                return
            time.sleep(poll)
            continue
        ready, _ = ray.wait(list(running), num_returns=1, timeout=poll)
        if ready:
            more, _ = ray.wait([r for r in running if r not in ready],
                               num_returns=len(running) - len(ready), timeout=0)
            for ref in ready + more:
                if ref in running:
                    _finish(pool, running, queues, ref)
        _check_timeouts(pool, running, queues)


def _start_one(pool: WorkerPool, handle: WorkerHandle, active: list[Source],
               running: dict[Any, _Running], started: bool) -> Any:
    if not active:
        return None
    top = max(s.priority for s in active)
    ordered = sorted(active, key=lambda s: (-s.priority,
                                            s.priority == top and s.key != handle.loaded))
    live = len(pool.workers)
    for source in ordered:
        task = source.next_task(handle.worker_id, live)
        if task is None:
            continue
        refs = source.call(handle, task)
        ref = refs[0] if isinstance(refs, (list, tuple)) else refs
        handle.loaded = source.key
        running[ref] = _Running(source, task, handle, time.monotonic() if started else None)
        return ref
    return None


def _drop_worker(pool: WorkerPool, running: dict[Any, _Running],
                 queues: dict[str, list[Any]], handle: WorkerHandle,
                 error: RenderFarmError) -> None:
    """Replace a worker: a task it was running fails with ``error``, queued ones go back."""
    pool.replace(handle.worker_id)
    for ref in queues.pop(handle.worker_id, []):
        item = running.pop(ref, None)
        if item is None:
            continue
        if item.started is None:
            item.source.requeue(item.task)
        else:
            item.source.failed(handle, item.task, error)


def _finish(pool: WorkerPool, running: dict[Any, _Running], queues: dict[str, list[Any]],
            ref: Any) -> None:
    import ray

    item = running.pop(ref)
    handle = item.handle
    queue = queues.get(handle.worker_id, [])
    if ref in queue:
        queue.remove(ref)
    if queue and queue[0] in running:
        running[queue[0]].started = time.monotonic()
    try:
        value = ray.get(ref)
    except ray.exceptions.RayActorError as exc:
        logger.warning("worker %s died: %s", handle.worker_id, exc)
        died = WorkerDiedError(
            f"worker {handle.worker_id} died while rendering (Blender crashed or the node "
            "went away); the task is retried on another worker")
        item.source.failed(handle, item.task, died)
        _drop_worker(pool, running, queues, handle, died)
        return
    except Exception as exc:  # a bug in the worker code: report, replace the worker
        item.source.failed(handle, item.task, RenderError(f"worker call failed: {exc}"))
        _drop_worker(pool, running, queues, handle, RenderError("worker replaced"))
        return
    handle.tasks_done += 1
    if not item.source.done(handle, item.task, value):
        _drop_worker(pool, running, queues, handle, RenderError("worker replaced"))


def _check_timeouts(pool: WorkerPool, running: dict[Any, _Running],
                    queues: dict[str, list[Any]]) -> None:
    now = time.monotonic()
    for ref, item in list(running.items()):
        limit = item.source.timeout
        if ref not in running or limit is None or item.started is None:
            continue
        limit *= len(getattr(item.task, "members", (None,)))
        if now - item.started > limit:
            running.pop(ref)
            queues.get(item.handle.worker_id, []).remove(ref)
            item.source.failed(item.handle, item.task, TaskTimeoutError(
                f"task ran longer than its {limit:g} s timeout and was stopped; raise "
                "--timeout or render fewer samples"))
            _drop_worker(pool, running, queues, item.handle, RenderError(
                "the worker was stopped because another task timed out", retryable=True))


def _stop_cancelled(pool: WorkerPool, running: dict[Any, _Running],
                    queues: dict[str, list[Any]]) -> None:
    for ref, item in list(running.items()):
        if ref in running and item.source.cancelled.is_set():
            running.pop(ref)
            queues.get(item.handle.worker_id, []).remove(ref)
            item.source.failed(item.handle, item.task,
                               CancelledError("the job was cancelled", retryable=False))
            _drop_worker(pool, running, queues, item.handle, RenderError(
                "the worker was stopped because another job was cancelled", retryable=True))


def new_job_id() -> str:
    """A short unique job id."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"


def scene_info_from(reply: dict[str, Any]) -> SceneInfo:
    """The :class:`SceneInfo` in a worker's ``inspect`` reply, or the error it carries."""
    if reply.get("ok"):
        return SceneInfo.from_dict(reply["info"])
    raise error_from(reply.get("error") or {"message": "inspection failed"})


def error_from(data: dict[str, Any]) -> RenderFarmError:
    from renderfarm import errors

    cls = getattr(errors, str(data.get("type", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, RenderFarmError)):
        cls = RenderError
    return cls(str(data.get("message", "unknown error")), path=data.get("path"),
               frame=data.get("frame"), tile=data.get("tile"), log_tail=data.get("log_tail"),
               retryable=data.get("retryable"))

