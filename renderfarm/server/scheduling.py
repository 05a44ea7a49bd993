"""Which queued job starts on the farm, and how: the highest priority first (then first
come), up to ``max_running`` at once, none that waits for another (``--after``); a job that
ran before resumes with the pieces and frames it finished.

The decisions are pure functions (:func:`waiting_reason`, :func:`pick`, :func:`resumed`:
no I/O, no clock); :class:`Scheduler` reads the database, starts jobs on the farm and
requeues those a failed farm was running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from renderfarm.errors import RenderFarmError, ServiceError
from renderfarm.events import Event
from renderfarm.handle import Resume, ResumePiece
from renderfarm.job import JobSpec
from renderfarm.server.config import ServiceConfig
from renderfarm.server.health import FarmHealth
from renderfarm.server.keyring import LOCAL
from renderfarm.server.live import Live, LiveJobs
from renderfarm.server.paths import FarmPaths
from renderfarm.server.publisher import Publisher
from renderfarm.server.recorder import Recorder
from renderfarm.server.reports import Reports
from renderfarm.server.store import JobRow, Store

logger = logging.getLogger(__name__)

#: seconds a lost run may take to end (its watcher records what it finished) before its job
#: is queued again
LOST_RUN_WAIT = 30.0


def waiting_reason(after: Iterable[str], after_frames: bool,
                   states: Mapping[str, str | None]) -> str | None:
    """Why a job waits for the jobs it comes after, or None when it may go on: it waits
    until each is done (``after_frames``: until each has started); one that failed or was
    cancelled holds it, which the reason says.

    Args:
        after: the jobs it comes after.
        after_frames: it waits frame by frame.
        states: each of those jobs' state (None: it no longer exists).
    """
    reasons = []
    for other in after:
        state = states.get(other)
        if state is None:
            reasons.append(f"held: job {other} it comes after no longer exists")
        elif state in ("failed", "cancelled"):
            reasons.append(f"held: job {other} it comes after {state} (requeue it, or "
                           "cancel this one)")
        elif state != "done" and not (after_frames and state in ("running", "paused")):
            reasons.append(f"waiting for job {other} ({state})")
    return "; ".join(reasons) or None


def pick(queued: Sequence[JobRow], waiting: Mapping[str, str | None], running: int,
         max_running: int) -> list[JobRow]:
    """The queued jobs to start now (``queued`` is in the order they start: highest
    priority, then first come): those that wait for nothing, up to ``max_running`` jobs
    running in all."""
    ready = [job for job in queued if waiting.get(job.id) is None]
    return ready[:max(max_running - running, 0)]


def resumed(spec: JobSpec, plan: Mapping[str, Any], pieces: Sequence[Mapping[str, Any]],
            frames: dict[int, str]) -> tuple[JobSpec, Resume]:
    """A job that ran before (its ``plan``): planned the same way again, keeping the
    ``pieces`` and ``frames`` it finished; only the frames its plan names as ``only``
    render again when it names some."""
    spec = replace(spec, tiles=tuple(plan["tiles"]), chunks=plan["chunks"])
    only = plan.get("only")
    return spec, Resume(
        pieces=tuple(ResumePiece(p["frame"], p["chunk"], tuple(p["tiles"]), p["tile"],
                                 p["path"], p.get("sha256") or "") for p in pieces),
        frames=frames,
        skip=frozenset(set(plan.get("frames") or []) - set(only)) if only else frozenset())


class Scheduler:
    """Starts queued jobs on the farm (the service's main thread), and requeues those a
    failed farm was running (the watchdog's).

    Args:
        config: how the service runs (``max_running``).
        store: the service's database.
        paths: the jobs' folders.
        live: the running jobs.
        health: the farm (held while jobs start on it).
        publisher: where jobs' events go.
        recorder: records each started job's events.
        reports: tells a job's webhooks it ended.
    """

    def __init__(self, config: ServiceConfig, store: Store, paths: FarmPaths, live: LiveJobs,
                 health: FarmHealth, publisher: Publisher, recorder: Recorder,
                 reports: Reports) -> None:
        self._config = config
        self._store = store
        self._paths = paths
        self._live = live
        self._health = health
        self._publisher = publisher
        self._recorder = recorder
        self._reports = reports

    def requeue_interrupted(self) -> None:
        """Queue again the jobs that were running when the service stopped: they resume."""
        for job in self._store.jobs(["running"]):
            logger.info("job %s was running when the service stopped; it resumes", job.id)
            self._store.act(job.id, "requeue")

    def schedule(self) -> None:
        """Start the queued jobs that may start now (not while the farm is replaced)."""
        running = len(self._live)
        if running >= self._config.max_running:
            return
        if not self._health.lock.acquire(blocking=False):
            return  # the farm is being replaced: jobs start once it is back
        try:
            if self._health.current is None and self._health.state != "ok":
                return
            queued = self._store.jobs(["queued"])
            waiting = {job.id: self.waiting(job) for job in queued}
            for job in pick(queued, waiting, running, self._config.max_running):
                self._start(job)
        finally:
            self._health.lock.release()

    def waiting(self, row: JobRow) -> str | None:
        """Why a job waits for others (``--after``), or None when it may go on."""
        after = list(row.spec.get("after") or [])
        return waiting_reason(after, bool(row.spec.get("after_frames")),
                              {other: self._state(other) for other in after})

    def job_waiting(self, row: JobRow) -> str | None:
        """Why a queued or running job waits for others (``--after``), or None."""
        return self.waiting(row) if row.state in ("queued", "running") else None

    def _state(self, job_id: str) -> str | None:
        try:
            return self._store.job(job_id).state
        except ServiceError:
            return None

    def _frame_gate(self, row: JobRow) -> Callable[[int], bool] | None:
        """For a job that waits frame by frame: whether frame N of every job it comes after
        is written (a job that is done has written all it will)."""
        after = list(row.spec.get("after") or [])
        if not after or not row.spec.get("after_frames"):
            return None
        cache: dict[str, tuple[float, set[int] | None]] = {}

        def ready(frame: int) -> bool:
            now = time.monotonic()
            for other in after:
                when, frames = cache.get(other, (0.0, set()))
                if now - when > 0.5:  # read again at most twice a second
                    done = self._store.job(other).state == "done"
                    frames = None if done else set(self._store.frames(other))
                    cache[other] = (now, frames)
                if frames is not None and frame not in frames:
                    return False
            return True

        return ready

    def _start(self, job: JobRow) -> None:
        spec = JobSpec.from_dict(job.spec)
        resume = None
        if job.plan:  # it ran before: plan it the same way, keep what it finished
            spec, resume = resumed(spec, job.plan, self._store.pieces(job.id),
                                   self._store.frames(job.id))
        self._store.act(job.id, "start")
        workdir = self._paths.job_dir(job.id) / "pieces"
        try:
            handle = self._health.farm.submit(
                spec, job.priority, job_id=job.id, workdir=workdir, resume=resume,
                on_piece=self._publisher.keep_for_preview(job.id),
                on_result=self._recorder.keep_log(job.id), frame_gate=self._frame_gate(job),
                outputs_folder=self._paths.output_dir(job.id))
        except RenderFarmError as exc:
            row = self._store.act(job.id, "fail", error=exc.one_line())
            self._publisher.event(Event("job_failed", job.id, message=exc.one_line()), row)
            self._reports.notify(job.id)
            return
        live = Live(handle, owner=job.client or LOCAL)
        self._live.add(job.id, live)
        # paused or cancelled while it was being started (the request found no run to tell)
        state = self._store.job(job.id).state
        if state == "paused":
            handle.pause()
        elif state == "cancelled":
            handle.cancel()
        elif state == "queued":  # paused and resumed meanwhile: this run goes on
            self._store.act(job.id, "start")
        self._recorder.follow(job.id, live)

    def jobs_lost(self, lives: list[tuple[str, Live]], problem: str) -> None:
        """The farm failed under these running jobs (already stale): stop them and queue
        them again (their finished pieces stay recorded; they resume on the new farm)."""
        note = f"the farm is recovering: {problem}; the job resumes with its finished pieces"
        for _job_id, live in lives:
            live.handle.cancel()
        deadline = time.monotonic() + LOST_RUN_WAIT  # one wait for them all
        for job_id, live in lives:  # what each run finished is recorded before it is queued
            if not live.watched.wait(max(0.0, deadline - time.monotonic())):
                live.abandoned = True  # nothing more it says is recorded
                logger.warning("job %s: its lost run did not end within %g s; it is queued "
                               "again with the pieces recorded so far", job_id, LOST_RUN_WAIT)
            row = self._store.job(job_id)
            if row.state == "running":
                row = self._store.act(job_id, "requeue")
            self._publisher.event(Event("info", job_id, message=note), row)
        for job_id, live in lives:
            self._live.forget(job_id, live)
