"""A job as its caller holds it (:class:`JobHandle`: events, result, cancel, pause,
priority) and what an interrupted job had finished (:class:`Resume`).

This is the seam between a farm and its jobs: the farm makes a handle and gives it to the
job's run (:class:`~renderfarm.jobrun.JobRun`), which reports through its public job-side
methods (:meth:`JobHandle.attach`, :meth:`JobHandle.emit`, :meth:`JobHandle.end`); the caller
uses the rest. Neither side reaches into the other's private members.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from renderfarm.errors import RenderFarmError
from renderfarm.events import Event
from renderfarm.job import JobResult, JobSpec


class RunView(Protocol):
    """What a handle asks of the run of its job (:class:`~renderfarm.jobrun.JobRun`)."""

    late_results: int
    duplicates: int

    @property
    def merged_twice(self) -> int:
        """Frames a second merge was asked for."""

    @property
    def prices(self) -> dict[str, float]:
        """The farm's prices per device-hour."""

    def eta(self) -> float | None:
        """Seconds the job still needs, or None."""

    def snapshot(self) -> dict[str, Any]:
        """What the job has recorded so far."""


class Controls(Protocol):
    """Where a running job's cancel, pause and priority go (its dispatcher's inbox:
    :class:`~renderfarm.dispatcher.JobControls`)."""

    def cancel(self) -> None:
        """Stop the job's calls."""

    def pause(self) -> None:
        """Start no more renders."""

    def resume(self) -> None:
        """Start renders again."""

    def set_priority(self, priority: int) -> None:
        """The job's new priority."""


@dataclass(frozen=True)
class ResumePiece:
    """A piece rendered before the job was interrupted (e.g. the farm service restarted).

    Attributes:
        frame: its frame.
        chunk: its sample range.
        tiles: the grid tiles it covers (several when neighbouring tiles were grouped).
        tile: the :class:`~renderfarm.job.Tile` it holds, as a dict.
        path: its file.
        sha256: what its worker said of it, when its node stored it (pieces on the nodes):
            a file that differs renders again; empty: the head wrote it.
    """

    frame: int
    chunk: int
    tiles: tuple[int, ...]
    tile: dict[str, Any]
    path: str
    sha256: str = ""


@dataclass(frozen=True)
class Resume:
    """What an interrupted job had finished: pieces not yet merged and merged frames.

    The job must be planned the same way again (same tiles and sample ranges), which
    :meth:`Farm.submit` makes sure of with ``tiles`` and ``chunks`` taken from the first run.
    """

    pieces: tuple[ResumePiece, ...] = ()
    frames: dict[int, str] = field(default_factory=dict)
    #: frames this run leaves alone (a requeue of chosen frames renders only those)
    skip: frozenset[int] = frozenset()


class JobHandle:
    """A running job: its events, its result, and a way to cancel it."""

    def __init__(self, job_id: str, spec: JobSpec) -> None:
        self.job_id = job_id
        self.spec = spec
        self._events: queue.Queue[Event | None] = queue.Queue()
        self._finished = threading.Event()
        self._cancel = threading.Event()
        self._paused = threading.Event()
        self._priority: int | None = None
        #: where cancel, pause and priority go once the job is dispatched; the lock keeps a
        #: change from falling between the job's start and its dispatch
        self._controls: Controls | None = None
        self._lock = threading.Lock()
        self._result: JobResult | None = None
        self._error: RenderFarmError | None = None
        #: what bundling stored for this job (``bundle_files``, ``bundle_bytes``,
        #: ``sent_files``, ``sent_bytes``); empty when the client sent the bundle
        self.transfer: dict[str, int] = {}
        self._run: RunView | None = None

    @property
    def late_results(self) -> int:
        """Results that arrived after the job ended and were dropped unread."""
        return self._run.late_results if self._run is not None else 0

    @property
    def duplicates(self) -> int:
        """Results of a task that another copy (a straggler's backup) had finished first."""
        return self._run.duplicates if self._run is not None else 0

    @property
    def merged_twice(self) -> int:
        """Frames a second merge was asked for (refused; 0 unless something is wrong)."""
        return self._run.merged_twice if self._run is not None else 0

    def eta(self) -> float | None:
        """Seconds the job still needs at the pace of its own tasks, or None before its
        first task has finished and while it is paused (it needs time only once resumed)."""
        if self.done():
            return 0.0
        if self.paused:
            return None
        return self._run.eta() if self._run is not None else None

    def snapshot(self) -> dict[str, Any]:
        """What the job has recorded so far (see :meth:`JobRun.snapshot`), also after it
        failed or was cancelled."""
        if self._run is None:
            return {"job_id": self.job_id, "spec": self.spec.to_dict()}
        return dict(self._run.snapshot())

    def report(self, prices: dict[str, float] | None = None, client: str = "") -> dict[str, Any]:
        """The job's report (:func:`renderfarm.report.build_report`): device-seconds and cost
        per piece, worker, device and job, verification, outputs' SHA-256.

        Args:
            prices: price per device-hour (default: the farm's ``prices``).
            client: who submitted the job.
        """
        from renderfarm.report import build_report

        if prices is None and self._run is not None:
            prices = self._run.prices
        state = ("running" if not self.done() else "cancelled" if self.cancelled
                 else "failed" if self._error is not None else "done")
        return build_report(self.snapshot(), client=client, name=self.spec.name, state=state,
                            prices=prices)

    def events(self) -> Iterator[Event]:
        """Yield the job's events as they happen, until it ends (one consumer only)."""
        while True:
            event = self._events.get()
            if event is None:
                return
            yield event

    def backlog(self) -> int:
        """Events emitted that :meth:`events` has not yielded yet."""
        return self._events.qsize()

    def result(self, timeout: float | None = None) -> JobResult:
        """Wait for the job and return its result.

        Raises:
            RenderFarmError: the job failed or was cancelled.
            TimeoutError: ``timeout`` passed first.
        """
        if not self._finished.wait(timeout):
            raise TimeoutError(f"job {self.job_id} still running after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Stop the job: running tasks are stopped, nothing more is started."""
        with self._lock:
            self._cancel.set()
            if self._controls is not None:
                self._controls.cancel()

    def pause(self) -> None:
        """Start no more renders of this job; running ones finish and are kept, and frames
        whose pieces are in are still merged and written (with their checks, under
        ``verify``)."""
        with self._lock:
            self._paused.set()
            if self._controls is not None:
                self._controls.pause()

    def resume(self) -> None:
        """Start tasks of this job again after :meth:`pause`."""
        with self._lock:
            self._paused.clear()
            if self._controls is not None:
                self._controls.resume()

    @property
    def paused(self) -> bool:
        """Whether the job is paused."""
        return self._paused.is_set()

    def set_priority(self, priority: int) -> None:
        """Change the job's priority (higher first) for the tasks it has not started yet."""
        with self._lock:
            self._priority = priority
            if self._controls is not None:
                self._controls.set_priority(priority)

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()

    def done(self) -> bool:
        """Whether the job has ended (done, failed or cancelled)."""
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job ends; True when it has."""
        return self._finished.wait(timeout)

    # -- the job's side ----------------------------------------------------------------------
    def attach(self, run: RunView) -> None:
        """The run of this job: what :attr:`late_results`, :meth:`eta`, :meth:`snapshot` and
        :meth:`report` read."""
        self._run = run

    def follow(self, dispatch: Callable[[int | None, bool, bool], Controls]) -> None:
        """Dispatch the job: ``dispatch(priority, paused, cancelled)`` hands it to its
        dispatcher with what its caller set so far (``priority`` None: none was set) and
        returns where cancel, pause and priority go from now on; no change falls between
        the two."""
        with self._lock:
            self._controls = dispatch(self._priority, self._paused.is_set(),
                                      self._cancel.is_set())

    def emit(self, event: Event) -> None:
        """Hand an event of the job to :meth:`events`."""
        self._events.put(event)

    def end(self, result: JobResult | None, error: RenderFarmError | None) -> None:
        """The job has ended with ``result`` or ``error``: :meth:`result` returns."""
        self._result, self._error = result, error
        self._finished.set()
        self._events.put(None)


