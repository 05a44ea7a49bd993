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
