"""``renderfarm serve``: the long-running farm service.

One process owns the Ray driver, one :class:`~renderfarm.farm.Farm` (so every job shares one
pool of workers), the job queue in SQLite and the ZeroMQ sockets. The main thread is the only
one that touches the sockets: it answers requests, publishes the events that job threads put
on a queue, and starts queued jobs by priority (higher first, then first come).

Files: uploaded ``.blend`` files and finished frames live in the storage (a folder or S3); the
state folder holds the database, each job's pieces until their frame is merged, and a local
copy of what S3 holds. A service restarted in the middle of a job finds it in the database and
resumes it with the pieces and frames already finished.

:class:`FarmService` only puts the service together; each concern has its module:

- :mod:`~renderfarm.server.loop`: the request loop and ZeroMQ (lanes, rate, audit, events out);
- :mod:`~renderfarm.server.operations`: the table of operations and their handlers, with
  :mod:`~renderfarm.server.uploads` and :mod:`~renderfarm.server.submit`;
- :mod:`~renderfarm.server.scheduling`: which queued job starts, resumed after a restart;
- :mod:`~renderfarm.server.recorder` and :mod:`~renderfarm.server.publisher`: a running job's
  events recorded, then published with its previews;
- :mod:`~renderfarm.server.reports`: reports, thumbnails, webhooks;
- :mod:`~renderfarm.server.health`: the farm and Ray's health.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from renderfarm.server.access import own, visible
from renderfarm.server.config import ServiceConfig
from renderfarm.server.health import FarmHealth
from renderfarm.server.keyring import Caller
from renderfarm.server.live import Accounts, LiveJobs
from renderfarm.server.loop import RequestLoop
from renderfarm.server.operations import Operations
from renderfarm.server.paths import FarmPaths
from renderfarm.server.publisher import Listener, Publisher
from renderfarm.server.recorder import Recorder
from renderfarm.server.reports import Reports
from renderfarm.server.scheduling import Scheduler
from renderfarm.server.store import JobRow, Store
from renderfarm.server.submit import Submissions
from renderfarm.server.transport import ServerSockets, bind_server
from renderfarm.server.uploads import Uploads

__all__ = ["FarmService", "ServiceConfig", "serve"]

logger = logging.getLogger(__name__)

#: seconds between sweeps of unfinished uploads
EXPIRE_EVERY = 600.0


class FarmService:
    """The farm service: sockets, queue, farm.

    Args:
        config: how to run.
        farm: a farm to use (tests pass one with a synthetic worker); default: a new
            :class:`~renderfarm.farm.Farm` on ``config.address``.
    """

    def __init__(self, config: ServiceConfig, farm: Any = None) -> None:
        from renderfarm.storage import open_storage

        self.config = config
        self.state_dir = config.state.resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.storage = open_storage(config.storage or str(self.state_dir / "storage"))
        self.store = Store(self.state_dir / "farm.db")
        self.sockets: ServerSockets = bind_server(
            config.bind, config.publish, config.server_key, config.clients,
            config.insecure_loopback, config.max_message, config.admins)
        self._stop = threading.Event()
        self._http: Any = None
        self._expired = time.monotonic()
        self.paths = FarmPaths(self.state_dir, self.storage)
        self.live = LiveJobs()
        accounts = Accounts(self.store)
        outbox: queue.Queue[list[bytes]] = queue.Queue()
        self.health = FarmHealth(config, self.storage.url, self.live, self._stop, farm)
        self.publisher = Publisher(self.paths, self.live, outbox)
        self.reports = Reports(config, self.store, self.paths, self.live, accounts)
        recorder = Recorder(self.store, self.paths, self.live, accounts, self.health,
                            self.publisher, self.reports, self._stop)
        self.scheduler = Scheduler(config, self.store, self.paths, self.live, self.health,
                                   self.publisher, recorder, self.reports)
        self.uploads = Uploads(config, self.paths.uploads_dir(), self.storage, self.store)
        submissions = Submissions(config, self.store, self.paths, self.uploads, self.health,
                                  self.publisher)
        self.operations = Operations(config, self.sockets.publish, self.store, self.paths,
                                     self.live, self.health, self.uploads, submissions,
                                     self.scheduler, self.publisher, self.reports)
        self.requests = RequestLoop(config, self.sockets, self.operations.handlers,
                                    self.store, self.paths.scrub, outbox, self._stop)
        self.uploads.expire()
        self.scheduler.requeue_interrupted()  # interrupted by a restart: run them again

    # -- the farm ----------------------------------------------------------------------------
    @property
    def farm(self) -> Any:
        """The farm (started on first use: it connects to Ray)."""
        return self.health.farm

    @property
    def farm_state(self) -> str:
        """"ok", or "recovering" while the service restarts or reconnects its Ray."""
        return self.health.state

    @property
    def recovery_reason(self) -> str | None:
        """Why the farm last recovered."""
        return self.health.reason

    @property
    def http_address(self) -> str | None:
        """The web app's address once it serves (None: it does not)."""
        return self.operations.http_address

    # -- main loop ---------------------------------------------------------------------------
    def serve(self, ready: threading.Event | None = None) -> None:
        """Answer requests and run jobs until :meth:`stop`."""
        if self.config.http:
            self._start_http(self.config.http)
        _ = self.farm
        self.health.watch(self.scheduler.jobs_lost)
        logger.info("serving on %s (events on %s), storage %s", self.sockets.endpoint,
                    self.sockets.publish, self.storage.url)
        if ready is not None:
            ready.set()
        self._expired = time.monotonic()
        try:
            self.requests.run(self._tick)
        finally:
            self._shutdown()

    def _tick(self) -> None:
        """The main thread's work between messages: old uploads go, queued jobs start."""
        if time.monotonic() - self._expired > EXPIRE_EVERY:
            self._expired = time.monotonic()
            self.uploads.expire()
        if self.health.state == "ok":
            self.scheduler.schedule()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def describe(self) -> list[str]:
        """What the running service does, as ``renderfarm serve`` says it when it starts:
        where it listens (requests, events, the web app), its state and storage, and the
        Ray it renders on."""
        import ray

        config = self.config
        keyed = "keyed: clients in " + str(config.clients) if config.clients else \
            "no keys (loopback only)"
        lines = [f"requests on {self.sockets.endpoint} ({keyed})",
                 f"events on {self.sockets.publish}"]
        if config.http:
            lines.append(f"web app and HTTP API on {self.http_address or config.http}")
        lines += [f"state (job database) in {config.state}", f"storage {self.storage.url}"]
        try:
            gcs = ray.get_runtime_context().gcs_address
        except Exception:  # not connected yet
            gcs = "?"
        which = "its own, started on this machine" if config.address is None else \
            config.address
        lines.append(f"Ray: {which} (GCS {gcs})")
        return lines

    def stop(self) -> None:
        """Make :meth:`serve` return (jobs stay in the database and resume on restart)."""
        self._stop.set()

    def _shutdown(self) -> None:
        if self._http is not None:
            self._http.stop()
        for _job_id, run in self.live.take_all():  # interrupted, not cancelled: they resume
            run.handle.cancel()
        self.requests.close()
        self.health.shutdown()
        self.sockets.close()
        self.store.close()

    def _start_http(self, address: str) -> None:
        from renderfarm.server.web import start_status_page

        self._http = start_status_page(self, address)
        self.operations.http_address = self._http.url
        logger.info("status page on %s", self.http_address)

    # -- for the web app and the HTTP API ----------------------------------------------------
    def call(self, caller: Caller, op: str, fields: dict[str, Any],
             data: bytes | None = None) -> tuple[dict[str, Any], bytes | None]:
        """Answer one request of the protocol for another front end (the HTTP API): the
        same schema, checks, ownership, rate limit and audit as a ZeroMQ request.

        Returns:
            The reply's fields (``ok`` false with ``error`` for a refusal) and its data.
        """
        return self.requests.call(caller, op, fields, data)

    def rate_refusal(self, caller: Caller) -> str | None:
        """Why a request of ``caller`` would be refused for its rate or its requests in
        flight, checked before its body is read (nothing is counted: :meth:`call` counts
        it); None when it may come."""
        return self.requests.rate_refusal(caller)

    def listen(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback(owner, message)`` with every job event the service publishes
        (from job threads: keep it short); returns a function that stops it."""
        return self.publisher.listen(callback)

    def jobs_for(self, caller: Caller) -> list[JobRow]:
        """The jobs ``caller`` may see (its own; an admin's: all), as ``list`` gives them."""
        return visible(self.store, caller)

    def job_for(self, caller: Caller, job_id: str) -> JobRow:
        """A job ``caller`` may see.

        Raises:
            ServiceError: ``not_found`` when there is no such job or it is another client's.
        """
        return own(self.store, caller, job_id)

    def public_job(self, row: JobRow) -> dict[str, Any]:
        """A job as clients see it (its error and warnings without the farm's paths)."""
        return self.paths.public(row.to_dict())

    def job_eta(self, job_id: str) -> float | None:
        """A running job's seconds left at its own pace (None: not known, not running)."""
        return self.live.eta(job_id)

    def job_waiting(self, row: JobRow) -> str | None:
        """Why a queued or running job waits for others (``--after``), or None."""
        return self.scheduler.job_waiting(row)

    def job_report(self, row: JobRow) -> dict[str, Any]:
        """A job's report: every run's calls (a resumed job has several), its outputs and
        their SHA-256 as recorded when written, its estimate, priced by this farm."""
        return self.reports.job_report(row)

    def report_page(self, caller: Caller, job_id: str, style: str | None = None,
                    header: str = "") -> bytes:
        """A job's report as an HTML page in the look ``style`` (the web app's), with
        ``header`` above it (see :func:`renderfarm.report.render_html`).

        Raises:
            ServiceError: ``not_found``: no such job, or another client's.
        """
        return self.reports.report_page(caller, job_id, style, header)

    def frame_thumbnail(self, caller: Caller, job_id: str, frame: int) -> bytes | None:
        """A small PNG of a written frame of a job ``caller`` may see (kept once made).

        Raises:
            ServiceError: ``not_found``: no such job, or another client's.
        """
        return self.reports.frame_thumbnail(caller, job_id, frame)

    def preview_png(self, job_id: str) -> bytes | None:
        """The latest frame's preview of a job as PNG (kept on disk once the job ends)."""
        return self.publisher.preview_png(job_id)

    def workers_for(self, caller: Caller) -> list[dict[str, Any]]:
        """The farm's workers as ``caller`` may see them: what a worker renders for another
        client's job is "busy", without the job (an admin sees everything)."""
        return self.operations.workers_for(caller)

    def farm_workers(self) -> list[dict[str, Any]]:
        """The farm's workers (none before the farm has started)."""
        return self.health.workers()

    def scrub(self, text: str) -> str:
        """``text`` without the farm's own paths."""
        return self.paths.scrub(text)


def serve(config: ServiceConfig, say: Any = None) -> None:
    """Run the service until SIGINT or SIGTERM (jobs resume when it starts again);
    ``say(line)`` is told what it does once it serves, and when it stops."""
    import signal

    service = FarmService(config)
    ready = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        logger.info("signal %d: stopping (running jobs resume at the next start)", signum)
        service.stop()

    def _announce() -> None:
        while not ready.wait(0.5):
            if service.stopping:
                return
        for line in service.describe():
            say(line)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if say is not None:
        threading.Thread(target=_announce, name="renderfarm-announce", daemon=True).start()
    try:
        service.serve(ready)
    finally:
        if say is not None:
            say("stopped; unfinished jobs resume at the next start")
