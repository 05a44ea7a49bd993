"""The jobs running on the service's farm (:class:`LiveJobs`, one :class:`Live` each) and
what their runs have cost so far (:class:`Accounts`), kept so a report counts a run even if
the service is killed."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from renderfarm.job import Rect
from renderfarm.server.keyring import LOCAL
from renderfarm.server.store import Store

logger = logging.getLogger(__name__)

#: seconds between saves of a running job's accounting (lost at most, if killed)
ACCOUNT_EVERY = 5.0


@dataclass
class Live:
    """A job running in the farm."""

    handle: Any
    #: the job's owner (its client's name): its events go to the owner's topics
    owner: str = LOCAL
    #: its farm was lost (Ray failed): only the facts it still reports (pieces stored, frames
    #: written) are recorded, never its end; the job runs again from the database
    stale: bool = False
    #: its lost run did not end in time and its job was queued again: nothing it says
    #: any more is recorded
    abandoned: bool = False
    #: its run's accounting is in the database for good (the run has ended)
    accounted: bool = False
    #: pieces waiting for their check before they are recorded for a restart
    held: dict[tuple[int, int, tuple[int, ...]], tuple[str | None, tuple[Any, ...]]] = field(
        default_factory=dict)
    #: this run's id in the accounts table, and when it was saved last
    run_id: str = field(default_factory=lambda: os.urandom(6).hex())
    saved: float = 0.0
    canvas: Rect | None = None
    #: the scene's colour management, for previews (SceneInfo.display)
    display: dict[str, Any] = field(default_factory=dict)
    previews: dict[int, Any] = field(default_factory=dict)  # frame -> RGBA canvas
    #: set once every event of the run has been recorded (its watcher has ended)
    watched: threading.Event = field(default_factory=threading.Event)

    def latest_png(self) -> bytes | None:
        """The preview of the latest frame with a finished tile, as PNG."""
        from renderfarm.server.preview import png

        return png(self.previews[max(self.previews)].copy()) if self.previews else None


class LiveJobs:
    """The running jobs by id (any thread)."""

    def __init__(self) -> None:
        self._live: dict[str, Live] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)

    def get(self, job_id: str) -> Live | None:
        """The running job ``job_id``, or None."""
        with self._lock:
            return self._live.get(job_id)

    def add(self, job_id: str, live: Live) -> None:
        """``live`` runs job ``job_id`` from now on."""
        with self._lock:
            self._live[job_id] = live

    def forget(self, job_id: str, live: Live) -> None:
        """Job ``job_id`` no longer runs as ``live`` (a later run of it stays)."""
        with self._lock:
            if self._live.get(job_id) is live:
                del self._live[job_id]

    def all(self) -> list[tuple[str, Live]]:
        """The running jobs, as (job id, its run)."""
        with self._lock:
            return list(self._live.items())

    def take_all(self) -> list[tuple[str, Live]]:
        """The running jobs, forgotten all at once (the service stops)."""
        with self._lock:
            lives = list(self._live.items())
            self._live.clear()
        return lives

    def handle(self, job_id: str) -> Any:
        """The running job's :class:`~renderfarm.handle.JobHandle`, or None."""
        live = self.get(job_id)
        return live.handle if live is not None else None

    def eta(self, job_id: str) -> float | None:
        """A running job's seconds left at its own pace (None: not known, not running)."""
        live = self.get(job_id)
        if live is None or live.stale:
            return None
        try:
            return live.handle.eta()
        except Exception:  # an estimate must never fail a request
            logger.exception("job %s: no ETA", job_id)
            return None


class Accounts:
    """What each job's runs have cost, kept in the database as they go (any thread).

    Args:
        store: the service's database.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()

    def save(self, job_id: str, live: Live, final: bool = False) -> None:
        """Keep what the job's run has cost so far (every few seconds, and at its end), so
        its report counts this run even if the service is killed."""
        now = time.monotonic()
        if not final and now - live.saved < ACCOUNT_EVERY:
            return
        live.saved = now
        try:
            with self._lock:
                self._store.set_account(job_id, live.run_id, without_logs(live.handle))
                live.accounted = final
        except Exception:
            logger.exception("job %s: cannot record its accounting", job_id)

    def runs(self, job_id: str, live: Live | None) -> list[dict[str, Any]]:
        """Every run's accounting of job ``job_id``, the running one (``live``) up to now."""
        with self._lock:
            if live is not None and not live.stale and not live.accounted:
                self._store.set_account(job_id, live.run_id, without_logs(live.handle))
            return self._store.accounts(job_id)


def without_logs(handle: Any) -> dict[str, Any]:
    """A running job's snapshot for its accounting, without Blender's output (the logs
    table keeps that)."""
    snapshot = handle.snapshot()
    for task in snapshot.get("tasks", []):
        task.pop("log", None)
    return snapshot
