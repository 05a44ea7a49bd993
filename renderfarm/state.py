"""Job and task state, apart from any I/O.

:class:`JobState` is changed only through its methods, which take what happened (a worker is
free, a task finished or failed) and answer what to do next. The executor drives it with Ray;
tests drive it directly.
"""

from __future__ import annotations

import enum
import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from renderfarm.job import Task, Tile


class TaskStatus(enum.Enum):
    """Where a task is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Verdict(enum.Enum):
    """What to do with a result that arrived for a task (:meth:`JobState.on_result`)."""

    #: keep the piece and record the task done
    ACCEPT = "accept"
    #: the job has ended (cancelled, failed, aborted): drop it without touching its files
    LATE = "late"
    #: another copy of the task (a straggler's backup) finished first: drop it
    DUPLICATE = "duplicate"


class Failure(enum.Enum):
    """What a failed attempt means for the job (:meth:`JobState.on_failure`)."""

    #: nothing: the job has ended, or another copy of the task finished
    IGNORED = "ignored"
    #: the task runs again (on another worker where there is one)
    RETRY = "retry"
    #: the task failed for good; the job fails once nothing else runs
    FAILED = "failed"
    #: failed for good with an error no worker can get past: the job stops now
    STOP = "stop"


@dataclass
class TaskEntry:
    """A task and what happened to it so far."""

    task: Task
    status: TaskStatus = TaskStatus.PENDING
    attempts: int = 0
    worker: str | None = None
    failed_on: set[str] = field(default_factory=set)
    last_error: str | None = None
    #: backup copies running besides the first (a straggler's)
    backups: int = 0


class JobState:
    """The state of one job's tasks.

    Args:
        tasks: the job's tasks.
        retries: how many times a failed task is tried again.
    """

    def __init__(self, tasks: Iterable[Task], retries: int) -> None:
        self.entries: dict[int, TaskEntry] = {t.index: TaskEntry(t) for t in tasks}
        self.retries = retries
        self._pending = sorted(self.entries)  # a heap of pending task indices
        self._counts: Counter[TaskStatus] = Counter({TaskStatus.PENDING: len(self.entries)})
        self._frame_left: dict[int, int] = {}
        #: why the job ended early (cancelled, aborted), or None while it runs
        self.ended: str | None = None
        for entry in self.entries.values():
            frame = entry.task.frame
            self._frame_left[frame] = self._frame_left.get(frame, 0) + 1

    # -- questions ---------------------------------------------------------------------------
    def count(self, status: TaskStatus) -> int:
        """How many tasks are in ``status``."""
        return self._counts[status]

    @property
    def total(self) -> int:
        """Number of tasks."""
        return len(self.entries)

    @property
    def finished(self) -> bool:
        """Whether no task is pending or running."""
        return self._counts[TaskStatus.PENDING] + self._counts[TaskStatus.RUNNING] == 0

    @property
    def failed(self) -> list[TaskEntry]:
        """Tasks that failed after all retries."""
        return [e for e in self.entries.values() if e.status is TaskStatus.FAILED]

    def has_pending(self) -> bool:
        """Whether a task waits for a worker."""
        return self._counts[TaskStatus.PENDING] > 0

    # -- transitions -------------------------------------------------------------------------
    def next_for(self, worker: str, live_workers: int = 1, group: bool = False) -> Task | None:
        """Start the next task on ``worker`` (which asks because it is free).

        Tasks go in order (frame by frame), except that a retried task avoids the workers it
        failed on while other workers are alive to take it.

        With ``group``, a tile task takes the pending tiles right of it in the same row along
        (as many as :meth:`group_size` allows) and the answer is one task for their union,
        whose :attr:`Task.covers` lists them; each keeps its own state.

        Returns:
            The task now running on ``worker``, or None when nothing suits it.
        """
        skipped: list[int] = []
        chosen: Task | None = None
        while self._pending:
            index = heapq.heappop(self._pending)
            entry = self.entries[index]
            if entry.status is not TaskStatus.PENDING:
                continue
            if worker in entry.failed_on and len(entry.failed_on) < live_workers:
                skipped.append(index)  # another live worker has not failed it: leave it
                continue
            size = self.group_size(live_workers) if group and entry.task.tiled else 1
            chosen = self._start(entry, worker)
            if size > 1:
                chosen = self._grow(entry, worker, size)
            break
        for index in skipped:
            heapq.heappush(self._pending, index)
        return chosen

    def group_size(self, live_workers: int) -> int:
        """How many tiles one call may take: enough that every live worker still has two
        calls' worth of pending work, at least one; a lone worker has nobody to share with
        and may take everything pending."""
        pending = self._counts[TaskStatus.PENDING]
        if live_workers <= 1:
            return max(1, pending)
        return max(1, pending // (2 * live_workers))

    def _joins(self, first: TaskEntry, entry: TaskEntry, worker: str) -> bool:
        """Whether ``entry`` may be rendered in the same call as ``first``'s group."""
        return (entry.status is TaskStatus.PENDING and entry.task.frame == first.task.frame
                and entry.task.samples == first.task.samples and entry.task.tiled
                and worker not in entry.failed_on)

    def _next_row(self, first: TaskEntry, last: TaskEntry, index: int,
                  worker: str) -> list[TaskEntry]:
        """The whole grid row starting at ``index`` when it lies right below a group of whole
        rows (so the union stays a rectangle) and every tile of it can join; else []."""
        head = self.entries.get(index)
        if head is None or not self._joins(first, head, worker):
            return []
        core, top = head.task.tile.core, last.task.tile.core
        if core.y0 != top.y1 or core.x0 != first.task.tile.core.x0:
            return []
        row = []
        while index in self.entries and self.entries[index].task.tile.core.y0 == core.y0:
            entry = self.entries[index]
            if not self._joins(first, entry, worker) or entry.task.frame != head.task.frame:
                return []
            row.append(entry)
            index += 1
        return row

    def _grow(self, first: TaskEntry, worker: str, size: int) -> Task:
        members = [first]
        row = first.task.tile
        index = first.task.index + 1
        while len(members) < size and index in self.entries:
            entry = self.entries[index]
            tile = entry.task.tile
            same_row = ((tile.core.y0, tile.core.y1, tile.render.y0, tile.render.y1)
                        == (row.core.y0, row.core.y1, row.render.y0, row.render.y1))
            if same_row and self._joins(first, entry, worker):
                self._start(entry, worker)  # its heap slot is skipped when popped later
                members.append(entry)
                index += 1
                continue
            # the row is done: take the next one whole if the group is whole rows so far
            below = self._next_row(first, members[-1], index, worker) if not same_row else []
            if not below or len(members) + len(below) > size:
                break
            for entry in below:
                self._start(entry, worker)
            members += below
            index += len(below)
        if len(members) == 1:
            return first.task
        tiles = [m.task.tile for m in members]
        core, render = tiles[0].core, tiles[0].render
        for tile in tiles[1:]:
            core, render = core.union(tile.core), render.union(tile.render)
        task = first.task
        return Task(task.job_id, task.index, task.frame, Tile(tiles[0].index, core, render),
                    task.size, task.tiled, tuple(m.task.index for m in members), task.samples,
                    task.chunk)

    def _move(self, entry: TaskEntry, status: TaskStatus) -> None:
        self._counts[entry.status] -= 1
        self._counts[status] += 1
        entry.status = status

    def _start(self, entry: TaskEntry, worker: str) -> Task:
        self._move(entry, TaskStatus.RUNNING)
        entry.attempts += 1
        entry.worker = worker
        return entry.task

    def succeeded(self, index: int) -> bool:
        """Record that task ``index`` finished; True when its frame has every piece now."""
        entry = self.entries[index]
        if entry.status is TaskStatus.DONE:
            return False
        self._move(entry, TaskStatus.DONE)
        frame = entry.task.frame
        self._frame_left[frame] -= 1
        return self._frame_left[frame] == 0

    def all_done(self, indices: Iterable[int]) -> bool:
        """Whether every task of ``indices`` has finished (another copy may have won)."""
        return all(self.entries[i].status is TaskStatus.DONE for i in indices)

    # -- what happened, and what it means ---------------------------------------------------
    def on_result(self, members: Iterable[int]) -> Verdict:
        """What to do with a result for a task covering ``members``."""
        if self.ended is not None:
            return Verdict.LATE
        if self.all_done(members):
            return Verdict.DUPLICATE
        return Verdict.ACCEPT

    def complete(self, members: Iterable[int]) -> bool:
        """Record that a task covering ``members`` finished; True when that completed its
        frame (every piece of it is in: it can be merged)."""
        return any([self.succeeded(i) for i in members])

    def on_failure(self, members: Iterable[int], error: str, retryable: bool,
                   cancelled: bool = False) -> Failure:
        """Record a failed attempt of a task covering ``members`` and say what it means.

        Args:
            error: the failure, one line.
            retryable: whether another attempt may succeed.
            cancelled: the attempt was stopped because its job was cancelled.
        """
        members = list(members)
        if self.ended is not None or self.all_done(members):
            return Failure.IGNORED
        again = any([self.failed_attempt(i, error, retryable) for i in members])
        if again:
            return Failure.RETRY
        if retryable or cancelled:
            return Failure.FAILED
        self.cancel_pending(error)  # the same input fails on every worker
        return Failure.STOP

    def may_backup(self, members: Iterable[int]) -> bool:
        """Whether a lagging task covering ``members`` may get a backup copy (once each;
        never once the job has ended)."""
        if self.ended is not None:
            return False
        return all([self.backup(i) for i in members])

    def end(self, reason: str) -> None:
        """The job ends early (cancelled, or a merge failed): nothing pending starts, and
        results still arriving are late."""
        if self.ended is None:
            self.ended = reason
        self.cancel_pending(reason)

    def backup(self, index: int) -> bool:
        """Allow one backup copy of running task ``index`` (a straggler); False when it is
        not running or has a backup already. The first copy to finish counts
        (:meth:`succeeded` takes one success per task)."""
        entry = self.entries[index]
        if entry.status is not TaskStatus.RUNNING or entry.backups:
            return False
        entry.backups += 1
        return True

    def failed_attempt(self, index: int, error: str, retryable: bool = True) -> bool:
        """Record a failed attempt of task ``index``.

        Returns:
            True when the task will be tried again (or another copy of it still runs),
            False when it has failed for good.
        """
        entry = self.entries[index]
        entry.last_error = error
        if entry.status is TaskStatus.DONE:  # a copy that lost to one that finished
            return True
        if entry.status is TaskStatus.RUNNING and entry.backups:
            entry.backups -= 1  # the other copy goes on
            return True
        if entry.worker is not None:
            entry.failed_on.add(entry.worker)
        entry.worker = None
        if retryable and entry.attempts <= self.retries:
            self._move(entry, TaskStatus.PENDING)
            heapq.heappush(self._pending, index)
            return True
        self._move(entry, TaskStatus.FAILED)
        return False

    def requeue(self, index: int) -> None:
        """Put a running task back in the queue without counting the attempt (the worker
        could not start it, e.g. it had to fetch the file first)."""
        entry = self.entries[index]
        if entry.status is TaskStatus.RUNNING:
            entry.attempts -= 1
            entry.worker = None
            self._move(entry, TaskStatus.PENDING)
            heapq.heappush(self._pending, index)

    def running_on(self, worker: str) -> list[int]:
        """Indices of the tasks running on ``worker``."""
        return [i for i, e in self.entries.items()
                if e.status is TaskStatus.RUNNING and e.worker == worker]

    def cancel_pending(self, reason: str) -> None:
        """Mark every pending task failed (used when the job is stopped)."""
        for entry in self.entries.values():
            if entry.status is TaskStatus.PENDING:
                self._move(entry, TaskStatus.FAILED)
                entry.last_error = reason
        self._pending.clear()
