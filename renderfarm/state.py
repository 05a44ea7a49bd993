"""Job and task state, apart from any I/O.

:class:`JobState` is changed only through its methods, which take what happened (a worker is
free, a task finished or failed) and answer what to do next. The executor drives it with Ray;
tests drive it directly.
"""

from __future__ import annotations

import enum
import heapq
import math
import random
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

from renderfarm.errors import JobFailedError, RenderFarmError, VerificationError
from renderfarm.job import Task, Tile

#: the most renders of one piece (the original and its checks) before the piece is given up:
#: beyond this, no two workers agreed on it
MAX_RENDERS = 5
#: failed tasks of a job in a row after which a worker gets no more of that job's tasks
BLOCK_AFTER = 3


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
    #: it comes from a worker found suspect: drop it (the task runs again elsewhere)
    REJECT = "reject"


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
    #: workers that must not run it (a check's earlier renderers, suspects)
    exclude: set[str] = field(default_factory=set)
    #: for a check (a re-render of a finished piece on another worker): the piece's check
    check: Check | None = None


@dataclass
class Check:
    """A finished piece rendered again on other workers to compare with it (``--verify``).

    Attributes:
        task: the piece's task (a union of tiles when they were grouped).
        members: the task indices the piece stands for.
        renders: ``(entry index, worker)`` of every render so far, the original first (its
            index is the piece's first member); a check's own entry is ``index``.
        device: the original's device class; checks run on workers of the same class.
        outcome: None while undecided; then ``agreed``, ``settled`` (a third render sided with
            one of two that disagreed), ``moot`` (the original is rendered again anyway),
            ``unsettled`` (no two workers agreed) or ``unchecked`` (no other worker to check).
        suspects: the workers whose render the others disagreed with.
    """

    task: Task
    members: tuple[int, ...]
    renders: list[tuple[int, str]]
    outcome: str | None = None
    suspects: list[str] = field(default_factory=list)
    #: the device the original rendered on (``CPU``, ``OPTIX:NVIDIA A10``): renders are
    #: compared within one device class only
    device: str = ""

    @property
    def original(self) -> str:
        """The worker of the original render."""
        return self.renders[0][1]

    def to_dict(self) -> dict[str, object]:
        """The check as the job's report lists it."""
        return {"frame": self.task.frame, "tile": self.task.tile.index,
                "chunk": self.task.chunk, "tiles": list(self.members),
                "workers": [w for _i, w in self.renders], "outcome": self.outcome,
                "suspects": list(self.suspects), "device": self.device}


@dataclass
class Settled:
    """What settling a check decided (:meth:`JobState.settle`).

    Attributes:
        check: the check.
        discard: entry indices of check renders whose pieces are no longer needed.
        suspects: workers found suspect now (send them nothing more).
        redo: task indices rendered again because a suspect rendered them (their pieces
            must be dropped from their frames).
        reopened: frames merged already that must be merged again once redone.
        failed: an error when no two workers agreed (the task has failed).
    """

    check: Check
    discard: list[int] = field(default_factory=list)
    suspects: list[str] = field(default_factory=list)
    redo: list[int] = field(default_factory=list)
    reopened: list[int] = field(default_factory=list)
    failed: str | None = None
    #: other checks a suspect decided (moot: their original is rendered again; settled: the
    #: only render that disputed their original was the suspect's)
    resolved: list[Check] = field(default_factory=list)


class JobState:
    """The state of one job's tasks.

    Args:
        tasks: the job's tasks.
        retries: how many times a failed task is tried again.
        verify: the share of finished pieces rendered again on another worker and compared
            (0: none, 1: every piece).
        seed: seeds the choice of pieces to check (None: unpredictable).
        gate: whether a frame may render yet (a job that waits frame by frame for another);
            None: every frame may.
    """

    def __init__(self, tasks: Iterable[Task], retries: int, verify: float = 0.0,
                 seed: int | None = None, gate: Callable[[int], bool] | None = None) -> None:
        self.entries: dict[int, TaskEntry] = {t.index: TaskEntry(t) for t in tasks}
        self.retries = retries
        self.verify = verify
        self.gate = gate
        #: workers kept off this job: they failed :data:`BLOCK_AFTER` of its tasks in a row
        self.blocked: set[str] = set()
        self._streaks: dict[str, int] = {}  # a worker's failed tasks of this job in a row
        self._rng = random.Random(seed)
        self._seen = 0  # pieces that could have been checked so far
        self._picks: dict[int, int] = {}  # block -> the piece of it that is checked
        self._next_index = max(self.entries, default=-1) + 1
        #: every check made, in order
        self.checks: list[Check] = []
        #: workers found to disagree with the majority: they get no more tasks of the job
        self.suspects: set[str] = set()
        self._checks_pending: list[int] = []  # check entries first in line
        self._ready: list[int] = []  # frames completed by a check or a redo, to merge
        #: why the job must stop, decided while choosing tasks (see :meth:`take_problems`)
        self.problems: list[RenderFarmError] = []
        self._newly_blocked: list[str] = []  # workers blocked since the last take_blocked
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
    def next_for(self, worker: str, live_workers: int | Collection[str] = 1,
                 group: bool = False, devices: Mapping[str, str] | None = None,
                 checks_only: bool = False) -> Task | None:
        """Start the next task on ``worker`` (which asks because it is free).

        Checks of finished pieces go first (their frames wait for them), each on a worker
        that has not rendered that piece yet. Then tasks go in order (frame by frame), except
        that a retried task avoids the workers it failed on while other workers are alive to
        take it. A suspect worker gets nothing.

        With ``group``, a tile task takes the pending tiles right of it in the same row along
        (as many as :meth:`group_size` allows) and the answer is one task for their union,
        whose :attr:`Task.covers` lists them; each keeps its own state.

        Args:
            worker: the free worker.
            live_workers: the live workers' ids (or only how many there are).
            group: render neighbouring tiles in one call.
            devices: the device class each worker rendered on so far (checks go to a
                worker of the original's class; a worker not yet seen may take any).
            checks_only: start checks of pieces already rendered, nothing else (a paused
                job: its frames whose pieces are in still get written).

        Returns:
            The task now running on ``worker``, or None when nothing suits it.
        """
        live_ids = None if isinstance(live_workers, int) else set(live_workers) - self.suspects
        if live_ids is not None and self.blocked and live_ids <= self.blocked \
                and self.has_pending() and self.ended is None:
            problem = JobFailedError(
                f"every worker failed {BLOCK_AFTER} tasks of this job in a row "
                f"({', '.join(sorted(self.blocked))}): the job stops; see what Blender said "
                "(renderfarm log JOB --failed)")
            self.problems.append(problem)
            self.cancel_pending(problem.message)
            return None
        if worker in self.suspects or worker in self.blocked:
            return None
        live = live_workers if isinstance(live_workers, int) else len(live_ids or ())
        check = self._next_check(worker, live, live_ids, devices or {})
        if check is not None or checks_only:
            return check
        skipped: list[int] = []
        chosen: Task | None = None
        while self._pending:
            index = heapq.heappop(self._pending)
            entry = self.entries[index]
            if entry.status is not TaskStatus.PENDING:
                continue
            if worker in entry.exclude or (worker in entry.failed_on
                                           and len(entry.failed_on) < live):
                skipped.append(index)  # another live worker may take it: leave it
                continue
            if self.gate is not None and not self.gate(entry.task.frame):
                skipped.append(index)  # its frame waits for another job's
                continue
            size = self.group_size(live) if group and entry.task.tiled else 1
            chosen = self._start(entry, worker)
            if size > 1:
                chosen = self._grow(entry, worker, size)
            break
        for index in skipped:
            heapq.heappush(self._pending, index)
        return chosen

    def _next_check(self, worker: str, live: int, live_ids: set[str] | None,
                     devices: Mapping[str, str]) -> Task | None:
        """The first pending check ``worker`` may run; a check no live worker may run is
        given up (see :meth:`_give_up`)."""
        for index in list(self._checks_pending):
            entry = self.entries[index]
            check = entry.check
            assert check is not None
            if entry.status is not TaskStatus.PENDING:
                self._checks_pending.remove(index)
                continue

            def fits(other: str, check: Check = check) -> bool:
                return not check.device or devices.get(other, check.device) == check.device

            if live_ids is not None and not {w for w in live_ids - entry.exclude if fits(w)}:
                self._checks_pending.remove(index)
                self._give_up(entry, "no other worker of its device class is alive to "
                              "render it")
                continue
            if worker in entry.exclude or not fits(worker) or (
                    worker in entry.failed_on and len(entry.failed_on) < live):
                continue
            self._checks_pending.remove(index)
            return self._start(entry, worker)
        return None

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
                and worker not in entry.failed_on and worker not in entry.exclude
                and entry.check is None)

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

    def _enqueue(self, entry: TaskEntry) -> None:
        if entry.check is not None:
            self._checks_pending.append(entry.task.index)
        else:
            heapq.heappush(self._pending, entry.task.index)

    def succeeded(self, index: int) -> bool:
        """Record that task ``index`` finished; True when its frame has every piece now."""
        entry = self.entries[index]
        if entry.status is TaskStatus.DONE:
            return False
        if entry.worker is not None:
            self._streaks[entry.worker] = 0
        self._move(entry, TaskStatus.DONE)
        frame = entry.task.frame
        self._frame_left[frame] -= 1
        return self._frame_left[frame] == 0

    def _release(self, frame: int) -> None:
        """One thing a frame waited for (a check) is over; a frame with nothing left to wait
        for is ready to merge (:meth:`take_ready`)."""
        self._frame_left[frame] -= 1
        if self._frame_left[frame] == 0:
            self._ready.append(frame)

    def take_ready(self) -> list[int]:
        """Frames a check or a redo completed since the last call (merge them)."""
        ready, self._ready = self._ready, []
        return ready

    def all_done(self, indices: Iterable[int]) -> bool:
        """Whether every task of ``indices`` has finished (another copy may have won)."""
        return all(self.entries[i].status is TaskStatus.DONE for i in indices)

    # -- what happened, and what it means ---------------------------------------------------
    def on_result(self, members: Iterable[int], worker: str | None = None) -> Verdict:
        """What to do with a result for a task covering ``members`` (from ``worker``)."""
        members = list(members)
        if self.ended is not None:
            return Verdict.LATE
        if self.all_done(members):
            return Verdict.DUPLICATE
        if worker is not None and worker in self.suspects:
            return Verdict.REJECT
        return Verdict.ACCEPT

    def reject(self, members: Iterable[int], worker: str) -> None:
        """Put back the tasks a suspect ``worker`` was running (its results are not used);
        they run elsewhere, no attempt counted."""
        for index in members:
            entry = self.entries[index]
            if entry.status is TaskStatus.RUNNING and entry.worker == worker:
                entry.exclude.add(worker)
                self.requeue(index)

    # -- verification -------------------------------------------------------------------------
    def start_check(self, task: Task, worker: str, device: str = "") -> int | None:
        """Decide whether the piece ``worker`` just finished for ``task`` is checked (a
        ``verify`` share of pieces, chosen at random); if so, add the check: the same task
        rendered by another worker. Call before :meth:`complete` for the piece, so its frame
        waits for the check.

        Returns:
            The check's entry index, or None when the piece is not checked.
        """
        members = tuple(task.members)
        if (self.verify <= 0 or self.ended is not None or worker in self.suspects
                or any(self.entries[i].check is not None for i in members)
                or not self._chosen()):
            return None
        check = Check(task, members, [(members[0], worker)], device=device)
        self.checks.append(check)
        return self._add_check(check, task.frame)

    def _chosen(self) -> bool:
        """Whether the next finished piece is checked. Pieces fall in blocks of about
        ``1 / verify`` in the order they finish, and one piece of each block, chosen at
        random, is checked: the share is exact (a tenth of 64 pieces is 6 or 7 checks, not
        anywhere from 0 to 15), and which piece no worker can tell."""
        index = self._seen
        self._seen += 1
        block = math.floor(index * self.verify + 1e-9)
        if block not in self._picks:
            first = math.ceil(block / self.verify - 1e-9)
            end = max(math.ceil((block + 1) / self.verify - 1e-9), first + 1)
            self._picks = {block: self._rng.randrange(first, end)}
        return self._picks[block] == index

    def _add_check(self, check: Check, frame: int) -> int:
        index = self._next_index
        self._next_index += 1
        entry = TaskEntry(replace(check.task, index=index, covers=()), check=check,
                          exclude={w for _i, w in check.renders} | self.suspects)
        self.entries[index] = entry
        self._counts[TaskStatus.PENDING] += 1
        self._frame_left[frame] += 1
        self._checks_pending.append(index)
        return index

    def check_of(self, index: int) -> Check | None:
        """The check entry ``index`` renders for, or None for a task of the job's own."""
        entry = self.entries.get(index)
        return entry.check if entry is not None else None

    def settle(self, index: int, equal_to: Collection[int]) -> Settled:
        """Record what a check's render showed and decide.

        Args:
            index: the check's entry (it has rendered).
            equal_to: the entry indices of the piece's earlier renders whose pixels equal
                this render's.

        Returns:
            What follows: pieces to discard, suspects, tasks to render again, frames to
            merge again, or the failure when no two workers agree.
        """
        entry = self.entries[index]
        check = entry.check
        assert check is not None and entry.worker is not None
        settled = Settled(check)
        if entry.status is not TaskStatus.RUNNING:  # moot already: nothing to decide
            settled.discard.append(index)
            return settled
        check.renders.append((index, entry.worker))
        self._move(entry, TaskStatus.DONE)
        if check.outcome is None:
            agree = [i for i, _w in check.renders[:-1] if i in equal_to]
            if agree:
                majority = {index, *agree}
                check.outcome = "agreed" if len(check.renders) == 2 else "settled"
                check.suspects = [w for i, w in check.renders if i not in majority]
                for worker in check.suspects:
                    self._suspect(worker, settled)
            elif len(check.renders) >= MAX_RENDERS:
                check.outcome = "unsettled"
                settled.failed = (f"verification: {len(check.renders)} workers rendered frame "
                                  f"{check.task.frame} tile {check.task.tile.index} and no two "
                                  f"agree ({', '.join(w for _i, w in check.renders)})")
                for member in check.members:
                    self.entries[member].last_error = settled.failed
            else:  # two disagree (or all so far): one more worker settles it
                self._add_check(check, check.task.frame)
        if check.outcome is not None:
            settled.discard += [i for i, _w in check.renders[1:]]
        self._release(check.task.frame)
        return settled

    def _give_up(self, entry: TaskEntry, why: str) -> None:
        """A check cannot run (no worker may render it): a first check leaves the piece
        unchecked; an arbitration fails the piece (two workers disagree, nobody settles it)."""
        check = entry.check
        assert check is not None
        if len(check.renders) == 1:
            self._leave_unchecked(entry)
            return
        self._move(entry, TaskStatus.FAILED)
        check.outcome = "unsettled"
        entry.last_error = (f"verification: workers {', '.join(w for _i, w in check.renders)} "
                            f"disagree on frame {check.task.frame} tile "
                            f"{check.task.tile.index} and {why}: add a worker, or render "
                            "with --verify 0")
        self.problems.append(VerificationError(entry.last_error, frame=check.task.frame,
                                               tile=check.task.tile.index))

    def _leave_unchecked(self, entry: TaskEntry) -> None:
        """A first check that cannot render (no worker may, or it failed everywhere) leaves
        its piece unchecked, not failed: the frame goes on."""
        assert entry.check is not None
        entry.check.outcome = "unchecked"
        self._move(entry, TaskStatus.DONE)
        self._release(entry.task.frame)

    def exclusive(self, worker: str, others: Collection[str]) -> bool:
        """Whether a pending task may run on ``worker`` and on none of ``others`` (a check
        of another worker's piece, a retry avoiding the workers it failed on)."""
        if worker in self.suspects or worker in self.blocked:
            return False
        for entry in self.entries.values():
            if entry.status is not TaskStatus.PENDING or worker in entry.exclude:
                continue
            if all(o in entry.exclude or o in entry.failed_on for o in others):
                return True
        return False

    def take_blocked(self) -> list[str]:
        """Workers kept off the job since the last call (to say so)."""
        blocked, self._newly_blocked = self._newly_blocked, []
        return blocked

    def take_problems(self) -> list[RenderFarmError]:
        """Why the job must stop, decided while choosing tasks (an arbitration nobody can
        run, every worker kept off the job)."""
        problems, self.problems = self.problems, []
        return problems

    def _suspect(self, worker: str, settled: Settled) -> None:
        """``worker`` disagreed with the majority: it gets no more tasks of the job, every
        piece it finished is rendered again elsewhere (frames merged with them are merged
        again), and checks of its pieces are moot."""
        if worker in self.suspects:
            return
        self.suspects.add(worker)
        settled.suspects.append(worker)
        reopened: set[int] = set()
        for index, entry in self.entries.items():
            if entry.check is None and entry.status is TaskStatus.DONE and entry.worker == worker:
                self._move(entry, TaskStatus.PENDING)
                entry.attempts, entry.worker, entry.backups = 0, None, 0
                entry.exclude.add(worker)
                heapq.heappush(self._pending, index)
                frame = entry.task.frame
                if self._frame_left[frame] == 0:  # merged, or about to be
                    reopened.add(frame)
                self._frame_left[frame] += 1
                settled.redo.append(index)
            elif entry.check is not None and entry.status is not TaskStatus.FAILED:
                entry.exclude.add(worker)
                check = entry.check
                if check.original == worker and check.outcome is None:
                    check.outcome = "moot"  # its piece is rendered again anyway
                elif check.outcome is None and entry.status is not TaskStatus.DONE and {
                        w for _i, w in check.renders[1:]} == {worker}:
                    # the only render that disagreed with the original is the suspect's:
                    # the original stands, no third opinion is needed
                    check.outcome, check.suspects = "settled", [worker]
                    settled.discard += [i for i, _w in check.renders[1:]]
                if check.outcome in ("moot", "settled") and entry.status is not \
                        TaskStatus.DONE:
                    self._move(entry, TaskStatus.DONE)  # a running copy's result is dropped
                    self._release(entry.task.frame)
                    if check is not settled.check and check not in settled.resolved:
                        settled.resolved.append(check)
        self._ready = [f for f in self._ready if self._frame_left[f] == 0]
        settled.reopened = sorted(reopened)

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
        worker = self.entries[members[0]].worker
        if worker is not None and not cancelled:  # one failed call, however many tiles
            streak = self._streaks[worker] = self._streaks.get(worker, 0) + 1
            if streak >= BLOCK_AFTER and worker not in self.blocked:
                self.blocked.add(worker)
                self._newly_blocked.append(worker)
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
        if entry.status is not TaskStatus.RUNNING or entry.backups or entry.check is not None:
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
            self._enqueue(entry)
            return True
        if entry.check is not None and len(entry.check.renders) == 1:
            self._leave_unchecked(entry)
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
            self._enqueue(entry)

    def redo(self, indices: Iterable[int]) -> list[int]:
        """Render finished tasks ``indices`` again without counting an attempt: their pieces
        were lost with the node that kept them. Returns the frames that wait for them again
        (merged already, or about to be)."""
        reopened: set[int] = set()
        for index in indices:
            entry = self.entries[index]
            if entry.status is not TaskStatus.DONE or entry.check is not None:
                continue
            self._move(entry, TaskStatus.PENDING)  # no attempt counted, no copy left
            entry.worker, entry.attempts, entry.backups = None, max(0, entry.attempts - 1), 0
            self._enqueue(entry)
            if self._frame_left[entry.task.frame] == 0:
                reopened.add(entry.task.frame)
            self._frame_left[entry.task.frame] += 1
        self._ready = [f for f in self._ready if self._frame_left[f] == 0]
        return sorted(reopened)

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
        self._checks_pending.clear()
