"""The service's one :class:`~renderfarm.farm.Farm` and the Ray cluster under it: started on
first use, checked on a thread of its own, replaced when Ray fails (the embedded Ray is
restarted, a remote one reconnected) while requests are still answered."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from renderfarm.server.config import ServiceConfig
from renderfarm.server.live import Live, LiveJobs

logger = logging.getLogger(__name__)

#: told of the jobs a failed farm was running (already marked stale) and why it failed
JobsLost = Callable[[list[tuple[str, Live]], str], None]


class FarmHealth:
    """The farm and Ray's health.

    Args:
        config: how the service runs.
        storage_url: the service's storage, for the farm.
        live: the running jobs (each is marked stale when its farm is lost).
        stop: set when the service stops (no recovery then).
        farm: a farm to use (tests pass one with a synthetic worker; it is neither checked
            nor replaced); default: a new farm on ``config.address``, started on first use.

    Attributes:
        owns_farm: the service made its farm (and so checks, replaces and stops it).
        lock: held while jobs start on the farm, and while a failed farm is replaced.
        state: "ok", or "recovering" while the service restarts or reconnects its Ray.
        reason: why the farm last recovered.
    """

    def __init__(self, config: ServiceConfig, storage_url: str, live: LiveJobs,
                 stop: threading.Event, farm: Any = None) -> None:
        self._config = config
        self._storage_url = storage_url
        self._live = live
        self._stop = stop
        self._farm = farm
        self.owns_farm = farm is None
        self.lock = threading.Lock()
        self.state = "ok"
        self.reason: str | None = None

    @property
    def farm(self) -> Any:
        """The farm (started on first use: it connects to Ray)."""
        if self._farm is None:
            self._farm = self._new_farm()
        return self._farm

    @property
    def current(self) -> Any:
        """The farm, or None when it has not started (or is being replaced)."""
        return self._farm

    def farm_config(self) -> Any:
        """The running farm's :class:`~renderfarm.farm.FarmConfig`, or the one it will have."""
        return self._farm.config if self._farm is not None else self._new_config()

    def _new_farm(self) -> Any:
        from renderfarm.farm import Farm

        return Farm(config=self._new_config())

    def _new_config(self) -> Any:
        from renderfarm.farm import FarmConfig

        config = self._config
        return FarmConfig(
            address=config.address, workers=config.workers,
            permit_scripts=config.permit_scripts, storage=self._storage_url,
            max_bundle_bytes=config.max_bundle_bytes, max_frames=config.max_frames_per_job,
            max_tasks=config.max_tasks_per_job, max_samples=config.max_samples,
            max_pixels=config.max_pixels, default_task_timeout=config.task_timeout,
            verify=config.verify, verify_tolerance=config.verify_tolerance,
            prices=config.prices, autoscale=config.autoscale, max_workers=config.max_workers,
            wait_for_workers=config.wait_for_workers, cpus_per_worker=config.cpus_per_worker,
            pieces=config.pieces, store_node_pieces=config.store_node_pieces)

    def status(self) -> dict[str, Any]:
        """The farm's own state, sent with every job's status: ``farm`` is ``ok`` or
        ``recovering`` (Ray failed and is being restarted; jobs resume afterwards)."""
        status: dict[str, Any] = {"farm": self.state}
        if self.state != "ok":
            status["farm_reason"] = self.reason
        return status

    def workers(self) -> list[dict[str, Any]]:
        """The farm's workers (none before the farm has started)."""
        return self._farm.workers() if self._farm is not None else []

    def lost_under(self, live: Live, reason: str) -> bool:
        """A job (``live``) failed because the Ray cluster failed under it: whether it is
        left to the watchdog (which requeues it and recovers the farm) instead of failed;
        it is then stale."""
        if not self.owns_farm:
            return False
        live.stale = True
        farm = self._farm
        if farm is not None and farm.lost is None:
            farm.mark_lost(reason)  # the watchdog sees it and recovers
        return True

    def watch(self, jobs_lost: JobsLost) -> None:
        """Check the cluster on a thread of its own when the service made its farm; a
        failed farm's jobs go to ``jobs_lost`` and a new farm replaces it."""
        if self.owns_farm:
            threading.Thread(target=self._watchdog, args=(jobs_lost,),
                             name="renderfarm-watchdog", daemon=True).start()

    def _watchdog(self, jobs_lost: JobsLost) -> None:
        """Check the cluster under the farm; recover when it failed (its own thread, so
        requests are answered meanwhile)."""
        while not self._stop.wait(self._config.health_every):
            farm = self._farm
            if farm is None:
                continue
            try:
                problem = farm.cluster_problem()
            except Exception as exc:  # the check itself failed: the cluster is not well
                problem = f"the health check failed: {type(exc).__name__}: {exc}"
            if problem is not None and not self._stop.is_set():  # not while it stops
                self._recover(problem, jobs_lost)

    def _recover(self, problem: str, jobs_lost: JobsLost) -> None:
        """Drop the failed farm, requeue its jobs (their finished pieces stay recorded) and
        start a new farm, retrying until Ray is back."""
        self.state, self.reason = "recovering", problem
        with self.lock:
            self._replace_farm(problem, jobs_lost)
        self.state = "ok"

    def _replace_farm(self, problem: str, jobs_lost: JobsLost) -> None:
        logger.error("the Ray cluster failed (%s): recovering; running jobs resume from "
                     "the database", problem)
        old = self._farm
        lives = self._live.all()
        for _job_id, live in lives:
            live.stale = True
        if old is not None:
            old.mark_lost(problem)
            try:  # its runs end: what they finished is recorded, then they are queued again
                old.shutdown()
            except Exception:
                logger.exception("the failed farm did not shut down cleanly")
        jobs_lost(lives, problem)
        self._farm = None
        pause = 1.0
        while not self._stop.is_set():
            try:
                farm = self._new_farm()
                problem = farm.cluster_problem()
                if problem is None:
                    self._farm = farm
                    break
                farm.mark_lost(problem)
                farm.shutdown()
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            logger.warning("Ray is not back yet (%s); trying again in %g s", problem, pause)
            self._stop.wait(pause)
            pause = min(pause * 2, 30.0)
        if self._farm is not None:
            logger.info("the farm has recovered; its jobs resume")

    def shutdown(self) -> None:
        """Stop the farm the service made (after a recovery in progress ends, a minute at
        most)."""
        locked = self.lock.acquire(timeout=60)
        try:
            if self._farm is not None and self.owns_farm:
                self._farm.shutdown()
        finally:
            if locked:
                self.lock.release()
