"""A synthetic renderer for measuring the dispatcher alone.

:class:`SyntheticWorker` is a Ray actor that only sleeps a modelled duration per task; it is
dispatched by the same code path as Blender workers (a
:class:`~renderfarm.dispatcher.PoolRunner` over a :class:`~renderfarm.executor.WorkerPool`,
its tasks from a :class:`~renderfarm.state.JobState`),
so the scheduler's own limits and its behaviour with slow workers can be measured without
Blender.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from renderfarm.dispatcher import PoolRunner
from renderfarm.executor import PoolShape, WorkerHandle, WorkerPool
from renderfarm.job import Rect, Task, Tile
from renderfarm.pieces import describe
from renderfarm.state import JobState, TaskStatus


class SyntheticWorker:
    """A stand-in for :class:`~renderfarm.executor.BlenderWorker` that sleeps.

    Args:
        worker_id: a name; workers whose id is in ``slow`` (see :meth:`work`) run slower.
    """

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id

    def ping(self) -> dict[str, Any]:
        """Who this worker is."""
        import ray

        return {"worker": self.worker_id, "node": ray.get_runtime_context().get_node_id()}

    def work(self, index: int, seconds: float, factor: float = 1.0) -> dict[str, Any]:
        """Sleep ``seconds * factor`` and report when the task ran."""
        start = time.time()
        if seconds > 0:
            time.sleep(seconds * factor)
        return {"index": index, "worker": self.worker_id, "start": start, "end": time.time()}

    def work_many(self, tasks: list[tuple[int, float]], factor: float = 1.0) -> list[Any]:
        """:meth:`work` for each ``(index, seconds)``, in one call."""
        return [self.work(index, seconds, factor) for index, seconds in tasks]


@dataclass(frozen=True)
class SyntheticRun:
    """The outcome of a synthetic job.

    Attributes:
        makespan: seconds from the first dispatch to the last task done.
        ideal: total work divided by the number of workers (the best possible makespan).
        tasks: number of tasks.
        timeline: ``(worker, start, end, index)`` per task, times relative to the start.
    """

    makespan: float
    ideal: float
    tasks: int
    timeline: tuple[tuple[str, float, float, int], ...]

    @property
    def throughput(self) -> float:
        """Tasks per second."""
        return self.tasks / self.makespan if self.makespan else float("inf")


def start_pool(workers: int) -> WorkerPool:
    """A pool of synthetic workers that take almost no CPU (they only sleep)."""
    shape = PoolShape("cpu", workers, num_cpus=0.0, num_gpus=0.0, threads=1)
    pool = WorkerPool(shape, actor_class=SyntheticWorker, start_timeout=600)
    pool.start()
    return pool


class _SyntheticJob:
    """A synthetic job as its dispatcher serves it (a :class:`~renderfarm.dispatcher.JobPort`
    over a :class:`~renderfarm.state.JobState`)."""

    def __init__(self, durations: Sequence[float], factors: dict[str, float]) -> None:
        rect = Rect(0, 0, 1, 1)
        tile = Tile(0, rect, rect)
        self.durations = list(durations)
        self.factors = factors
        self.state = JobState([Task("synthetic", i, i, tile, (1, 1))
                               for i in range(len(durations))], retries=0)
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.timeline: list[tuple[str, float, float, int]] = []

    def next_task(self, worker: str, live: frozenset[str], checks_only: bool) -> Task | None:
        with self.lock:
            return self.state.next_for(worker, live)

    def pending(self) -> int:
        with self.lock:
            return self.state.count(TaskStatus.PENDING)

    def exclusive(self, worker: str, others: frozenset[str]) -> bool:
        return False

    def may_backup(self, task: Task) -> bool:
        with self.lock:
            return self.state.backup(task.index)

    def call(self, handle: WorkerHandle, tasks: tuple[Task, ...]) -> Any:
        factor = self.factors.get(handle.worker_id, 1.0)
        if len(tasks) == 1:
            return handle.actor.work.remote(tasks[0].index, self.durations[tasks[0].index],
                                            factor)
        return handle.actor.work_many.remote(
            [(t.index, self.durations[t.index]) for t in tasks], factor)

    def done(self, handle: WorkerHandle, task: Task, value: dict[str, Any]) -> None:
        with self.lock:
            if not self.state.all_done((task.index,)):  # else the other copy finished first
                self.state.succeeded(task.index)
            finished = self.state.finished
        self.timeline.append((value["worker"], value["start"], value["end"], value["index"]))
        if finished:
            self.finished.set()

    def failed(self, handle: WorkerHandle, task: Task, error: Exception,
               reply: Any = None) -> None:
        with self.lock:
            self.state.failed_attempt(task.index, str(error))
            finished = self.state.finished
        if finished:
            self.finished.set()

    def requeue(self, task: Task) -> None:
        with self.lock:
            self.state.requeue(task.index)

    def stop(self, error: BaseException) -> None:
        self.error = error
        self.finished.set()


def run_synthetic(pool: WorkerPool, durations: Sequence[float],
                  slow: dict[str, float] | None = None, depth: int = 2,
                  backups: bool = True, batch: int = 64) -> SyntheticRun:
    """Run one task per entry of ``durations`` on ``pool`` through the real dispatcher.

    Args:
        pool: a started pool of :class:`SyntheticWorker`.
        durations: modelled seconds of each task.
        slow: ``{worker_id: factor}`` for workers that take longer.
        depth: calls queued per worker (as for Blender workers).
        backups: let idle workers run backup copies of lagging tasks (as jobs do).
        batch: the most tasks one call carries (calls of short tasks carry several).

    Raises:
        RuntimeError: the dispatcher stopped the job.
    """
    job = _SyntheticJob(durations, slow or {})
    runner = PoolRunner(pool, depth=depth, poll=0.01)
    try:
        start = time.time()
        runner.add("synthetic", "synthetic", job, backups=backups, batch=batch)
        job.finished.wait()
        makespan = time.time() - start
    finally:
        runner.remove("synthetic")
        runner.close()
    if job.error is not None:
        raise RuntimeError(f"the synthetic job stopped: {job.error}") from job.error
    ideal = sum(durations) / len(pool.workers)
    rows = tuple((w, s - start, e - start, i) for w, s, e, i in sorted(job.timeline,
                                                                       key=lambda r: r[1]))
    return SyntheticRun(makespan, ideal, len(durations), rows)


# ------------------------------------------------------------------------------------------
# simulated GPUs: the whole path of a job (pieces, merge, outputs, events) at a farm's scale
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recording:
    """What a real Blender worker answered for one scene, replayed by simulated GPUs.

    Attributes:
        info: the scene's :class:`~renderfarm.job.SceneInfo` as a dict (``inspect``).
        pieces: the bytes of each tile's piece, by tile index (a frame's pieces; every
            frame replays them).
        seconds: modelled seconds per piece.
        jitter: each piece takes ``seconds`` times a factor in ``[1 - jitter, 1 + jitter]``.
    """

    info: dict[str, Any]
    pieces: dict[int, bytes]
    seconds: float
    jitter: float = 0.05
    #: modelled render nodes: every ``gpus_per_node`` GPUs are a node of their own whose
    #: frame merges, checks and previews the host models (0: the GPUs' work beside
    #: rendering runs for real, on the hosts' node)
    gpus_per_node: int = 0
    #: a modelled node's seconds to merge and write a frame
    merge_seconds: float = 0.0
    #: the frame's file as the farm writes it (what a modelled node's merge writes)
    frame: bytes = b""


class SimulatedGpus:
    """Many simulated GPUs in one Ray actor (async): each answers as a
    :class:`~renderfarm.executor.BlenderWorker` does, rendering a piece in the recording's
    modelled time (asleep, no CPU) and returning the recorded piece's bytes.

    Args:
        recording: what to replay (put in Ray's object store once, shared by every host).
    """

    def __init__(self, recording: Recording, name: str = "", hosts: int = 1) -> None:
        import hashlib
        import os
        import random

        import ray

        self.recording = recording
        self.node = ray.get_runtime_context().get_node_id()
        #: the host's name (its modelled nodes are ``<name>-<n>``), and how many hosts
        #: share the GPUs (every ``hosts``-th GPU is this one's)
        self.name = name
        self.hosts = hosts
        self._frame_sha256 = hashlib.sha256(recording.frame).hexdigest()
        #: ``(gpu, started, finished)`` of every piece rendered
        self.trace: list[tuple[str, float, float]] = []
        #: each simulated GPU's lock: it renders one piece at a time
        self._busy: dict[str, Any] = {}
        #: a modelled node's previews, made once per tile and canvas, then replayed
        self._previews: dict[tuple[int, str], Any] = {}
        self.pid = os.getpid()
        self._random = random.Random(self.pid)
        #: pieces returned, their bytes, and when the first render call began
        self.pieces = 0
        self.bytes = 0
        self.first: float | None = None
        #: each tile's size and hash, for a job that keeps its pieces on the nodes
        self._described: dict[int, dict[str, Any]] = {}

    async def call(self, gpu: str, method: str, *args: Any, keep: bool = False,
                   store: Any = None) -> Any:
        """Run ``method`` of simulated GPU ``gpu`` (``ping``, ``blenders``, ``inspect``,
        ``render``, ``shutdown``). A modelled node sees none of the head's folders: it
        stores no piece for a restart (``store``), and says so.

        Raises:
            NotImplementedError: a call a simulated GPU cannot answer (finishing a frame
                with Blender, encoding a video).
        """
        import asyncio

        started = time.time()
        if method == "ping":
            return {"worker": gpu, "node": self.node_of(gpu), "pid": self.pid,
                    "loaded": None, "blenders": []}
        if method == "blenders":
            return []
        if method == "inspect":
            return {"ok": True, "info": self.recording.info, "started": started,
                    "finished": time.time()}
        if method == "shutdown":
            return None
        if method != "render":
            raise NotImplementedError(f"a simulated GPU does not answer {method!r}")
        _settings, _format, task, attempt = args[:4]
        # one render at a time per GPU, as a worker actor runs its calls (the dispatcher
        # queues the next call while one runs)
        async with self._busy.setdefault(gpu, asyncio.Lock()):
            started = time.time()
            self.first = started if self.first is None else self.first
            jitter = self.recording.jitter
            seconds = self.recording.seconds * self._random.uniform(1 - jitter, 1 + jitter)
            await asyncio.sleep(seconds)
            self.trace.append((gpu, started, time.time()))
        tile = int(task["tile"]["index"])
        data = self.recording.pieces[tile]
        self.pieces += 1
        self.bytes += len(data)
        kept = {**self._described.setdefault(tile, describe(data)), "piece_stored": False} \
            if keep else {}
        return {**kept, "task_index": task["index"], "frame": task["frame"],
                "tile": task["tile"]["index"], "worker": gpu, "node": self.node_of(gpu),
                "attempt": attempt, "started": started, "covers": list(task.get("covers", [])),
                "ok": True, "device": "simulated GPU", "render_seconds": seconds,
                "load_seconds": 0.0, "task_seconds": time.time() - started,
                "finished": time.time(), "peak_memory_mb": 0.0, "rss_mb": 0.0,
                "log": ""}, data

    def node_of(self, gpu: str) -> str:
        """The node simulated GPU ``gpu`` (``gpu-<n>``) is on: a modelled node of this host,
        or the host's own."""
        per_node = self.recording.gpus_per_node
        if not per_node:
            return self.node
        mine = (int(gpu.rpartition("-")[2]) - 1) // self.hosts  # this host's n-th GPU (from 1)
        return f"{self.name}-{mine // per_node}"

    async def node_call(self, name: str, node: str, *args: Any) -> Any:
        """A modelled node's work (:func:`renderfarm.pieces._on_node`): a frame's merge
        (``assemble_here``) takes the recording's ``merge_seconds`` and writes its ``frame``;
        a tile's preview (``preview_here``) is made once per tile, then replayed; a check's
        comparison (``compare_here``) runs for real. Pieces are not moved (a modelled node
        never loses one).

        Raises:
            NotImplementedError: work a modelled node cannot do (finishing a frame by a
                worker, a stereo frame's views).
        """
        import asyncio

        from renderfarm import pieces

        if name == "preview_here":
            box, tile, canvas, display, suffix = args
            key = (int(tile.index), repr(canvas), repr(display), suffix)
            if key not in self._previews:
                self._previews[key] = await asyncio.to_thread(
                    pieces.preview_here, box, tile, canvas, display, suffix)
            return self._previews[key]
        if name != "assemble_here":
            return await asyncio.to_thread(getattr(pieces, name), *args)
        blueprint_box, frame, _boxes, finishers, _finish_args, marker = args
        blueprint = await blueprint_box[0]
        info = blueprint["info"]
        if finishers or (info.views and info.views_format == "INDIVIDUAL") \
                or not self.recording.frame:
            raise NotImplementedError("a modelled node writes a recorded multilayer EXR "
                                      "frame only (no finishing, no views)")
        await asyncio.sleep(self.recording.merge_seconds)
        from pathlib import Path

        from renderfarm.job import output_path
        from renderfarm.merge import write_atomically

        target = output_path(blueprint["output"], frame)
        direct = await asyncio.to_thread(pieces.sees_marker, marker)
        if direct:  # off the event loop: the GPUs' timers go on
            await asyncio.to_thread(write_atomically, target,
                                    lambda tmp: tmp.write_bytes(self.recording.frame))
        written = pieces.Written(Path(target), self._frame_sha256,
                                 None if direct else self.recording.frame)
        return {"written": [written], "extras": {}, "node": node, "finished": []}

    def served(self) -> dict[str, Any]:
        """Pieces this host returned, their bytes, when its first render call began (None
        before one), and ``(gpu, started, finished)`` of each."""
        return {"pieces": self.pieces, "bytes": self.bytes, "first": self.first,
                "trace": list(self.trace)}


class _SimulatedMethod:
    """``gpu.render.remote(...)`` as a call of the GPU's host."""

    def __init__(self, host: Any, gpu: str, name: str,
                 options: dict[str, Any] | None = None) -> None:
        self._host, self._gpu, self._name = host, gpu, name
        self._options = options or {}

    def options(self, **options: Any) -> _SimulatedMethod:
        """The call with Ray options (``num_returns=2``: the piece stays on the host)."""
        return _SimulatedMethod(self._host, self._gpu, self._name, options)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        call = self._host.call.options(**self._options) if self._options else self._host.call
        return call.remote(self._gpu, self._name, *args, **kwargs)


class SimulatedGpu:
    """What the driver holds of one simulated GPU: its methods are its host's calls."""

    def __init__(self, host: Any, gpu: str) -> None:
        self._host = host
        self._gpu = gpu

    def __getattr__(self, name: str) -> _SimulatedMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _SimulatedMethod(self._host, self._gpu, name)


class SimulatedPool(WorkerPool):
    """A pool of simulated GPUs spread over a few :class:`SimulatedGpus` hosts (a thousand
    fit on one small machine); everything else is the farm's own pool.

    Args:
        shape: the pool's shape (its ``workers`` simulated GPUs; resources are not asked).
        hosts: the host actors the GPUs are spread over.
        kwargs: :class:`~renderfarm.executor.WorkerPool`'s other arguments.
    """

    def __init__(self, shape: PoolShape, *, hosts: Sequence[Any], **kwargs: Any) -> None:
        kwargs.pop("actor_class", None)
        super().__init__(shape, **kwargs)
        self._hosts = list(hosts)

    def _new_actor(self) -> WorkerHandle:
        number = next(self._numbers)
        worker_id = f"gpu-{number}"
        return self._add(worker_id, SimulatedGpu(self._hosts[number % len(self._hosts)],
                                                 worker_id))

    def capacity(self) -> int:
        """Every simulated GPU fits (they ask for no resources)."""
        return self.shape.workers

    def kill(self, worker_id: str) -> None:
        """Forget a simulated GPU (its host stays for the others)."""
        with self._lock:
            self.workers.pop(worker_id, None)


def start_hosts(recording: Recording, count: int) -> list[Any]:
    """``count`` :class:`SimulatedGpus` hosts (no CPU asked; each serves any number of
    GPUs at once), started and answering."""
    import secrets

    import ray

    from renderfarm import pieces

    remote = ray.remote(SimulatedGpus).options(num_cpus=0, max_concurrency=100_000)
    shared = ray.put(recording)
    names = [f"sim{secrets.token_hex(4)}" for _ in range(count)]
    hosts = [remote.remote(shared, name, count) for name in names]
    ray.get([host.served.remote() for host in hosts])
    if recording.gpus_per_node:  # their nodes' work goes to them
        pieces.MODELLED_NODES.update(zip(names, hosts, strict=True))
    return hosts


def stop_hosts(hosts: Sequence[Any]) -> None:
    """Stop hosts of :func:`start_hosts` (their modelled nodes are forgotten)."""
    import ray

    from renderfarm import pieces

    for name in [n for n, h in pieces.MODELLED_NODES.items()
                 if any(h is host for host in hosts)]:
        del pieces.MODELLED_NODES[name]
    for host in hosts:
        ray.kill(host)
