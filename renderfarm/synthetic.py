"""A synthetic renderer for measuring the dispatcher alone.

:class:`SyntheticWorker` is a Ray actor that only sleeps a modelled duration per task; it is
dispatched by the same code path as Blender workers (:func:`renderfarm.executor.dispatch`
with a :class:`~renderfarm.executor.WorkerPool` and a :class:`~renderfarm.state.JobState`),
so the scheduler's own limits and its behaviour with slow workers can be measured without
Blender.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from renderfarm.executor import PoolShape, Source, WorkerHandle, WorkerPool, dispatch
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


def run_synthetic(pool: WorkerPool, durations: Sequence[float],
                  slow: dict[str, float] | None = None, depth: int = 2,
                  backups: bool = True) -> SyntheticRun:
    """Run one task per entry of ``durations`` on ``pool`` through the real dispatcher.

    Args:
        pool: a started pool of :class:`SyntheticWorker`.
        durations: modelled seconds of each task.
        slow: ``{worker_id: factor}`` for workers that take longer.
        depth: tasks queued per worker (as for Blender workers).
        backups: let idle workers run backup copies of lagging tasks (as jobs do).
    """
    rect = Rect(0, 0, 1, 1)
    tile = Tile(0, rect, rect)
    tasks = [Task("synthetic", i, i, tile, (1, 1)) for i in range(len(durations))]
    state = JobState(tasks, retries=0)
    lock = threading.Lock()
    timeline: list[tuple[str, float, float, int]] = []
    factors = slow or {}

    def next_task(worker: str, live: frozenset[str]) -> Task | None:
        with lock:
            return state.next_for(worker, live)

    def call(handle: WorkerHandle, task: Task) -> Any:
        return handle.actor.work.remote(task.index, durations[task.index],
                                        factors.get(handle.worker_id, 1.0))

    def done(handle: WorkerHandle, task: Task, value: dict[str, Any]) -> bool:
        with lock:
            if state.all_done((task.index,)):
                return True  # the other copy of a backed-up task finished first
            state.succeeded(task.index)
        timeline.append((value["worker"], value["start"], value["end"], value["index"]))
        return True

    def failed(handle: WorkerHandle, task: Task, error: Exception, reply: Any = None) -> None:
        with lock:
            state.failed_attempt(task.index, str(error))

    def requeue(task: Task) -> None:
        with lock:
            state.requeue(task.index)

    def backup(task: Task) -> bool:
        with lock:
            return state.backup(task.index)

    def pending() -> int:
        with lock:
            return state.count(TaskStatus.PENDING)

    source = Source(key="synthetic", next_task=next_task, call=call, done=done,
                    failed=failed, requeue=requeue, backup=backup if backups else None,
                    pending=pending if backups else None)
    start = time.time()
    dispatch(pool, lambda: [source], lambda: state.finished, poll=0.01, depth=depth)
    makespan = time.time() - start
    ideal = sum(durations) / len(pool.workers)
    rows = tuple((w, s - start, e - start, i) for w, s, e, i in sorted(timeline,
                                                                       key=lambda r: r[1]))
    return SyntheticRun(makespan, ideal, len(durations), rows)
