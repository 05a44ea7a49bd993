"""The dispatcher thread of a worker pool: it carries out what the pure
:class:`~renderfarm.dispatch_state.DispatchState` decides.

One thread per pool (:class:`PoolRunner`) turns what happens into events (a job added or
cancelled, posted to its inbox by any thread; workers started or gone, seen on the pool; Ray
calls that finished or raised) and carries out the instructions the state returns: it starts
calls on workers through the job's :class:`JobPort`, cancels calls, replaces workers, hands
results to their jobs. Every decision is the state's; an exception from a job's code ends
that job only (a :class:`~renderfarm.dispatch_state.JobFaulted` event), never the thread.
Nothing a job does with a result (storing a piece, merging) runs here: a job's ``done``
hands the piece to the job's own thread.

Ray is imported inside functions so that ``import renderfarm`` stays light.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from renderfarm.dispatch_state import (
    DEPTH,
    CallDone,
    CallFailed,
    CallNotStarted,
    CancelCall,
    ClusterLost,
    Deliver,
    DispatchState,
    EndJob,
    Event,
    FailTask,
    Instruction,
    JobAdded,
    JobCancelled,
    JobFaulted,
    JobHeld,
    JobPaused,
    JobPriority,
    JobRemoved,
    JobResumed,
    ReleaseWorker,
    ReplaceWorker,
    Requeue,
    StartCall,
    Tick,
    Work,
    WorkerDisabled,
    WorkerJoined,
    WorkerLost,
    WorkerStarted,
    WorkerSuspect,
)
from renderfarm.errors import (
    CancelledError,
    ClusterLostError,
    InputError,
    RenderError,
    RenderFarmError,
    ResourceError,
    WorkerDiedError,
)
from renderfarm.executor import WorkerHandle, WorkerPool
from renderfarm.tags import Requirement, WorkerTags

logger = logging.getLogger(__name__)


class JobPort(Work, Protocol):
    """A job as its dispatcher serves it: the :class:`~renderfarm.dispatch_state.Work`
    questions, and what to do with its calls (called on the dispatcher thread; a job
    keeps it short)."""

    def call(self, handle: WorkerHandle, tasks: tuple[Any, ...]) -> Any:
        """Start ``tasks`` on a worker in one call; the Ray reference of its value (for
        several tasks, a list of their values)."""

    def done(self, handle: WorkerHandle, task: Any, value: Any) -> None:
        """A task's value."""

    def failed(self, handle: WorkerHandle, task: Any, error: RenderFarmError,
               reply: dict[str, Any]) -> None:
        """An attempt of a task failed; ``reply`` is what is known of it (worker, start,
        end)."""

    def requeue(self, task: Any) -> None:
        """Put back a task that never started (its worker went away); no attempt counts."""

    def stop(self, error: BaseException) -> None:
        """The job ends with ``error`` (its own code failed, or the cluster did)."""


class JobControls:
    """What a job's caller changes while it runs (cancel, pause, priority), posted to its
    dispatcher's inbox (see :meth:`renderfarm.handle.JobHandle.follow`)."""

    def __init__(self, runner: PoolRunner, job_id: str) -> None:
        self.runner = runner
        self.job_id = job_id

    def cancel(self) -> None:
        """Stop the job's calls; start no more."""
        self.runner.post(JobCancelled(self.job_id, time.monotonic()))

    def pause(self) -> None:
        """Start no more renders (checks of rendered pieces still start)."""
        self.runner.post(JobPaused(self.job_id))

    def resume(self) -> None:
        """Start renders again."""
        self.runner.post(JobResumed(self.job_id))

    def set_priority(self, priority: int) -> None:
        """Tasks not started yet follow the new priority."""
        self.runner.post(JobPriority(self.job_id, priority))


def _lost_reply(handle: WorkerHandle | None, worker_id: str, task: Any,
                started: float | None, ended: float, offset: float) -> dict[str, Any]:
    """What is known of an attempt whose worker gave no reply (it died, timed out or was
    stopped): who ran it and for how long (wall clock), so the job's report counts that
    time."""
    finished = ended + offset
    begun = started + offset if started is not None else finished
    return {"task_index": getattr(task, "index", -1), "frame": getattr(task, "frame", 0),
            "tile": getattr(getattr(task, "tile", None), "index", -1), "ok": False,
            "worker": worker_id, "node": handle.node if handle is not None else "",
            "started": begun, "finished": finished, "task_seconds": finished - begun,
            "covers": list(getattr(task, "covers", ()))}


def _task_name(job_id: str, task: Any) -> str:
    """``JOB f0001-t00-c00``: a task as the worker list shows it."""
    return f"{job_id} {getattr(task, 'task_id', task)}".strip()


class PoolRunner:
    """A worker pool with its dispatcher thread and the jobs it serves.

    Args:
        pool: the workers.
        depth: calls queued on a worker at once.
        poll: seconds the thread waits for a result before looking at its inbox and the
            clock again.
    """

    def __init__(self, pool: WorkerPool, depth: int = DEPTH, poll: float = 0.05,
                 release_after: float | None = None) -> None:
        self.pool = pool
        self.poll = poll
        self.state = DispatchState(depth, release_after)
        self.closing = False
        self.wake = threading.Event()
        #: why the thread stopped (the cluster failed, or a bug), or None while it runs
        self.error: BaseException | None = None
        self._inbox: queue.SimpleQueue[tuple[Event, threading.Event | None]] = \
            queue.SimpleQueue()
        self._refs: dict[int, Any] = {}
        self._call_of: dict[Any, int] = {}
        self._values: dict[int, Any] = {}
        #: a call's other return values (its piece, kept on its worker's node)
        self._more: dict[int, tuple[Any, ...]] = {}
        self._handles: dict[str, WorkerHandle] = {}
        self._ports: dict[str, JobPort] = {}
        self._offset = time.time() - time.monotonic()
        self.thread = threading.Thread(target=self._run, name="renderfarm-dispatch",
                                       daemon=True)
        self.thread.start()

    # -- any thread ------------------------------------------------------------------------
    def post(self, *events: Event, wait: float = 0.0) -> None:
        """Hand ``events`` to the dispatcher; with ``wait``, until it has taken them (at
        most that many seconds)."""
        waits = wait and threading.current_thread() is not self.thread
        done = threading.Event() if waits else None
        for event in events:
            self._inbox.put((event, done if event is events[-1] else None))
        self.wake.set()
        if done is not None and self.thread.is_alive():
            done.wait(wait)

    def add(self, job_id: str, key: str, port: JobPort, priority: int = 0,
            timeout: float | None = None, require: tuple[Requirement, ...] = (),
            backups: bool = True, batch: int = 1, paused: bool = False,
            cancelled: bool = False, max_workers: int | None = None) -> JobControls:
        """Serve a job's tasks (see :class:`~renderfarm.dispatch_state.JobAdded`); what its
        caller changes goes through the returned controls."""
        self.post(JobAdded(job_id, key, port, priority, timeout, require, backups, batch,
                           paused, cancelled, max_workers))
        return JobControls(self, job_id)

    def remove(self, job_id: str, error: BaseException | None = None) -> None:
        """The job waits for nothing more (with ``error``: it failed, stop its calls)."""
        if error is not None:
            self.post(JobFaulted(job_id, error, time.monotonic()))
        self.post(JobRemoved(job_id))

    def suspect(self, worker_id: str, reason: str) -> None:
        """Send ``worker_id`` no more tasks: its pixels disagreed with other workers'. It
        stays alive, idle, for an operator to look at; only this worker (others on its
        machine render on)."""
        self.post(WorkerSuspect(worker_id, reason), wait=5.0)

    def set_enabled(self, worker_id: str, enabled: bool, reason: str = "") -> WorkerHandle:
        """Let an operator take a worker out (the call it runs finishes) or put it back
        (which also clears a suspicion of it).

        Raises:
            InputError: there is no such worker.
        """
        handle = self.pool.workers.get(worker_id)
        if handle is None:
            raise InputError(f"no worker {worker_id!r} on this farm (the workers: "
                             f"{', '.join(sorted(self.pool.workers)) or 'none'})")
        self.post(WorkerDisabled(worker_id, None if enabled else
                                 reason or "disabled by an operator"), wait=5.0)
        return handle

    def wait_for_workers(self, job_id: str, seconds: float, cancelled: Callable[[], bool],
                         say: Callable[[str, float], None], every: float = 10.0) -> None:
        """For a pool that asks Ray's autoscaler for its workers: hold a worker for
        ``job_id`` until it ends (its own calls: opening its file, finishing, encoding;
        :meth:`unhold`), and wait until the pool has a trusted worker, telling ``say`` (a
        line, seconds waited) every ``every`` seconds.

        Raises:
            ResourceError: none started within ``seconds``; the message names what the
                farm asked for.
            CancelledError: ``cancelled()`` became true meanwhile.
        """
        pool = self.pool
        if not pool.autoscale:
            return
        self.post(JobHeld(job_id, True))
        if pool.trusted:
            return
        started = time.monotonic()
        said = -every
        while not pool.trusted:
            waited = time.monotonic() - started
            if cancelled():
                raise CancelledError("the job was cancelled")
            if waited >= seconds:
                raise ResourceError(
                    f"no worker started within {seconds:g} s: the farm asked Ray's "
                    f"autoscaler for {pool.describe_ask()} and none came (the cluster has "
                    "no node type that holds one, or could not start one: see `ray "
                    "status`); give the cluster such a node type, or wait longer "
                    "(--wait-for-workers)")
            if waited - said >= every:
                said = waited
                say(f"waiting for workers for {waited:.0f} s: asked Ray's autoscaler for "
                    f"{pool.describe_ask()}", waited)
            time.sleep(0.2)
        say(f"a worker started after {time.monotonic() - started:.0f} s", 0.0)

    def unhold(self, job_id: str) -> None:
        """The job has ended: it needs no worker of its own any more."""
        if self.pool.autoscale:
            self.post(JobHeld(job_id, False))

    def close(self, patience: float = 5.0) -> None:
        """Stop the thread once nothing anybody waits for runs (at most ``patience`` s)."""
        self.closing = True
        self.wake.set()
        self.thread.join(patience)

    def occupied(self) -> set[str]:
        """The workers that still run or hold a call (one nobody waits for any more, say:
        a backup's loser that Ray cannot stop), after :meth:`close`; all of them while the
        thread still runs."""
        if self.thread.is_alive():
            return {handle.worker_id for handle in self.pool.handles()}
        return {worker_id for worker_id, slot in self.state.workers.items() if slot.queue}

    # -- the dispatcher thread -----------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except RenderFarmError as exc:  # the cluster failed: its jobs end with the reason
            logger.error("dispatcher stopped: %s", exc.one_line())
            self.error = exc
        except BaseException as exc:  # keep the farm alive; jobs see it as a failure
            logger.exception("dispatcher stopped")
            self.error = exc
        finally:
            self._end_jobs(self.error)

    def _end_jobs(self, error: BaseException | None) -> None:
        if error is None:
            return
        for port in list(self._ports.values()):
            try:
                port.stop(error)
            except Exception:
                logger.exception("a job did not take the dispatcher's end")

    def _loop(self) -> None:
        import ray

        while True:
            if self.pool.lost is not None:  # Ray itself failed: every job of it stops
                self._apply([ClusterLost(self.pool.lost)])
                raise self.pool.lost
            events, acks = self._drain()
            try:
                events += self._sync_workers()
                events.append(Tick(time.monotonic()))
                self._apply(events)
                self.pool.want(self.state.wanted, self.state.wanted_kinds)
            finally:
                for ack in acks:
                    ack.set()
            if not self.state.waiting():
                if self.closing:
                    return
                if not self.state.calls:
                    self.wake.wait(self.poll)
                    self.wake.clear()
                    continue
            refs = list(self._call_of)
            if not refs:  # calls whose start failed: nothing to wait on
                self.wake.wait(self.poll)
                self.wake.clear()
                continue
            ready, rest = ray.wait(refs, num_returns=1, timeout=self.poll)
            if ready:
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0) if rest else ([], [])
                self._apply([self._outcome(ref) for ref in ready + more])

    def _drain(self) -> tuple[list[Event], list[threading.Event]]:
        events: list[Event] = []
        acks: list[threading.Event] = []
        while True:
            try:
                event, ack = self._inbox.get_nowait()
            except queue.Empty:
                return events, acks
            events.append(event)
            if ack is not None:
                acks.append(ack)
            if isinstance(event, JobAdded):
                self._ports[event.job_id] = event.work  # type: ignore[assignment]
            elif isinstance(event, WorkerSuspect):  # what the worker list shows
                self.pool.suspect(event.worker_id, event.reason)
            elif isinstance(event, WorkerDisabled):
                try:
                    self.pool.set_enabled(event.worker_id, event.reason is None,
                                          event.reason or "")
                except InputError:  # gone meanwhile (replaced by another thread)
                    logger.debug("worker %s is gone; nothing to enable or disable",
                                 event.worker_id)

    def _sync_workers(self) -> list[Event]:
        """What changed in the pool since the last round: workers created, started, gone."""
        self.pool.poll_started()
        self.pool.follow_cluster()
        handles = {h.worker_id: h for h in self.pool.handles()}
        known = self.state.workers
        events: list[Event] = []
        for worker_id, handle in handles.items():
            self._handles[worker_id] = handle
            slot = known.get(worker_id)
            if slot is None:
                events.append(WorkerJoined(worker_id))
                if handle.disabled or handle.suspect:  # the pool knows it already
                    events.append(WorkerDisabled(worker_id, handle.disabled)
                                  if handle.disabled else WorkerSuspect(worker_id,
                                                                        handle.suspect or ""))
            if handle.ready and (slot is None or not slot.started):
                events.append(WorkerStarted(worker_id, handle.tags or WorkerTags()))
        for worker_id in [w for w in known if w not in handles]:
            events.append(WorkerLost(worker_id, WorkerDiedError(
                f"worker {worker_id} went away (its node left the cluster, or it was "
                "replaced); the task is retried on another worker"), time.monotonic()))
        return events

    def _outcome(self, ref: Any) -> Event:
        """A finished Ray call as an event (its value kept for :class:`Deliver`)."""
        import ray

        call_id = self._call_of.pop(ref)
        self._refs.pop(call_id, None)
        more = self._more.pop(call_id, ())
        now = time.monotonic()
        call = self.state.calls.get(call_id)
        worker = call.worker_id if call is not None else "?"
        try:
            value = ray.get(ref)
            if more:  # (reply, piece reference)
                value = (value, *more)
            if call is not None and not call.dropped:  # for its Deliver
                self._values[call_id] = value
        except ray.exceptions.RayActorError as exc:
            if call is not None and not call.dropped:
                logger.warning("worker %s died: %s", worker, exc)
            return CallFailed(call_id, now, WorkerDiedError(
                f"worker {worker} died while rendering (Blender crashed or the node went "
                "away); the task is retried on another worker"))
        except ray.exceptions.LocalRayletDiedError as exc:  # not the task's fault nor the
            logger.error("the Ray cluster failed under the farm: %s", exc)  # worker's
            self.pool.lost = ClusterLostError(
                "the Ray cluster under the farm failed (this machine's raylet died); the job "
                "stopped with its finished pieces kept: run it again, or let the farm "
                "service resume it once its Ray is back")
            return ClusterLost(self.pool.lost)
        except Exception as exc:  # a bug in the worker code, or a cancelled losing copy
            if call is not None and call.dropped:
                logger.debug("a call nobody waits for ended: %s", exc)
            return CallFailed(call_id, now, RenderError(f"worker call failed: {exc}"),
                              worker_died=False)
        return CallDone(call_id, now)

    def _apply(self, events: list[Event]) -> None:
        """Hand ``events`` to the state and carry out its instructions; a job's exception
        ends that job (its :class:`JobFaulted` is handled at once)."""
        pending = list(events)
        while pending:
            instructions = self.state.handle(*pending)
            pending = []
            for instruction in instructions:
                fault = self._carry_out(instruction)
                if fault is not None:
                    pending.append(fault)
        self._show()

    def _carry_out(self, instruction: Instruction) -> Event | None:
        job_id = getattr(instruction, "job_id", None)
        try:
            self._do(instruction)
        except Exception as exc:
            if job_id is None:  # replacing or cancelling failed (Ray going away): go on
                logger.exception("%s failed", type(instruction).__name__)
                return None
            logger.warning("job %s: %s failed: %s", job_id, type(instruction).__name__, exc)
            return JobFaulted(job_id, exc, time.monotonic())
        return None

    def _do(self, instruction: Instruction) -> None:  # noqa: C901 - one branch per kind
        if isinstance(instruction, StartCall):
            try:
                handle = self._handles[instruction.worker_id]
                ref = self._port(instruction).call(handle, instruction.tasks)
                if isinstance(ref, (list, tuple)):  # the reply, then the piece (kept on
                    if len(ref) > 1:  # its node: delivered as a reference)
                        self._more[instruction.call_id] = tuple(ref[1:])
                    ref = ref[0] if ref else None
                if ref is None:
                    raise RuntimeError("the job started no call (its call gave no result)")
                self._call_of[ref] = instruction.call_id
            except Exception:
                self.state.handle(CallNotStarted(instruction.call_id, time.monotonic()))
                raise
            self._refs[instruction.call_id] = ref
            if instruction.backup_of is not None:
                logger.info("task %s lags: backup copy on %s",
                            getattr(instruction.tasks[0], "task_id", "?"),
                            instruction.worker_id)
        elif isinstance(instruction, Deliver):
            value = self._values.pop(instruction.call_id)
            handle = self._handles.get(instruction.worker_id)
            members = sum(len(getattr(t, "members", (None,))) for t in instruction.tasks)
            if handle is not None:
                handle.tasks_done += members
                handle.calls += 1
            values = value if len(instruction.tasks) > 1 else [value]
            port = self._port(instruction)
            for task, one in zip(instruction.tasks, values, strict=True):
                port.done(handle or WorkerHandle(instruction.worker_id, None), task, one)
        elif isinstance(instruction, FailTask):
            self._forget_ref(instruction.call_id)
            handle = self._handles.get(instruction.worker_id)
            reply = _lost_reply(handle, instruction.worker_id, instruction.task,
                                instruction.started, instruction.ended, self._offset)
            self._port(instruction).failed(handle or WorkerHandle(instruction.worker_id, None),
                                           instruction.task, instruction.error, reply)
        elif isinstance(instruction, Requeue):
            self._forget_ref(instruction.call_id)
            self._port(instruction).requeue(instruction.task)
        elif isinstance(instruction, CancelCall):
            import ray

            ref = self._refs.get(instruction.call_id)
            if ref is not None:
                try:
                    ray.cancel(ref)
                except Exception:
                    logger.debug("call %d could not be cancelled (it runs)",
                                 instruction.call_id)
        elif isinstance(instruction, ReplaceWorker):
            logger.info("replacing worker %s: %s", instruction.worker_id, instruction.reason)
            self.pool.replace(instruction.worker_id)
        elif isinstance(instruction, ReleaseWorker):
            # a worker running a job's own call stays: the next round sees it again
            if self.pool.release(instruction.worker_id, instruction.reason):
                self._handles.pop(instruction.worker_id, None)
        elif isinstance(instruction, EndJob):
            self._port(instruction).stop(instruction.error)

    @staticmethod
    def _port(instruction: Any) -> JobPort:
        return instruction.work  # type: ignore[no-any-return]

    def _forget_ref(self, call_id: int) -> None:
        self._more.pop(call_id, None)
        ref = self._refs.pop(call_id, None)
        if ref is not None:
            self._call_of.pop(ref, None)
        self._values.pop(call_id, None)

    def _show(self) -> None:
        """What the worker list shows of each worker: busy, current task, loaded file."""
        state = self.state
        for worker_id, slot in state.workers.items():
            handle = self._handles.get(worker_id)
            if handle is None:
                continue
            handle.busy = len(slot.queue) >= state.depth
            handle.loaded = slot.loaded
            current = state.current(worker_id)
            handle.current = (_task_name(current.job_id, current.tasks[0])
                              if current is not None and current.started is not None
                              else None)
        for call_id in [c for c in self._refs if c not in state.calls]:
            self._forget_ref(call_id)
        for call_id in [c for c in self._values if c not in state.calls]:
            del self._values[call_id]  # a losing copy that ended with its winner
        for job_id in [j for j in self._ports if j not in state.jobs]:
            del self._ports[job_id]
        for worker_id in [w for w in self._handles if w not in state.workers
                          and w not in self.pool.workers]:
            del self._handles[worker_id]
