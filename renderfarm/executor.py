"""The Ray side: worker actors and the pool that keeps them alive.

Workers are long-lived Ray actors that keep a ``.blend`` loaded between tasks. Which worker
gets which task is decided by :mod:`renderfarm.dispatch_state` and carried out by the pool's
dispatcher thread (:mod:`renderfarm.dispatcher`).

Ray is imported inside functions so that ``import renderfarm`` stays light.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from renderfarm import faults
from renderfarm.bundle import file_sha256 as file_hash  # workers cache loaded scenes by it
from renderfarm.errors import (
    ClusterLostError,
    RenderError,
    RenderFarmError,
    ResourceError,
)
from renderfarm.job import VIDEO_FRAME_FORMAT, WRITE_EXTENSIONS, RenderSettings, Task

logger = logging.getLogger(__name__)

#: seconds to wait for workers to start before calling the cluster too small
START_TIMEOUT = 180.0


def _tail_of(path: str, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' when there is none)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16384))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


#: lines of Blender's output kept with a task that succeeded (a failed one keeps it all)
TASK_LOG_LINES = 30
#: the most of one failed task's output kept (its start and its end)
TASK_LOG_BYTES = 256 * 1024


def _whole_log(path: str, limit: int = TASK_LOG_BYTES) -> str:
    """A log file's text; beyond ``limit`` bytes, its first quarter and its end."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return ""
    if len(data) > limit:
        head, tail = data[:limit // 4], data[-(limit - limit // 4):]
        data = head + f"\n[... {len(data) - len(head) - len(tail)} bytes cut ...]\n".encode() \
            + tail
    return data.decode("utf-8", "replace")


def _error_dict(exc: BaseException) -> dict[str, Any]:
    """What a worker reports of a failure: what it is, and whether another try may help."""
    if isinstance(exc, RenderFarmError):
        return exc.to_dict()
    if isinstance(exc, MemoryError):
        return RenderError(f"the worker ran out of memory ({exc}); the task is retried on "
                           "another worker: render fewer samples or smaller tiles if it keeps "
                           "failing", retryable=True).to_dict()
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return RenderError(f"the worker's disk is full ({exc.strerror}); the task is retried "
                           "on another worker: free space on that machine",
                           retryable=True).to_dict()
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

        from renderfarm.worker_process import BlenderProcess

        self.worker_id = worker_id
        self.node = ray.get_runtime_context().get_node_id()
        gpu_ids = ray.get_gpu_ids()
        self.scratch = tempfile.mkdtemp(prefix="renderfarm-worker-")
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._paths: dict[str, str] = {}
        self._bundles: list[str] = []
        self._storages: dict[str, Any] = {}
        self._cache: Any = None
        self._counter = itertools.count()
        #: where Blender's output of the current task goes (its tail is reported on failure)
        self.log = os.path.join(self.scratch, "blender.log")
        #: Blender, in a child process that keeps the scene loaded (a crash ends it, not
        #: this actor); started now, so it is ready by the first task
        self._gpus = [int(g) for g in gpu_ids] if gpu_ids else None
        self.session = BlenderProcess(self._gpus, self.log)
        self.session.start()
        #: a Blender process per other Blender this worker renders with (by version)
        self._sessions: dict[str, Any] = {}

    def ping(self) -> dict[str, Any]:
        """Who and where this worker is, and the Blenders its machine has."""
        return {"worker": self.worker_id, "node": self.node, "pid": os.getpid(),
                "loaded": self.session.loaded_hash, "blenders": self.blenders()}

    def blenders(self) -> list[dict[str, Any]]:
        """The Blenders this worker's machine has now (``version``, ``kind``, ``path``)."""
        from renderfarm.blender_envs import local_blenders

        return [{"version": str(b.version), "kind": b.kind, "path": b.path}
                for b in local_blenders()]

    def _session_for(self, blender: str) -> Any:
        """The Blender process of the Blender ``blender`` names (a version; the path of a
        Blender executable; empty: this worker's own ``bpy``), prepared on this machine on
        first use."""
        from renderfarm.blender_envs import own_blender, prepare
        from renderfarm.blenders import Version
        from renderfarm.worker_process import BlenderProcess

        if not blender:
            return self.session
        if blender not in self._sessions and os.path.isabs(blender):
            self._sessions[blender] = BlenderProcess(self._gpus, self.log, executable=blender)
        if blender not in self._sessions:
            own = own_blender()
            wanted = Version.parse(blender)
            if own is not None and own.version == wanted:
                self._sessions[blender] = self.session
            else:
                found = prepare(wanted)
                self._sessions[blender] = BlenderProcess(self._gpus, self.log,
                                                         python=found.path)
        return self._sessions[blender]

    def prepare_blender(self, version: str) -> dict[str, Any]:
        """Find or prepare Blender ``version`` on this machine (see
        :func:`renderfarm.blender_envs.prepare`); what it is."""
        from renderfarm.blender_envs import prepare
        from renderfarm.blenders import Version

        found = prepare(Version.parse(version))
        return {"version": str(found.version), "kind": found.kind, "path": found.path}

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
        folder = os.path.join(self.scratch, "bundles", key)
        try:
            root = materialise(manifest, folder,
                               lambda entry: cache.get(entry.sha256, entry.size,
                                                       lambda tmp: download(entry.sha256, tmp)))
        except BaseException:  # nothing half laid out stays behind
            shutil.rmtree(folder, ignore_errors=True)
            raise
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
                files: dict[str, Any] | None = None, blender: str = "") -> dict[str, Any]:
        """Open the file (if needed) and return the scene's facts, with when this worker
        started and finished the call (``started``, ``finished``: its busy time, not the
        time the call waited in its queue)."""
        started = time.time()
        try:
            local = self._blend_path(path, blend_hash, files)
            if local is None:
                return {"ok": False, "need_blob": True}
            info = self._session_for(blender).info(local, blend_hash, allow_scripts, scene)
            return {"ok": True, "info": info.to_dict(), "started": started,
                    "finished": time.time()}
        except Exception as exc:  # reported to the driver, never fatal to the worker
            return {"ok": False, "error": _error_dict(exc)}

    def render(self, settings: dict[str, Any], output_format: str, task: dict[str, Any],
               attempt: int, files: dict[str, Any] | None = None, keep: bool = False,
               store: tuple[str, str, str] | None = None
               ) -> tuple[dict[str, Any], bytes | None]:
        """Render one task and return its result and the piece's bytes (``keep``: the
        piece stays on this node, a second return value: the result tells its size and
        SHA-256; ``store``: the node also writes it there for a restart when it sees that
        folder, :func:`renderfarm.pieces.store_here`, and the result says ``piece_stored``)."""
        job_settings = RenderSettings.from_dict(settings)
        the_task = Task.from_dict(task)
        base = {"task_index": the_task.index, "frame": the_task.frame,
                "tile": the_task.tile.index, "worker": self.worker_id, "node": self.node,
                "attempt": attempt, "started": time.time(), "covers": list(the_task.covers)}
        start = time.perf_counter()
        piece = os.path.join(self.scratch,
                             f"piece-{next(self._counter)}{WRITE_EXTENSIONS[output_format]}")
        open(self.log, "wb").close()  # this call's output only, even if it fails early
        try:
            faults.fire("worker.render", job_id=the_task.job_id, frame=the_task.frame,
                        tile=the_task.tile.index, worker=self.worker_id, attempt=attempt)
            local = self._blend_path(job_settings.blend_path, job_settings.blend_hash, files)
            if local is None:
                return {**base, "ok": False, "error": {"need_blob": True}}, None
            # a broken or dishonest worker, for tests and drills (nothing unless armed)
            spoiled = faults.spoil("worker.piece", job_id=the_task.job_id,
                                   frame=the_task.frame, tile=the_task.tile.index,
                                   worker=self.worker_id, node=self.node)
            rendered = (dataclasses.replace(the_task, frame=the_task.frame + 1)
                        if spoiled == "other_frame" else the_task)
            session = self._session_for(job_settings.blender)
            load = session.prepare(local, job_settings, output_format)
            stats = session.render(rendered, piece)
            faults.fire("worker.rendered", job_id=the_task.job_id, frame=the_task.frame,
                        worker=self.worker_id)
            if spoiled in ("pixels", "blank"):
                from pathlib import Path

                from renderfarm.merge import corrupt_image

                corrupt_image(Path(piece), spoiled)
            with open(piece, "rb") as handle:
                data = handle.read()
            extras = session.take_extras()  # what its File Output nodes wrote
            if extras:
                base["extras"] = extras
            if keep:
                from renderfarm.pieces import describe, store_here

                base.update(describe(data), piece_stored=store_here(data, store))
            return {**base, "ok": True, "device": session.device_label,
                    "render_seconds": stats.render_seconds, "load_seconds": load,
                    "task_seconds": time.perf_counter() - start, "finished": time.time(),
                    "peak_memory_mb": stats.peak_memory_mb, "rss_mb": stats.rss_mb,
                    "log": _tail_of(self.log, TASK_LOG_LINES)}, data
        except Exception as exc:  # reported to the driver, never fatal to the worker
            error = _error_dict(exc)
            error["frame"] = the_task.frame
            error["tile"] = the_task.tile.index
            blender = _tail_of(self.log)  # what Blender printed while it failed
            if blender:
                error["log_tail"] = ((error.get("log_tail") or "") + "\n--- Blender:\n"
                                     + blender).strip()
            return {**base, "ok": False, "task_seconds": time.perf_counter() - start,
                    "finished": time.time(), "error": error,
                    "log": _whole_log(self.log)}, None
        finally:
            if os.path.exists(piece):
                os.remove(piece)

    def finish(self, settings: dict[str, Any], merged_exr: bytes, file_format: str,
               extension: str, files: dict[str, Any] | None = None,
               frame: int | None = None) -> dict[str, Any] | None:
        """Finish a merged frame (multilayer EXR): denoise it when the job renders noisy
        pieces, and write it in ``file_format`` with the colour management of the job's scene.

        Returns:
            ``{"data": the file's bytes, "extras": {name: bytes}, "started": ...,
            "finished": ...}`` (``extras``: what the compositor's File Output nodes wrote;
            ``started`` and ``finished``: when this worker began and ended the call, not when
            it was queued), or None when this worker needs the job's files sent.
        """
        started = time.time()
        job_settings = RenderSettings.from_dict(settings)
        local = self._blend_path(job_settings.blend_path, job_settings.blend_hash, files)
        if local is None:
            return None  # the driver puts the files in Ray's object store and asks again
        session = self._session_for(job_settings.blender)
        session.prepare(local, job_settings, "OPEN_EXR_MULTILAYER")
        number = next(self._counter)
        source = os.path.join(self.scratch, f"finish-{number}.exr")
        target = os.path.join(self.scratch, f"finish-{number}{extension}")
        try:
            with open(source, "wb") as handle:
                handle.write(merged_exr)
            session.take_extras()
            session.finish(source, target, file_format, frame)
            with open(target, "rb") as handle:
                return {"data": handle.read(), "extras": session.take_extras(),
                        "started": started, "finished": time.time()}
        finally:
            for name in (source, target):
                if os.path.exists(name):
                    os.remove(name)

    def encode(self, settings: dict[str, Any], frames: list[tuple[int, Any]], step: int,
               name: str, container: str | None = None,
               files: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Encode a job's video from its frames (``[(frame, object ref of its bytes)]``,
        written as ``VIDEO_FRAME``) with Blender's FFmpeg writer and the scene's settings.

        Returns:
            ``{"name": file name Blender gave the video, "data": its bytes, "started": ...,
            "finished": ...}`` (when this worker began and ended the call), or None when
            this worker needs the job's files sent.
        """
        import ray

        started = time.time()
        job_settings = RenderSettings.from_dict(settings)
        local = self._blend_path(job_settings.blend_path, job_settings.blend_hash, files)
        if local is None:
            return None
        session = self._session_for(job_settings.blender)
        session.prepare(local, job_settings, VIDEO_FRAME_FORMAT)
        folder = os.path.join(self.scratch, f"encode-{next(self._counter)}")
        os.makedirs(folder)
        open(self.log, "wb").close()
        try:
            paths: dict[int, str] = {}
            for frame, ref in frames:  # one at a time: a long video never sits in memory
                paths[frame] = os.path.join(folder, f"in-{frame}.exr")
                with open(paths[frame], "wb") as handle:
                    handle.write(ray.get(ref))
            video = session.encode(paths, step, folder, name, container)
            with open(video, "rb") as handle:
                return {"name": os.path.basename(video), "data": handle.read(),
                        "started": started, "finished": time.time()}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def shutdown(self) -> None:
        """Remove this worker's scratch files."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        for session in {id(s): s for s in [self.session, *self._sessions.values()]}.values():
            session.remove_files()


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


def autoscaled_shape(device: str, cpus_per_worker: float | None = None) -> PoolShape:
    """The shape of a worker the farm asks Ray's autoscaler for (``device``: ``cpu`` or
    ``gpu``): ``cpus_per_worker`` CPUs (default 1; set it to a render node's CPUs for one
    worker per node), and one GPU for a GPU worker. Pure."""
    cpus = float(cpus_per_worker or 1.0)
    if cpus <= 0:
        raise ResourceError(f"each worker must ask for some CPU, not {cpus:g}")
    return PoolShape(device, 0, cpus, 1.0 if device == "gpu" else 0.0,
                     0 if device == "gpu" else max(1, int(cpus)))


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
    #: tasks it finished, counted as the job's progress counts them (a call that rendered
    #: four grouped tiles finished four)
    tasks_done: int = 0
    #: calls it finished (a call of four grouped tiles is one)
    calls: int = 0
    #: whether the actor has started (answered its ping); tasks go to started workers only
    ready: bool = False
    ready_ref: Any = None
    created: float = 0.0
    #: why the worker is suspect (its pixels disagreed with other workers'): it gets no
    #: tasks; None for a trusted worker
    suspect: str | None = None
    #: why an operator disabled it (it gets no tasks), or None
    disabled: str | None = None
    #: the device it renders on, as its last task reported it
    device: str = ""
    #: its calls that failed (any job)
    failures: int = 0
    #: what its node says of itself: tags and properties (:mod:`renderfarm.tags`)
    tags: Any = None
    #: the task it renders now (``JOB f0001-t00-c00``), or None
    current: str | None = None
    #: the Blenders its machine has (``{"version", "kind", "path"}``)
    blenders: list[dict[str, Any]] = field(default_factory=list)
    #: one-off calls it runs outside the dispatcher now (it is not released meanwhile)
    leases: int = 0

    def describe(self) -> dict[str, Any]:
        """The worker as the farm's worker list shows it."""
        state = ("disabled" if self.disabled else "suspect" if self.suspect else
                 "starting" if not self.ready else "busy" if self.busy else "idle")
        tags = self.tags
        return {"worker": self.worker_id, "node": self.node, "device": self.device,
                "state": state, "tasks_done": self.tasks_done, "calls": self.calls,
                "failures": self.failures,
                "reason": self.disabled or self.suspect, "loaded": self.loaded,
                "current": self.current,
                "blenders": [b.get("version") for b in self.blenders],
                "blender_builds": [{k: b.get(k) for k in ("version", "kind", "path")}
                                   for b in self.blenders],
                "tags": sorted(tags.tags) if tags else [],
                "props": dict(tags.props) if tags else {}}


#: the Ray namespace and name prefix of workers kept between commands (``keep_warm``)
WARM_NAMESPACE = "renderfarm-local"
WARM_PREFIX = "renderfarm-warm/"
#: seconds a kept worker has to answer before it is replaced
WARM_PING_SECONDS = 10.0

#: what each autoscaled pool of this process asks for (Ray keeps one request per driver)
_ASKS: dict[int, list[tuple[dict[str, float], dict[str, str]]]] = {}
_ASKS_LOCK = threading.Lock()


class WorkerPool:
    """Long-lived worker actors of one shape; dead ones are replaced on demand.

    Args:
        shape: how many workers and what each asks for.
        actor_class: the actor's class (``BlenderWorker``, or a synthetic stand-in for
            scheduler benchmarks); it must take ``worker_id`` and answer ``ping()``.
        start_timeout: seconds to wait for workers to start.
        elastic: follow the cluster (one worker per node, or per GPU) as nodes come and go.
        autoscale: ask Ray's autoscaler for the workers the pool's work wants (:meth:`want`)
            and hold only those: the pool starts empty, gets a worker wherever one fits, and
            its dispatcher releases the workers its work no longer needs.
        max_workers: the most workers an autoscaled pool asks for (None: no bound).
        keep_warm: the workers outlive this driver (named, detached actors of the farm's own
            local cluster, :mod:`renderfarm.local_farm`): the next command's pool of the same
            shape takes them over, Blender started and the scene loaded, and :meth:`close`
            leaves the healthy ones running. One such pool per cluster at a time: a pool of
            another shape stops them as it starts.
    """

    def __init__(self, shape: PoolShape, actor_class: type = BlenderWorker,
                 start_timeout: float = START_TIMEOUT, elastic: bool = False,
                 autoscale: bool = False, max_workers: int | None = None,
                 keep_warm: bool = False) -> None:
        self.shape = shape
        self.keep_warm = keep_warm
        self.actor_class = actor_class
        self.start_timeout = start_timeout
        self.autoscale = autoscale
        self.max_workers = max_workers
        #: the workers the pool's work wants now (autoscaled pools), at most ``max_workers``
        self.wanted = 0
        #: what was last asked of the autoscaler (workers), and when
        self.asked: int | None = None
        self._asked_at = 0.0
        self._asked: list[tuple[dict[str, float], dict[str, str]]] = []
        #: follow the cluster: one worker per node (CPU) or per GPU, as nodes come and go;
        #: otherwise keep ``shape.workers`` (never more than the cluster can place)
        self.elastic = elastic
        #: how many workers the pool wants now (see :meth:`follow_cluster`)
        self.target = shape.workers
        self._last_follow = 0.0
        #: set when the Ray cluster itself failed (the driver's raylet died): the pool is
        #: over, its dispatcher stops and its jobs end with this error
        self.lost: ClusterLostError | None = None
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
        if self.keep_warm:
            worker_id = f"{worker_id}-{os.urandom(3).hex()}"
            options: dict[str, Any] = {"name": self._warm_name(worker_id),
                                       "namespace": WARM_NAMESPACE, "lifetime": "detached"}
        else:
            options = {"name": None}
        actor = self._remote.options(
            num_cpus=self.shape.num_cpus, num_gpus=self.shape.num_gpus, max_restarts=0,
            max_concurrency=1, **options,
        ).remote(worker_id)
        return self._add(worker_id, actor)

    def _add(self, worker_id: str, actor: Any) -> WorkerHandle:
        handle = WorkerHandle(worker_id, actor, ready_ref=actor.ping.remote(),
                              created=time.monotonic())
        self.workers[worker_id] = handle
        return handle

    def _warm_name(self, worker_id: str) -> str:
        """A kept worker's actor name: its shape, then its id (a pool of another shape
        does not take it over)."""
        shape = self.shape
        return (f"{WARM_PREFIX}{shape.num_cpus:g}cpu-{shape.num_gpus:g}gpu-"
                f"{self.actor_class.__name__}/{worker_id}")

    def _adopt_warm(self) -> None:
        """Take over the kept workers of this pool's shape (up to its size); stop kept
        workers of other shapes (the cluster's resources go to this pool's)."""
        import ray
        from ray.util import list_named_actors

        mine = self._warm_name("")
        for entry in list_named_actors(all_namespaces=True):
            name = entry.get("name", "") if isinstance(entry, dict) else str(entry)
            if (isinstance(entry, dict) and entry.get("namespace") != WARM_NAMESPACE) \
                    or not name.startswith(WARM_PREFIX):
                continue
            try:
                actor = ray.get_actor(name, namespace=WARM_NAMESPACE)
            except ValueError:  # gone meanwhile
                continue
            if name.startswith(mine) and len(self.workers) < self.target:
                self._add(name[len(mine):], actor)
            else:
                ray.kill(actor, no_restart=True)

    def handles(self) -> list[WorkerHandle]:
        """The pool's workers now (a copy: the pool changes as workers come and go)."""
        with self._lock:
            return list(self.workers.values())

    def start(self) -> None:
        """Start the missing workers and wait until each answers.

        Raises:
            ResourceError: the workers did not start in time (the cluster lacks resources).
        """
        import ray

        if self.autoscale:  # workers come as the autoscaler's nodes do (follow_cluster)
            self.target = 0
            return
        with self._lock:
            self.target = self.shape.workers
            if self.keep_warm and not self.workers:
                self._adopt_warm()
        if self.keep_warm:  # a kept worker that died since (or hangs) is replaced
            self.poll_started(wait=WARM_PING_SECONDS)
            for handle in self.handles():
                if not handle.ready:
                    self.kill(handle.worker_id)
        with self._lock:
            fresh = [self._new_actor() for _ in range(self.target - len(self.workers))]
        if not fresh:
            return
        pings = {h.ready_ref: h for h in fresh}
        ready, waiting = ray.wait(list(pings), num_returns=len(pings),
                                  timeout=self.start_timeout)
        nodes = ray.nodes() if ready else []
        for ref in ready:
            handle = pings[ref]
            try:
                self._started(handle, ref, nodes)
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
            if len(self.workers) >= self.target:
                return None
            return self._new_actor()  # not ready: it takes tasks once it has started

    @property
    def ready(self) -> list[WorkerHandle]:
        """The workers that have started."""
        with self._lock:
            return [h for h in self.workers.values() if h.ready]

    def refresh_offers(self, wait: float = 30.0) -> list[WorkerHandle]:
        """Ask each started worker which Blenders its machine has now (one registered or
        prepared since it started is offered from now on); returns those whose offer
        changed. A worker that does not answer within ``wait`` seconds keeps its offer."""
        import ray

        from renderfarm.tags import WorkerTags, with_blenders

        handles = self.ready
        asked = {h.actor.blenders.remote(): h for h in handles}
        done, _ = ray.wait(list(asked), num_returns=len(asked), timeout=wait)
        changed = []
        for ref in done:
            handle = asked[ref]
            try:
                fresh = list(ray.get(ref))
            except Exception as exc:  # gone meanwhile: the pool finds out
                logger.info("worker %s did not say its Blenders: %s", handle.worker_id, exc)
                continue
            tags = with_blenders(handle.tags or WorkerTags(),
                                 [str(b.get("version")) for b in fresh],
                                 [str(b.get("path")) for b in fresh
                                  if b.get("kind") == "executable"])
            if tags != handle.tags:
                handle.blenders, handle.tags = fresh, tags
                changed.append(handle)
        return changed

    @property
    def trusted(self) -> list[WorkerHandle]:
        """The started workers that are neither suspect nor disabled: they get tasks."""
        return [h for h in self.ready if h.suspect is None and h.disabled is None]

    def set_enabled(self, worker_id: str, enabled: bool, reason: str = "") -> WorkerHandle:
        """Let an operator take a worker out (it gets no tasks; the one it runs finishes) or
        put it back (which also clears a suspicion of it).

        Raises:
            InputError: there is no such worker.
        """
        from renderfarm.errors import InputError

        with self._lock:
            handle = self.workers.get(worker_id)
            if handle is None:
                raise InputError(f"no worker {worker_id!r} on this farm (the workers: "
                                 f"{', '.join(sorted(self.workers)) or 'none'})")
            if enabled:
                handle.disabled = None
                handle.suspect = None
            else:
                handle.disabled = reason or "disabled by an operator"
            return handle

    def suspect(self, worker_id: str, reason: str) -> None:
        """Send ``worker_id`` no more tasks: its pixels disagreed with other workers'. It
        stays alive, idle, for an operator to look at (``renderfarm workers``). Only this
        worker: others on its machine (other GPUs, other CPU slots) render on."""
        with self._lock:
            handle = self.workers.get(worker_id)
            if handle is None:
                return
            logger.warning("worker %s on node %s is suspect: %s", worker_id, handle.node,
                           reason)
            handle.suspect = handle.suspect or reason

    def poll_started(self, wait: float = 0.0) -> None:
        """Mark workers whose start finished (waiting up to ``wait`` seconds for all);
        drop those that failed to start."""
        import ray

        with self._lock:
            waiting = {h.ready_ref: h for h in self.workers.values() if not h.ready}
        if not waiting:
            return
        done, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=wait)
        nodes = ray.nodes() if done else []  # once for all (a thousand workers start at once)
        for ref in done:
            handle = waiting[ref]
            try:
                self._started(handle, ref, nodes)
            except Exception as exc:  # died while starting (its node went away)
                logger.warning("worker %s did not start: %s", handle.worker_id, exc)
                self.kill(handle.worker_id)

    @staticmethod
    def _started(handle: WorkerHandle, ping: Any, nodes: list[dict[str, Any]]) -> None:
        """A worker answered its ping: where it runs and what its node (one of ``nodes``,
        as ``ray.nodes()`` lists them) offers; it takes tasks from now on."""
        import ray

        from renderfarm.tags import WorkerTags, node_tags, with_blenders

        answer = ray.get(ping)
        handle.node = answer["node"]
        handle.loaded = answer.get("loaded") or handle.loaded  # a kept worker's scene
        handle.blenders = list(answer.get("blenders") or [])
        handle.tags = with_blenders(next((node_tags(n) for n in nodes
                                          if n.get("NodeID") == handle.node), WorkerTags()),
                                    [str(b.get("version")) for b in handle.blenders],
                                    [str(b.get("path")) for b in handle.blenders
                                     if b.get("kind") == "executable"])
        handle.ready = True

    def capacity(self) -> int:
        """How many workers of this pool's shape the alive nodes can hold (one per node for
        an elastic CPU pool, one per GPU for a GPU pool)."""
        import ray

        count = 0
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            resources = node.get("Resources", {})
            cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
            if self.shape.num_gpus:
                fits = min(gpus // self.shape.num_gpus, cpus // max(self.shape.num_cpus, 1e-9))
            elif self.shape.num_cpus:
                fits = cpus // self.shape.num_cpus
            else:  # asks for nothing (synthetic workers): any number fits
                return max(self.shape.workers, len(self.workers))
            if self.elastic and not self.shape.num_gpus:
                fits = min(fits, 1)
            count += int(fits)
        return count

    def follow_cluster(self, every: float = 1.0) -> None:
        """Resize the pool to what the cluster holds now, at most every ``every`` seconds:
        workers that cannot be placed (their node is gone) are not kept waiting, and new
        nodes get workers. Started workers are never stopped here; a lost node's are dead."""
        now = time.monotonic()
        if now - self._last_follow < every:
            return
        self._last_follow = now
        capacity = self.capacity()
        if self.autoscale:
            target = min(capacity, self.wanted)
        else:
            target = max(1, capacity if self.elastic else min(self.shape.workers, capacity))
        with self._lock:
            self.target = target
            surplus = len(self.workers) - self.target
            if surplus > 0:  # the newest workers still waiting to start go first
                waiting = sorted((h for h in self.workers.values() if not h.ready),
                                 key=lambda h: -h.created)
                for handle in waiting[:surplus]:
                    logger.info("worker %s cannot be placed now; not kept waiting",
                                handle.worker_id)
                    self.kill(handle.worker_id)
            else:
                for _ in range(-surplus):
                    self._new_actor()

    @property
    def size(self) -> int:
        """How many workers the pool has to plan with: its shape's, or for an autoscaled
        pool the most it may ask for (else the workers it has now, at least one)."""
        if not self.autoscale:
            return self.shape.workers
        return self.max_workers or max(1, len(self.workers))

    def bundle(self) -> dict[str, float]:
        """What one worker asks Ray for."""
        return {key: value for key, value in (("CPU", self.shape.num_cpus),
                                              ("GPU", self.shape.num_gpus)) if value}

    def want(self, count: int, kinds: Mapping[tuple[Any, ...], int] | None = None,
             refresh: float = 30.0) -> None:
        """Tell Ray's autoscaler the pool's work can keep ``count`` workers busy (at most
        :attr:`max_workers`), ``kinds``: how many of them by the ``--require`` of the jobs
        that want them (a tag or GPU model becomes a resource, other terms node labels:
        :func:`renderfarm.tags.demand_of`). It adds nodes until they fit, and may remove
        nodes left idle once the request shrinks. Asked again when it changes, and every
        ``refresh`` seconds (an autoscaler restarted meanwhile hears it again)."""
        if not self.autoscale:
            return
        from renderfarm.tags import demand_of

        if self.max_workers is not None:
            count = min(count, self.max_workers)
        self.wanted = count
        asks: list[tuple[dict[str, float], dict[str, str]]] = []
        for kind, wanted in sorted((kinds or {(): count}).items(), key=lambda kv: str(kv[0])):
            resources, labels = demand_of(kind)
            asks += [({**self.bundle(), **resources}, labels)] * wanted
        asks = asks[:count]
        asks += [(self.bundle(), {})] * (count - len(asks))
        now = time.monotonic()
        if asks == self._asked and now - self._asked_at < refresh:
            return
        if self.asked is not None and count < self.asked and now - self._asked_at < 1.0 \
                and refresh:  # a draining queue shrinks it at most once a second
            return
        if count != self.asked:
            logger.info("asking Ray's autoscaler for %d worker(s) of %s", count, self.bundle())
        if self._ask_ray(asks):
            self.asked, self._asked_at, self._asked = count, now, asks

    def _ask_ray(self, asks: list[tuple[dict[str, float], dict[str, str]]]) -> bool:
        """Send every autoscaled pool's asks of this process as one request (each call
        replaces the last: Ray keeps one per driver)."""
        from ray.autoscaler.sdk import request_resources

        with _ASKS_LOCK:
            _ASKS[id(self)] = asks
            every = [ask for pool in _ASKS.values() for ask in pool]
            bundles = [bundle for bundle, _labels in every]
            try:
                if any(labels for _bundle, labels in every):
                    request_resources(bundles=bundles,
                                      bundle_label_selectors=[labels for _b, labels in every])
                else:
                    request_resources(bundles=bundles)
            except Exception as exc:  # Ray going away: the health check says so; ask again
                logger.warning("could not ask Ray's autoscaler for workers: %s", exc)
                return False
        return True

    def elastic_cost(self, tasks: list[dict[str, Any]], started: float) -> dict[str, Any]:
        """What a job's calls (``tasks``, from ``started``, seconds since the epoch) cost in
        node time on this pool's cluster (:func:`renderfarm.elastic.summary`)."""
        from renderfarm.elastic import node_spans, summary

        return summary(node_spans(), tasks, started, time.time())

    def describe_ask(self) -> str:
        """What the pool asks for (for messages): ``2 worker(s) of {'CPU': 1.0}``."""
        return f"{max(self.wanted, 1)} worker(s) of {self.bundle()}"

    def release(self, worker_id: str, reason: str) -> bool:
        """Stop a worker the work no longer needs (its node may then go idle), unless a
        one-off call runs on it (:meth:`leased`): then it stays (the dispatcher sees it
        again). Whether it was stopped."""
        with self._lock:
            handle = self.workers.get(worker_id)
            if handle is not None and handle.leases:
                logger.debug("worker %s runs a job's own call: kept", worker_id)
                return False
            logger.info("releasing worker %s: %s", worker_id, reason)
            self.kill(worker_id)
            return True

    @contextlib.contextmanager
    def leased(self, handle: WorkerHandle) -> Iterator[WorkerHandle]:
        """Hold ``handle`` for a one-off call (opening a file, finishing a frame, encoding a
        video) made outside the dispatcher: it is not released meanwhile."""
        with self._lock:
            handle.leases += 1
        try:
            yield handle
        finally:
            with self._lock:
                handle.leases -= 1

    def kill(self, worker_id: str) -> None:
        """Kill one worker."""
        import ray

        with self._lock:
            handle = self.workers.pop(worker_id, None)
        if handle is not None and self.lost is None:  # a lost cluster: nothing to kill
            try:
                ray.kill(handle.actor, no_restart=True)
            except Exception:  # already dead
                logger.debug("worker %s was already gone", worker_id)

    def close(self, occupied: set[str] | frozenset[str] = frozenset()) -> None:
        """The driver is done with the pool: every worker stops, except a kept pool's
        healthy ones (started, trusted, running no call: ``occupied`` names those that do),
        which wait for the next command."""
        if not self.keep_warm or self.lost is not None:
            self.kill_all()
            return
        for handle in self.handles():
            if not handle.ready or handle.worker_id in occupied or handle.suspect \
                    or handle.disabled:
                self.kill(handle.worker_id)

    def kill_all(self) -> None:
        """Kill every worker of the pool (an autoscaled pool also withdraws its request)."""
        for worker_id in list(self.workers):
            self.kill(worker_id)
        if self.autoscale and self.lost is None:
            self.want(0, refresh=0.0)
        with _ASKS_LOCK:
            _ASKS.pop(id(self), None)

    def preferred(self, blend_hash: str, blender: str = "") -> WorkerHandle:
        """A worker for a one-off call on a file: one that has it loaded, else an idle one;
        for a job that renders with a Blender executable (``blender``: its path), one whose
        machine has it."""
        with self._lock:
            handles = list(self.workers.values())

        def lacks(handle: WorkerHandle) -> bool:
            return blender.startswith("/") and not any(
                b.get("path") == blender for b in handle.blenders)

        if not handles:
            raise ResourceError("the farm has no worker now (its pool is empty: the cluster "
                                "lost its nodes, or the autoscaler has not started one yet); "
                                "the job can be submitted again when workers are back")
        handles.sort(key=lambda h: (not h.ready, h.suspect is not None, lacks(h),
                                    h.loaded != blend_hash, h.busy, h.tasks_done))
        return handles[0]
