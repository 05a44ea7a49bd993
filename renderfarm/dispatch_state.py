"""Every dispatch decision, as pure state: events in, instructions out.

:class:`DispatchState` is what the dispatcher knows of one worker pool: its workers and their
queues, the jobs it serves (priority, paused, cancelled), the calls running on the workers,
backups of lagging calls, and each job's paces. It does no I/O, starts no thread and reads
no clock: the dispatcher thread (:class:`renderfarm.executor.PoolRunner`) turns what happens
(a job added, a worker started, a call finished at ``now``) into events, hands them to
:meth:`DispatchState.handle`, and carries out the instructions it returns (start a call on a
worker, cancel a call, replace a worker, deliver a result to its job, fail or requeue a
task, end a job). One small handler per event.

What a job's tasks are is the job's own pure state (:class:`renderfarm.state.JobState`),
which the dispatch state asks through :class:`Work`: which task a worker gets next, how many
wait, whether a task may get a backup copy. An exception from a job's :class:`Work` ends that
job (an :class:`EndJob` instruction), never the dispatcher.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from renderfarm.errors import (
    CancelledError,
    RenderError,
    RenderFarmError,
    TaskTimeoutError,
)
from renderfarm.tags import Requirement, WorkerTags, satisfies

#: calls queued on a worker at once: with 2 a worker has its next call waiting while it
#: renders, so it never waits for the driver between tasks, and still gets work only when
#: it is nearly free (fast workers do more)
DEPTH = 2
#: a running call lags when it has run this many times the median of its job's finished
#: tasks (per member of a group), and at least :data:`STRAGGLER_MIN_SECONDS`
STRAGGLER_FACTOR = 2.0
STRAGGLER_MIN_SECONDS = 1.0
#: finished tasks a job needs before its calls can count as lagging
STRAGGLER_SAMPLES = 3
#: for a job whose tasks take less than this (median), several of them share one call, up
#: to the job's ``batch``: Ray's per-call cost is then paid once for all
CALL_SECONDS = 0.02
#: the recent finished tasks a job's pace is taken from
PACE_WINDOW = 50


class Work(Protocol):
    """What the dispatch state asks a job (its answers come from the job's pure state)."""

    def next_task(self, worker: str, live: frozenset[str], checks_only: bool) -> Any:
        """The job's next task for ``worker`` (``live``: the workers taking this job's
        tasks now), or None; ``checks_only``: the job is paused (checks of pieces already
        rendered only)."""

    def pending(self) -> int:
        """How many of the job's tasks wait for a worker."""

    def exclusive(self, worker: str, others: frozenset[str]) -> bool:
        """Whether a waiting task may run on ``worker`` and on none of ``others``."""

    def may_backup(self, task: Any) -> bool:
        """Whether a lagging ``task`` may get a backup copy (it then counts as backed up)."""


# -- events ------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobAdded:
    """A job's tasks are ready to be dispatched.

    Attributes:
        job_id: the job.
        key: what a worker must have loaded to run its tasks without opening a file.
        work: the job's answers (:class:`Work`).
        priority: higher first.
        timeout: seconds a task may run (per member of a group of tiles), or None.
        require: what a worker must offer to take the job's tasks (its ``--require``, as
            :func:`renderfarm.tags.parse_requirements` reads it); empty: any worker.
        backups: whether lagging calls get a backup copy on an idle worker.
        batch: the most tasks one call may carry (several when the job's worker code takes
            a list of tasks; a call then lasts about :data:`CALL_SECONDS`).
        paused: the job was paused before it was dispatched.
        cancelled: the job was cancelled before it was dispatched (it gets nothing).
        max_workers: the most workers the job asks the cluster for (None: as many as its
            waiting tasks can keep busy).
    """

    job_id: str
    key: str
    work: Work
    priority: int = 0
    timeout: float | None = None
    require: tuple[Requirement, ...] = ()
    backups: bool = True
    batch: int = 1
    paused: bool = False
    cancelled: bool = False
    max_workers: int | None = None


@dataclass(frozen=True)
class JobHeld:
    """A job needs a worker outside its dispatched calls (opening its file before its tasks
    exist, finishing and encoding after): ``held`` from the first worker it waits for until
    it ends. It counts for at least one worker while held."""

    job_id: str
    held: bool


@dataclass(frozen=True)
class JobRemoved:
    """The job waits for nothing more: it gets no task (calls still running end unwatched
    by it: the job drops their results as late)."""

    job_id: str


@dataclass(frozen=True)
class JobCancelled:
    """Stop the job at ``now``: its running calls are stopped, nothing more starts."""

    job_id: str
    now: float


@dataclass(frozen=True)
class JobPaused:
    """Start no more renders of the job (checks of pieces already rendered still start)."""

    job_id: str


@dataclass(frozen=True)
class JobResumed:
    """Start the job's renders again."""

    job_id: str


@dataclass(frozen=True)
class JobPriority:
    """The job's priority changed."""

    job_id: str
    priority: int


@dataclass(frozen=True)
class JobFaulted:
    """The job's own code failed (storing a result, a hook) at ``now``: the job ends with
    ``error``."""

    job_id: str
    error: BaseException
    now: float


@dataclass(frozen=True)
class WorkerJoined:
    """A worker was created; it takes tasks once it has started."""

    worker_id: str


@dataclass(frozen=True)
class WorkerStarted:
    """A worker answered: it takes tasks from now on; ``tags``: what its node offers
    (posted again when that changes: a Blender registered on its machine since)."""

    worker_id: str
    tags: WorkerTags = field(default_factory=WorkerTags)


@dataclass(frozen=True)
class WorkerLoaded:
    """A call outside the dispatcher (opening a job's file to read its scene, finishing a
    frame) left ``key``'s file loaded on a worker: it is preferred for that job's tasks."""

    worker_id: str
    key: str


@dataclass(frozen=True)
class WorkerLost:
    """A worker was seen gone at ``now`` (its node left, it failed to start, something
    replaced it): its running call fails with ``error``, its queued calls go back to their
    jobs."""

    worker_id: str
    error: RenderFarmError
    now: float


@dataclass(frozen=True)
class WorkerDisabled:
    """An operator took a worker out (``reason``) or, with ``reason`` None, put it back
    (which also clears a suspicion of it)."""

    worker_id: str
    reason: str | None


@dataclass(frozen=True)
class WorkerSuspect:
    """A worker's pixels disagreed with other workers': it gets no more tasks."""

    worker_id: str
    reason: str


@dataclass(frozen=True)
class CallDone:
    """A call returned its value at ``now``."""

    call_id: int
    now: float


@dataclass(frozen=True)
class CallFailed:
    """A call raised at ``now``: its worker died (``worker_died``), or the worker's code
    failed; either way the worker is replaced and the call's tasks fail with ``error``."""

    call_id: int
    now: float
    error: RenderFarmError
    worker_died: bool = True


@dataclass(frozen=True)
class CallNotStarted:
    """Starting a call failed at ``now`` before it reached the worker (the job's code
    raised: a :class:`JobFaulted` follows)."""

    call_id: int
    now: float


@dataclass(frozen=True)
class ClusterLost:
    """The Ray cluster under the pool failed: every job ends with ``error``."""

    error: RenderFarmError


@dataclass(frozen=True)
class Tick:
    """Time passed: stop calls over their timeout, give free workers their next calls."""

    now: float


Event = (JobAdded | JobHeld | JobRemoved | JobCancelled | JobPaused | JobResumed | JobPriority
         | JobFaulted | WorkerJoined | WorkerStarted | WorkerLoaded | WorkerLost
         | WorkerDisabled
         | WorkerSuspect | CallDone | CallFailed | CallNotStarted | ClusterLost | Tick)


# -- instructions ------------------------------------------------------------------------
@dataclass(frozen=True)
class StartCall:
    """Start ``tasks`` of a job on a worker, in one call (``backup_of``: the call this one
    copies, whose first result wins)."""

    call_id: int
    job_id: str
    work: Work
    worker_id: str
    tasks: tuple[Any, ...]
    backup_of: int | None = None


@dataclass(frozen=True)
class CancelCall:
    """Ask Ray to stop a call nobody waits for (the losing copy of a backed-up task)."""

    call_id: int


@dataclass(frozen=True)
class ReplaceWorker:
    """Kill a worker and start another in its place."""

    worker_id: str
    reason: str


@dataclass(frozen=True)
class Deliver:
    """Hand a call's value to its job (its worker is free for the next one)."""

    call_id: int
    job_id: str
    work: Work
    worker_id: str
    tasks: tuple[Any, ...]


@dataclass(frozen=True)
class FailTask:
    """An attempt of ``task`` failed with ``error``: the job retries or fails it. ``started``
    and ``ended`` (the dispatcher's clock; ``started`` None: the call never started) say
    what the attempt cost, for the job's report."""

    call_id: int
    job_id: str
    work: Work
    worker_id: str
    task: Any
    error: RenderFarmError
    started: float | None
    ended: float


@dataclass(frozen=True)
class Requeue:
    """Put ``task`` back: it was queued on a worker that went away before starting it (no
    attempt is counted)."""

    call_id: int
    job_id: str
    work: Work
    task: Any


@dataclass(frozen=True)
class EndJob:
    """The job ends with ``error`` (its own code failed, or the cluster did)."""

    job_id: str
    work: Work
    error: BaseException


@dataclass(frozen=True)
class ReleaseWorker:
    """Stop a worker the pool's work no longer needs (it is idle): its node goes back to the
    autoscaler, which releases it after its idle timeout."""

    worker_id: str
    reason: str


Instruction = (StartCall | CancelCall | ReplaceWorker | ReleaseWorker | Deliver | FailTask
               | Requeue | EndJob)


# -- what the state holds ----------------------------------------------------------------
@dataclass
class WorkerSlot:
    """A worker as the dispatcher sees it.

    Attributes:
        worker_id: its id.
        started: whether it answered (only started workers get calls).
        suspect: why it is suspect, or None.
        disabled: why an operator took it out, or None.
        loaded: the key of the job it last got a call of (the file it has open).
        queue: its calls, oldest first: the first runs, the others wait behind it.
        tags: what its node offers (for jobs' ``--require``).
    """

    worker_id: str
    started: bool = False
    suspect: str | None = None
    disabled: str | None = None
    loaded: str | None = None
    queue: list[int] = field(default_factory=list)
    tags: WorkerTags = field(default_factory=WorkerTags)
    #: since when it has had no call (None: it has one, or has not started)
    idle_since: float | None = None

    @property
    def trusted(self) -> bool:
        """Started, neither suspect nor disabled: it gets calls."""
        return self.started and self.suspect is None and self.disabled is None


@dataclass
class JobSlot:
    """A job as the dispatcher sees it (see :class:`JobAdded` for the fixed attributes)."""

    job_id: str
    key: str
    work: Work
    priority: int
    timeout: float | None
    require: tuple[Requirement, ...]
    backups: bool
    batch: int
    paused: bool = False
    cancelled: bool = False
    max_workers: int | None = None
    #: what ended the job (its own code failed), or None
    fault: BaseException | None = None
    #: removed: it gets no more tasks
    removed: bool = False
    #: seconds per member of the job's finished calls, newest last
    durations: list[float] = field(default_factory=list)
    #: the same per worker (how fast each worker is on this job)
    paces: dict[str, list[float]] = field(default_factory=dict)
    #: whether each worker meets :attr:`require` (forgotten when a worker's tags change)
    fits: dict[str, bool] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Whether the job takes new calls."""
        return not (self.cancelled or self.removed or self.fault is not None)

    def accepts_worker(self, slot: WorkerSlot) -> bool:
        """Whether the job may use the worker (its ``--require``)."""
        if not self.require:
            return True
        if slot.worker_id not in self.fits:
            self.fits[slot.worker_id] = satisfies(slot.tags, self.require)
        return self.fits[slot.worker_id]

    def typical(self) -> float:
        """Median seconds per member of the job's recent finished calls."""
        return statistics.median(self.durations[-PACE_WINDOW:])

    def pace_of(self, worker_id: str) -> float | None:
        """Median seconds per member of the worker's calls of this job (None: under 2)."""
        own = self.paces.get(worker_id, [])
        return statistics.median(own) if len(own) >= 2 else None


@dataclass
class Call:
    """A call on a worker: ``started`` is None while it waits behind the worker's running
    call; ``twin`` is the other copy of a backed-up call; ``dropped``: its twin finished
    first, nobody waits for it."""

    call_id: int
    job_id: str
    worker_id: str
    tasks: tuple[Any, ...]
    started: float | None
    twin: int | None = None
    dropped: bool = False

    @property
    def members(self) -> int:
        """How many of the job's tasks it stands for (grouped tiles count each)."""
        return sum(len(getattr(task, "members", (None,))) for task in self.tasks)


class DispatchState:
    """The dispatcher's state of one worker pool; change it only through :meth:`handle`.

    Args:
        depth: calls queued on a worker at once.
        release_after: for a pool that grows and shrinks with its work (Ray's autoscaler
            adds its nodes): seconds a started worker may stay idle while the work wants
            fewer workers than the pool has, before it is released (:class:`ReleaseWorker`);
            None: workers are kept.
    """

    def __init__(self, depth: int = DEPTH, release_after: float | None = None) -> None:
        self.depth = depth
        self.release_after = release_after
        #: jobs that need a worker outside their dispatched calls (:class:`JobHeld`)
        self.held: set[str] = set()
        #: how many workers the pool's work can keep busy now (updated on every tick of a
        #: pool that grows and shrinks, one with ``release_after``): the running calls'
        #: workers and the waiting tasks of each job that is neither paused nor cancelled,
        #: at most its ``max_workers``
        self.wanted = 0
        #: the same by the kind of worker wanted: the ``--require`` of the jobs that want them
        #: (``()``: any worker)
        self.wanted_kinds: dict[tuple[Requirement, ...], int] = {}
        self.workers: dict[str, WorkerSlot] = {}
        self.jobs: dict[str, JobSlot] = {}
        self.calls: dict[int, Call] = {}
        #: what ended the pool (the cluster failed), or None
        self.lost: RenderFarmError | None = None
        self._call_ids = itertools.count(1)
        self._handlers: dict[type, Callable[[Any], list[Instruction]]] = {
            JobAdded: self._job_added, JobHeld: self._job_held, JobRemoved: self._job_removed,
            JobCancelled: self._job_cancelled, JobPaused: self._job_paused,
            JobResumed: self._job_resumed, JobPriority: self._job_priority,
            JobFaulted: self._job_faulted, WorkerJoined: self._worker_joined,
            WorkerStarted: self._worker_started, WorkerLoaded: self._worker_loaded,
            WorkerLost: self._worker_lost,
            WorkerDisabled: self._worker_disabled, WorkerSuspect: self._worker_suspect,
            CallDone: self._call_done, CallFailed: self._call_failed,
            CallNotStarted: self._call_not_started, ClusterLost: self._cluster_lost,
            Tick: self._tick,
        }

    def handle(self, *events: Event) -> list[Instruction]:
        """Take ``events`` in order; the instructions to carry out, in order."""
        out: list[Instruction] = []
        for event in events:
            out += self._handlers[type(event)](event)
        return out

    # -- queries (read-only) ---------------------------------------------------------------
    def waiting(self) -> bool:
        """Whether a call somebody waits for runs (losing copies of backed-up calls do not
        count)."""
        return any(not call.dropped for call in self.calls.values())

    def current(self, worker_id: str) -> Call | None:
        """The call a worker runs now, or None."""
        slot = self.workers.get(worker_id)
        if slot is None or not slot.queue:
            return None
        return self.calls.get(slot.queue[0])

    # -- jobs ------------------------------------------------------------------------------
    def _job_added(self, event: JobAdded) -> list[Instruction]:
        earlier = self.jobs.get(event.job_id)
        if earlier is not None:  # an earlier run of the job still has calls: they stay its
            self._rename(earlier, f"{event.job_id}#{next(self._call_ids)}")
        self.jobs[event.job_id] = JobSlot(
            event.job_id, event.key, event.work, event.priority, event.timeout,
            tuple(event.require), event.backups, max(1, event.batch), paused=event.paused,
            cancelled=event.cancelled, max_workers=event.max_workers)
        if self.lost is not None:
            self.jobs[event.job_id].fault = self.lost
            return [EndJob(event.job_id, event.work, self.lost)]
        return []

    def _job_held(self, event: JobHeld) -> list[Instruction]:
        if event.held:
            self.held.add(event.job_id)
        else:
            self.held.discard(event.job_id)
        return []

    def _rename(self, job: JobSlot, name: str) -> None:
        """Keep an earlier run of a job, done taking tasks, under ``name``."""
        del self.jobs[job.job_id]
        for call in self.calls.values():
            if call.job_id == job.job_id:
                call.job_id = name
        job.job_id = name
        job.removed = True
        self.jobs[name] = job
        self._forget_if_idle(job)

    def _job_removed(self, event: JobRemoved) -> list[Instruction]:
        job = self.jobs.get(event.job_id)
        if job is not None:
            job.removed = True
            self._forget_if_idle(job)
        return []

    def _job_cancelled(self, event: JobCancelled) -> list[Instruction]:
        job = self.jobs.get(event.job_id)
        if job is None or job.cancelled:
            return []
        job.cancelled = True
        return self._stop_calls(job, CancelledError("the job was cancelled", retryable=False),
                                "the worker was stopped because another job was cancelled",
                                event.now)

    def _job_paused(self, event: JobPaused) -> list[Instruction]:
        if event.job_id in self.jobs:
            self.jobs[event.job_id].paused = True
        return []

    def _job_resumed(self, event: JobResumed) -> list[Instruction]:
        if event.job_id in self.jobs:
            self.jobs[event.job_id].paused = False
        return []

    def _job_priority(self, event: JobPriority) -> list[Instruction]:
        if event.job_id in self.jobs:
            self.jobs[event.job_id].priority = event.priority
        return []

    def _job_faulted(self, event: JobFaulted) -> list[Instruction]:
        job = self.jobs.get(event.job_id)
        return self._fault(job, event.error, event.now) if job is not None else []

    def _fault(self, job: JobSlot, error: BaseException, now: float) -> list[Instruction]:
        """End a job whose own code failed: its calls stop, none of its answers is asked
        again."""
        if job.fault is not None:
            return []
        job.fault = error
        return [EndJob(job.job_id, job.work, error),
                *self._stop_calls(job, None, "the worker was stopped because another job "
                                  "failed", now)]

    def _stop_calls(self, job: JobSlot, error: RenderFarmError | None, reason: str,
                    now: float) -> list[Instruction]:
        """Stop a job's calls: a running one's worker is replaced (its other queued calls go
        back to their jobs), a queued one is cancelled and left to end unwatched; with
        ``error``, the job hears of each running one."""
        out: list[Instruction] = []
        for call in list(self.calls.values()):
            if call.job_id != job.job_id or call.dropped or call.call_id not in self.calls:
                continue
            if call.started is None:  # never started: Ray drops it, its worker stays
                call.dropped = True
                out.append(CancelCall(call.call_id))
                continue
            self._end_call(call)
            if error is not None:
                out += self._fail(call, job, error, now)
            out += self._drop_worker(call.worker_id, RenderError(reason, retryable=True),
                                     reason, now)
        self._forget_if_idle(job)
        return out

    def _forget_if_idle(self, job: JobSlot) -> None:
        if job.removed and not any(c.job_id == job.job_id for c in self.calls.values()):
            del self.jobs[job.job_id]

    # -- workers ---------------------------------------------------------------------------
    def _worker_joined(self, event: WorkerJoined) -> list[Instruction]:
        self.workers.setdefault(event.worker_id, WorkerSlot(event.worker_id))
        return []

    def _worker_started(self, event: WorkerStarted) -> list[Instruction]:
        slot = self.workers.setdefault(event.worker_id, WorkerSlot(event.worker_id))
        slot.started = True
        if slot.tags != event.tags:  # what it offers changed: each job asks again
            slot.tags = event.tags
            for job in self.jobs.values():
                job.fits.pop(event.worker_id, None)
        return []

    def _worker_loaded(self, event: WorkerLoaded) -> list[Instruction]:
        slot = self.workers.get(event.worker_id)
        if slot is not None and not slot.queue:  # its queued calls will load their own
            slot.loaded = event.key
        return []

    def _worker_lost(self, event: WorkerLost) -> list[Instruction]:
        slot = self.workers.pop(event.worker_id, None)
        if slot is None:
            return []
        return self._empty_queue(slot, event.error, event.now)

    def _worker_disabled(self, event: WorkerDisabled) -> list[Instruction]:
        slot = self.workers.get(event.worker_id)
        if slot is not None:
            slot.disabled = event.reason
            if event.reason is None:
                slot.suspect = None
        return []

    def _worker_suspect(self, event: WorkerSuspect) -> list[Instruction]:
        slot = self.workers.get(event.worker_id)
        if slot is not None:
            slot.suspect = slot.suspect or event.reason
        return []

    def _drop_worker(self, worker_id: str, error: RenderFarmError, reason: str,
                     ended: float | None) -> list[Instruction]:
        """Replace a worker: a call it was running fails with ``error``, queued ones go
        back to their jobs."""
        slot = self.workers.pop(worker_id, None)
        out: list[Instruction] = [ReplaceWorker(worker_id, reason)]
        if slot is not None:
            out += self._empty_queue(slot, error, ended)
        return out

    def _empty_queue(self, slot: WorkerSlot, error: RenderFarmError,
                     ended: float | None) -> list[Instruction]:
        out: list[Instruction] = []
        for call_id in list(slot.queue):
            call = self.calls.get(call_id)
            if call is None:
                continue
            self._end_call(call)
            job = self.jobs.get(call.job_id)
            if job is None or call.dropped or job.fault is not None or job.cancelled:
                continue
            if call.started is None:
                out += [Requeue(call.call_id, job.job_id, job.work, task)
                        for task in call.tasks]
            else:
                out += self._fail(call, job, error, ended)
        return out

    # -- calls -----------------------------------------------------------------------------
    def _end_call(self, call: Call) -> None:
        """Take ``call`` off its worker and the running calls, and unlink its twin."""
        self.calls.pop(call.call_id, None)
        slot = self.workers.get(call.worker_id)
        if slot is not None and call.call_id in slot.queue:
            slot.queue.remove(call.call_id)
        twin = self.calls.get(call.twin) if call.twin is not None else None
        if twin is not None:
            twin.twin = None

    def _fail(self, call: Call, job: JobSlot, error: RenderFarmError,
              ended: float | None) -> list[Instruction]:
        end = ended if ended is not None else (call.started or 0.0)
        return [FailTask(call.call_id, job.job_id, job.work, call.worker_id, task, error,
                         call.started, end) for task in call.tasks]

    def _next_starts(self, worker_id: str, now: float) -> None:
        """The call behind a finished one starts now."""
        slot = self.workers.get(worker_id)
        if slot is not None and slot.queue:
            head = self.calls.get(slot.queue[0])
            if head is not None and head.started is None:
                head.started = now

    def _call_done(self, event: CallDone) -> list[Instruction]:
        call = self.calls.get(event.call_id)
        if call is None:  # its worker was replaced meanwhile: its tasks went back already
            return []
        twin_id = call.twin
        self._end_call(call)
        self._next_starts(call.worker_id, event.now)
        job = self.jobs.get(call.job_id)
        if call.dropped or job is None:  # its twin won: only the worker mattered
            if job is not None:
                self._forget_if_idle(job)
            return []
        out: list[Instruction] = []
        twin = self.calls.get(twin_id) if twin_id is not None else None
        if twin is not None:  # this copy won: stop the other
            twin.dropped = True
            out.append(CancelCall(twin.call_id))
        if call.started is not None:
            seconds = (event.now - call.started) / max(call.members, 1)
            job.durations.append(seconds)
            del job.durations[:-4 * PACE_WINDOW]
            pace = job.paces.setdefault(call.worker_id, [])
            pace.append(seconds)
            del pace[:-20]
        out.append(Deliver(call.call_id, job.job_id, job.work, call.worker_id, call.tasks))
        self._forget_if_idle(job)
        return out

    def _call_failed(self, event: CallFailed) -> list[Instruction]:
        call = self.calls.get(event.call_id)
        if call is None:
            return []
        self._end_call(call)
        job = self.jobs.get(call.job_id)
        out: list[Instruction] = []
        if call.dropped:  # nobody waits for it: only a dead worker matters
            if event.worker_died:
                out += self._drop_worker(call.worker_id, event.error,
                                         event.error.one_line(), event.now)
            else:  # cancelled, or failed: the call behind it starts now
                self._next_starts(call.worker_id, event.now)
        else:
            if job is not None and job.fault is None:
                out += self._fail(call, job, event.error, event.now)
            replaced = event.error if event.worker_died else RenderError("worker replaced")
            out += self._drop_worker(call.worker_id, replaced, event.error.one_line(),
                                     event.now)
        if job is not None:
            self._forget_if_idle(job)
        return out

    def _call_not_started(self, event: CallNotStarted) -> list[Instruction]:
        call = self.calls.get(event.call_id)
        if call is not None:
            self._end_call(call)
            self._next_starts(call.worker_id, event.now)
        return []

    def _cluster_lost(self, event: ClusterLost) -> list[Instruction]:
        self.lost = event.error
        out: list[Instruction] = []
        for job in self.jobs.values():
            if job.fault is None:
                job.fault = event.error
                out.append(EndJob(job.job_id, job.work, event.error))
        self.calls.clear()
        for slot in self.workers.values():
            slot.queue.clear()
        return out

    # -- time ------------------------------------------------------------------------------
    def _tick(self, event: Tick) -> list[Instruction]:
        if self.lost is not None:
            return []
        out = self._timeouts(event.now)
        out += self._fill(event.now)
        if self.release_after is not None:  # a fixed pool asks for nothing
            self.wanted_kinds = self._demand(event.now, out)
            self.wanted = sum(self.wanted_kinds.values())
            out += self._release(event.now)
        return out

    def _demand(self, now: float, out: list[Instruction]
                ) -> dict[tuple[Requirement, ...], int]:
        """How many workers the pool's work can keep busy, by the kind each job asks for
        (its ``--require``): the trusted workers running a call now (each once, for the job
        it runs) plus, for each active, unpaused job, its waiting tasks (with its running
        workers, at most its ``max_workers``); a held job wants one at least. Calls queued
        behind a running one are bound to their worker: they want none."""
        running: dict[str, set[str]] = {}
        kinds: dict[tuple[Requirement, ...], int] = {}
        busy: set[str] = set()
        for call in sorted(self.calls.values(), key=lambda c: c.call_id):
            slot = self.workers.get(call.worker_id)
            if call.dropped or call.started is None or slot is None or not slot.trusted \
                    or call.worker_id in busy:
                continue
            running.setdefault(call.job_id, set()).add(call.worker_id)
            busy.add(call.worker_id)
            job = self.jobs.get(call.job_id)
            kind = job.require if job is not None else ()
            kinds[kind] = kinds.get(kind, 0) + 1
        counted: set[str] = set()
        for job in list(self.jobs.values()):
            if not job.active or job.paused:
                continue
            counted.add(job.job_id)
            pending = max(0, int(self._ask(job, now, job.work.pending, out=out) or 0))
            mine = len(running.get(job.job_id, ()))
            if job.max_workers is not None:
                pending = min(pending, max(0, job.max_workers - mine))
            if job.job_id in self.held and mine + pending == 0:
                pending = 1
            if pending:
                kinds[job.require] = kinds.get(job.require, 0) + pending
        paused = {j for j, job in self.jobs.items() if job.paused and job.active}
        waiting = len(self.held - counted - paused)  # opening their files: any worker
        if waiting:
            kinds[()] = kinds.get((), 0) + waiting
        return kinds

    def _release(self, now: float) -> list[Instruction]:
        """Trusted workers idle for :attr:`release_after` while the work wants fewer than
        the pool has, longest idle first (a suspect or disabled worker stays for an operator
        to look at, and counts for nothing)."""
        trusted = [slot for slot in self.workers.values() if slot.trusted]
        for slot in trusted:
            if slot.queue:
                slot.idle_since = None
            elif slot.idle_since is None:
                slot.idle_since = now
        if self.release_after is None or self.lost is not None:
            return []
        surplus = len(trusted) - self.wanted
        idle = sorted((slot for slot in trusted if not slot.queue and slot.idle_since
                       is not None and now - slot.idle_since >= self.release_after),
                      key=lambda slot: (slot.idle_since, slot.worker_id))
        out: list[Instruction] = []
        for slot in idle[:max(0, surplus)]:
            del self.workers[slot.worker_id]
            out.append(ReleaseWorker(slot.worker_id, f"idle {now - slot.idle_since:.0f} s "
                                     f"while the work wants {self.wanted} worker(s)"))
        return out

    def _timeouts(self, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        for call in list(self.calls.values()):
            job = self.jobs.get(call.job_id)
            if (call.call_id not in self.calls or job is None or job.timeout is None
                    or call.started is None):
                continue
            limit = job.timeout * call.members
            if now - call.started <= limit:
                continue
            self._end_call(call)
            if not call.dropped:
                out += self._fail(call, job, TaskTimeoutError(
                    f"task ran longer than its {limit:g} s timeout and was stopped; raise "
                    "--timeout or render fewer samples"), now)
            out += self._drop_worker(call.worker_id, RenderError(
                "the worker was stopped because another task timed out", retryable=True),
                f"a call ran over its {limit:g} s timeout", now)
            self._forget_if_idle(job)
        return out

    def _fill(self, now: float) -> list[Instruction]:
        """Give every free trusted worker calls until it holds :attr:`depth` of them."""
        out: list[Instruction] = []
        trusted = [slot for slot in self.workers.values() if slot.trusted]
        # each job's fitting workers, found once per pass, not once per free worker (a farm
        # of ten thousand workers would otherwise spend its ticks here)
        fitting: dict[str, tuple[list[WorkerSlot], frozenset[str]]] = {}
        lagging: list[tuple[float, Call, JobSlot]] | None = None
        # every free worker gets a first call before any gets its second (a job of fewer
        # tasks than twice the workers would otherwise leave half of them idle)
        for level in range(1, self.depth + 1):
            for slot in trusted:
                # a worker dropped earlier in this pass (a job's code failed on it) gets
                # nothing more
                while len(slot.queue) < level and self.workers.get(slot.worker_id) is slot:
                    starts = self._start_one(slot, trusted, now, fitting)
                    if not starts and not slot.queue:  # idle, nothing waits: help the slowest
                        if lagging is None:
                            lagging = self._lagging(now)
                        starts = self._start_backup(slot, now, lagging)
                    if not starts:
                        break
                    out += starts
        return out

    def _ordered_jobs(self, slot: WorkerSlot) -> list[JobSlot]:
        """Active jobs by priority; among the top priority, those whose file the worker has
        loaded first; then in the order they came."""
        active = [job for job in self.jobs.values() if job.active]
        if not active:
            return []
        top = max(job.priority for job in active)
        return sorted(active, key=lambda job: (-job.priority,
                                               job.priority == top and job.key != slot.loaded))

    def _ask(self, job: JobSlot, now: float, question: Callable[..., Any], *args: Any,
             out: list[Instruction]) -> Any:
        """Ask a job's :class:`Work`; when it raises, the job ends (``out`` gets what that
        takes) and the answer is None."""
        try:
            return question(*args)
        except Exception as exc:  # the job's code failed: it ends, the dispatcher goes on
            out += self._fault(job, exc, now)
            return None

    def _start_one(self, slot: WorkerSlot, trusted: Sequence[WorkerSlot], now: float,
                   fitting: dict[str, tuple[list[WorkerSlot], frozenset[str]]]
                   ) -> list[Instruction]:
        out: list[Instruction] = []
        started = now if not slot.queue else None
        for job in self._ordered_jobs(slot):
            if self.workers.get(slot.worker_id) is not slot:  # dropped as a job faulted
                return out
            if not job.active:  # it faulted while asked for an earlier worker
                continue
            if not job.accepts_worker(slot):  # its --require
                continue
            if job.job_id not in fitting:
                ready = [s for s in trusted if job.accepts_worker(s)]
                fitting[job.job_id] = (ready, frozenset(s.worker_id for s in ready))
            ready, live = fitting[job.job_id]
            leave = self._ask(job, now, self._leave_to_faster, slot, job, ready,
                              len(slot.queue), out=out)
            if leave or job.fault is not None:
                continue
            tasks = []
            for _ in range(self._batch_size(job, len(ready))):
                task = self._ask(job, now, job.work.next_task, slot.worker_id, live, job.paused,
                                 out=out)
                if task is None:
                    break
                tasks.append(task)
            if not tasks:
                continue
            call = Call(next(self._call_ids), job.job_id, slot.worker_id, tuple(tasks),
                        started)
            self.calls[call.call_id] = call
            slot.queue.append(call.call_id)
            slot.loaded = job.key
            out.append(StartCall(call.call_id, job.job_id, job.work, slot.worker_id,
                                 call.tasks))
            return out
        return out

    def _batch_size(self, job: JobSlot, workers: int) -> int:
        """Tasks one call of the job carries: one, unless the job's tasks are so short that
        Ray's per-call cost matters (then enough for about :data:`CALL_SECONDS`)."""
        if job.batch <= 1 or len(job.durations) < STRAGGLER_SAMPLES:
            return 1
        typical = job.typical()
        if typical >= CALL_SECONDS:
            return 1
        return max(1, min(job.batch, math.ceil(CALL_SECONDS / max(typical, 1e-6))))

    def _leave_to_faster(self, slot: WorkerSlot, job: JobSlot, ready: Sequence[WorkerSlot],
                         queued: int) -> bool:
        """Whether a worker measured much slower than its peers should leave a job's last
        tasks to the others: they would finish them all before it finishes one (the tail
        of a job then does not wait for its slowest worker)."""
        if not job.backups or len(job.durations) < STRAGGLER_SAMPLES:
            return False
        pace = job.pace_of(slot.worker_id)
        if pace is None:
            return False
        typical = job.typical()
        if pace < STRAGGLER_FACTOR * typical:
            return False

        def fast(other: WorkerSlot) -> bool:
            theirs = job.pace_of(other.worker_id)
            return theirs is None or theirs < STRAGGLER_FACTOR * typical

        faster = [s for s in ready if s is not slot and fast(s)]
        if not faster:
            return False
        if job.work.exclusive(slot.worker_id, frozenset(s.worker_id for s in faster)):
            return False  # it waits for this worker: a check or a retry the others may not run
        pending = job.work.pending() or 0
        # it would end a new task after the ones it holds; the others drain what is pending
        # in rounds of one task each
        return pace * (queued + 1) > math.ceil(pending / len(faster)) * typical + typical

    def _lagging(self, now: float) -> list[tuple[float, Call, JobSlot]]:
        """Running calls a copy started now would end before, most time saved first: those
        that lag behind their job's median, or run on a worker measured that much slower.
        Found once per pass over the free workers (a scan per idle worker would cost a
        farm of ten thousand workers its ticks at a job's end)."""
        found: list[tuple[float, Call, JobSlot]] = []
        for call in self.calls.values():
            job = self.jobs.get(call.job_id)
            if (job is None or call.started is None or call.twin is not None or call.dropped
                    or len(call.tasks) != 1 or not job.backups or not job.active
                    or job.paused or len(job.durations) < STRAGGLER_SAMPLES):
                continue
            members = call.members
            per_member = job.typical()
            typical = per_member * members
            elapsed = now - call.started
            # a call lags behind its job's median, or runs on a worker measured to be that
            # much slower, whose copy would end later than a fresh one started now
            pace = job.pace_of(call.worker_id) or per_member
            lagging = elapsed >= STRAGGLER_FACTOR * typical and elapsed >= STRAGGLER_MIN_SECONDS
            slow_worker = pace >= STRAGGLER_FACTOR * per_member
            # when it ends: at its worker's pace, or (lagging beyond any pace) as late again
            expected_end = call.started + max(pace * members, 2 * elapsed if lagging else 0.0)
            saved = expected_end - (now + typical)
            if (lagging or slow_worker) and saved > 0:
                found.append((saved, call, job))
        found.sort(key=lambda entry: -entry[0])
        return found

    def _start_backup(self, slot: WorkerSlot, now: float,
                      lagging: list[tuple[float, Call, JobSlot]]) -> list[Instruction]:
        """Start a backup copy of the running call that lags most behind its job's median
        (of ``lagging``, see :meth:`_lagging`), on an idle worker; the first copy to finish
        wins."""
        worst = next(((saved, call, job) for saved, call, job in lagging
                      if call.worker_id != slot.worker_id and call.twin is None
                      and not call.dropped and job.active and job.accepts_worker(slot)),
                     None)
        if worst is None:
            return []
        _saved, original, job = worst
        out: list[Instruction] = []
        if not self._ask(job, now, job.work.may_backup, original.tasks[0], out=out):
            return out
        copy = Call(next(self._call_ids), job.job_id, slot.worker_id, original.tasks, now,
                    twin=original.call_id)
        original.twin = copy.call_id
        self.calls[copy.call_id] = copy
        slot.queue.append(copy.call_id)
        slot.loaded = job.key
        out.append(StartCall(copy.call_id, job.job_id, job.work, slot.worker_id, copy.tasks,
                             backup_of=original.call_id))
        return out
