"""``renderfarm serve``: the long-running farm service.

One process owns the Ray driver, one :class:`~renderfarm.farm.Farm` (so every job shares one
pool of workers), the job queue in SQLite and the ZeroMQ sockets. The main thread is the only
one that touches the sockets: it answers requests, publishes the events that job threads put
on a queue, and starts queued jobs by priority (higher first, then first come).

Files: uploaded ``.blend`` files and finished frames live in the storage (a folder or S3); the
state folder holds the database, each job's pieces until their frame is merged, and a local
copy of what S3 holds. A service restarted in the middle of a job finds it in the database and
resumes it with the pieces and frames already finished.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from renderfarm import __version__
from renderfarm.bundle import (
    MAX_BUNDLE_BYTES,
    BundleFile,
    Manifest,
    missing_error,
    storage_key,
)
from renderfarm.errors import (
    InputError,
    LimitError,
    ProtocolError,
    RenderFarmError,
    ServiceError,
)
from renderfarm.events import Event
from renderfarm.job import JobSpec, Rect, Task, Tile
from renderfarm.server import protocol
from renderfarm.server.keyring import LOCAL, Caller
from renderfarm.server.quiet import QuietLog
from renderfarm.server.store import JobRow, Store
from renderfarm.server.transport import KeyPair, ServerSockets, bind_server

logger = logging.getLogger(__name__)

#: threads that answer requests; a client's requests always go to the same one (in order),
#: so one client's expensive request delays only the clients that share its lane
LANES = 4
#: requests of one client queued or being answered at once (more get ``rate_limited``)
MAX_IN_FLIGHT = 16

#: uploads one client may have in progress at once
MAX_PARTS = 8
#: seconds an unfinished upload is kept
PART_EXPIRY = 86400.0

#: seconds between saves of a running job's accounting (lost at most, if killed)
ACCOUNT_EVERY = 5.0

#: requests that change state: each is recorded, with its caller, in the audit table
AUDITED = ("upload", "submit", "cancel", "pause", "resume", "priority", "requeue", "worker")

#: spec fields a client may set (the service chooses the file and the output folder)
CLIENT_SPEC_FIELDS = ("frames", "tiles", "samples", "percentage", "device", "output",
                      "retries", "task_timeout", "allow_scripts", "overscan", "scene", "name",
                      "group_tiles", "denoise", "chunks", "allow_missing", "verify",
                      "estimate", "budget", "notify", "after", "after_frames", "require",
                      "origin", "keep_frames")


@dataclass(frozen=True)
class ServiceConfig:
    """How the service runs.

    Attributes:
        bind: the request socket's address.
        publish: the event socket's address (default: request port + 1).
        address: the Ray cluster (None starts Ray on this machine).
        storage: a folder or ``s3://bucket/prefix`` for uploads and finished frames.
        state: the folder of the database and of pieces in flight.
        server_key: the service's key pair (None: no CURVE, loopback only).
        clients: the folder of allowed clients' public keys (``alice.key`` is ``alice``);
            read again whenever it changes.
        admins: the folder of admins' public keys: they see and act on every job.
        insecure_loopback: allow running without keys on loopback.
        workers: workers in the pool (None: the farm's default).
        max_running: jobs started at once (they share the workers by priority).
        permit_scripts: jobs may ask to run Python embedded in their files.
        max_message: the largest request accepted, in bytes.
        http: ``host:port`` of the read-only status page, or None.
        max_bundle_bytes: the largest bundle (a job's files) accepted.
        requests_per_second: requests a client may send per second (bursts of twice as
            many); 0 for no limit.
        max_frames_per_job: the most frames one job may render.
        max_tasks_per_job: the most tasks (frames x tiles x sample chunks) one job may plan.
        max_tasks_per_client: the most tasks one client's queued, running and paused jobs
            may hold together.
        max_samples: the most samples per pixel a job may ask for.
        max_pixels: the largest frame (width x height after the percentage).
        task_timeout: seconds a task may run when its job sets no timeout (None: no limit).
        max_stored_bytes_per_client: the most bytes of new files one client may store.
        health_every: seconds between checks of the Ray cluster's health (GCS, raylet);
            a failed cluster is restarted (the embedded Ray) or reconnected, and its jobs
            resume from the database.
        verify: the share of pieces checked on another worker for jobs that do not say.
        verify_tolerance: per-value difference two renders of a piece may have and agree
            (0: bit for bit).
        prices: price per device-hour for job reports (see :mod:`renderfarm.report`).
        notify: a webhook that gets every job's summary when it ends (besides the job's own
            ``notify``).
        notify_allow: URL prefixes a client's ``notify`` may start with (none: clients may
            not name webhooks; the farm would otherwise call any address for them).
    """

    bind: str = "tcp://127.0.0.1:5555"
    publish: str | None = None
    address: str | None = None
    storage: str | None = None
    state: Path = Path("farm-state")
    server_key: KeyPair | None = None
    clients: Path | None = None
    admins: Path | None = None
    insecure_loopback: bool = False
    workers: int | None = None
    max_running: int = 4
    permit_scripts: bool = False
    max_message: int = protocol.MAX_MESSAGE
    http: str | None = None
    max_bundle_bytes: int = MAX_BUNDLE_BYTES
    health_every: float = 1.0
    requests_per_second: float = 200.0
    max_frames_per_job: int = 10_000
    max_tasks_per_job: int = 100_000
    max_tasks_per_client: int = 500_000
    max_samples: int = 65_536
    max_pixels: int = 16384 * 16384
    task_timeout: float | None = 3600.0
    max_stored_bytes_per_client: int = 100 * 1024**3
    verify: float = 0.0
    verify_tolerance: float = 0.0
    prices: dict[str, float] | None = None
    notify: str | None = None
    notify_allow: tuple[str, ...] = ()


@dataclass
class _Live:
    """A job running in the farm."""

    handle: Any
    #: the job's owner (its client's name): its events go to the owner's topics
    owner: str = LOCAL
    #: its farm was lost (Ray failed): nothing it says any more is recorded
    stale: bool = False
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

    def latest_png(self) -> bytes | None:
        """The preview of the latest frame with a finished tile, as PNG."""
        from renderfarm.server.preview import png

        return png(self.previews[max(self.previews)].copy()) if self.previews else None


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
        self._farm = farm
        self._owns_farm = farm is None
        self._live: dict[str, _Live] = {}
        self._outbox: queue.Queue[list[bytes]] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        #: refused requests, logged a few lines per kind at most
        self._quiet = QuietLog(logger)
        #: the handler of each operation of the protocol (one per :data:`protocol.REQUESTS`)
        self._handlers: dict[str, Callable[[protocol.Request, Caller], Any]] = {
            "hello": self._op_hello, "web_token": self._op_web_token,
            "upload": self._op_upload, "have": self._op_have, "submit": self._op_submit,
            "status": self._op_status, "list": self._op_list, "cancel": self._op_cancel,
            "pause": self._op_pause, "resume": self._op_resume,
            "priority": self._op_priority, "requeue": self._op_requeue,
            "workers": self._op_workers, "worker": self._op_worker, "fetch": self._op_fetch,
            "report": self._op_report, "log": self._op_log}
        missing = set(protocol.REQUESTS) ^ set(self._handlers)
        assert not missing, f"operations without a handler, or handlers without one: {missing}"
        #: each client's request bucket: (tokens, when)
        self._buckets: dict[str, tuple[float, float]] = {}
        #: requests are parsed and answered off the main thread, which only moves messages
        self._lanes = [ThreadPoolExecutor(1, thread_name_prefix=f"renderfarm-lane{i}")
                       for i in range(LANES)]
        self._replies: queue.Queue[list[bytes]] = queue.Queue()
        self._in_flight: dict[str, int] = {}
        #: jobs whose end was notified (a webhook hears of a job once)
        self._notified: set[str] = set()
        #: callbacks told of every job event (the web app's live updates)
        self._listeners: list[Any] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        #: held while jobs start on the farm, and while a failed farm is replaced
        self._farm_lock = threading.Lock()
        self._http: Any = None
        self.http_address: str | None = None
        #: "ok", or "recovering" while the service restarts or reconnects its Ray
        self.farm_state = "ok"
        #: why the farm last recovered
        self.recovery_reason: str | None = None
        local = self.storage.local_path("x")
        self._private_roots = sorted({str(self.state_dir), str(Path(local).parent)}
                                     if local is not None else {str(self.state_dir)},
                                     key=len, reverse=True)
        self._expire_uploads()
        for job in self.store.jobs(["running"]):  # interrupted by a restart: run them again
            logger.info("job %s was running when the service stopped; it resumes", job.id)
            self.store.act(job.id, "requeue")

    # -- the farm ----------------------------------------------------------------------------
    @property
    def farm(self) -> Any:
        """The farm (started on first use: it connects to Ray)."""
        if self._farm is None:
            self._farm = self._new_farm()
        return self._farm

    def _new_farm(self) -> Any:
        from renderfarm.farm import Farm

        return Farm(config=self._farm_config())

    def _farm_config(self) -> Any:
        from renderfarm.farm import FarmConfig

        config = self.config
        return FarmConfig(
            address=config.address, workers=config.workers,
            permit_scripts=config.permit_scripts, storage=self.storage.url,
            max_bundle_bytes=config.max_bundle_bytes, max_frames=config.max_frames_per_job,
            max_tasks=config.max_tasks_per_job, max_samples=config.max_samples,
            max_pixels=config.max_pixels, default_task_timeout=config.task_timeout,
            verify=config.verify, verify_tolerance=config.verify_tolerance,
            prices=config.prices)

    # -- Ray's health ------------------------------------------------------------------------
    def _watchdog(self) -> None:
        """Check the cluster under the farm; recover when it failed (its own thread, so
        requests are answered meanwhile)."""
        while not self._stop.wait(self.config.health_every):
            farm = self._farm
            if farm is None or not self._owns_farm:
                continue
            try:
                problem = farm.cluster_problem()
            except Exception as exc:  # the check itself failed: the cluster is not well
                problem = f"the health check failed: {type(exc).__name__}: {exc}"
            if problem is not None and not self._stop.is_set():  # not while it stops
                self._recover(problem)

    def _recover(self, problem: str) -> None:
        """Drop the failed farm, requeue its jobs (their finished pieces stay recorded) and
        start a new farm, retrying until Ray is back."""
        self.farm_state, self.recovery_reason = "recovering", problem
        with self._farm_lock:
            self._replace_farm(problem)
        self.farm_state = "ok"

    def _replace_farm(self, problem: str) -> None:
        logger.error("the Ray cluster failed (%s): recovering; running jobs resume from "
                     "the database", problem)
        old = self._farm
        with self._lock:
            lives = list(self._live.items())
        for _job_id, live in lives:
            live.stale = True
        if old is not None:
            old.mark_lost(problem)
        note = f"the farm is recovering: {problem}; the job resumes with its finished pieces"
        for job_id, live in lives:
            live.handle.cancel()
            row = self.store.job(job_id)
            if row.state == "running":
                row = self.store.act(job_id, "requeue")
            self._event(Event("info", job_id, message=note), row)
        with self._lock:
            for job_id, live in lives:
                if self._live.get(job_id) is live:
                    del self._live[job_id]
        if old is not None:
            try:
                old.shutdown()
            except Exception:
                logger.exception("the failed farm did not shut down cleanly")
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

    # -- main loop ---------------------------------------------------------------------------
    def serve(self, ready: threading.Event | None = None) -> None:
        """Answer requests and run jobs until :meth:`stop`."""
        import zmq

        if self.config.http:
            self._start_http(self.config.http)
        _ = self.farm
        if self._owns_farm:
            threading.Thread(target=self._watchdog, name="renderfarm-watchdog",
                             daemon=True).start()
        logger.info("serving on %s (events on %s), storage %s", self.sockets.endpoint,
                    self.sockets.publish, self.storage.url)
        if ready is not None:
            ready.set()
        poller = zmq.Poller()
        poller.register(self.sockets.router, zmq.POLLIN)
        poller.register(self.sockets.pub, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        keyring = self.sockets.keyring
        removals, checked = (keyring.removals if keyring else 0), 0.0
        expired = time.monotonic()
        try:
            while not self._stop.is_set():
                for sock, _ in poller.poll(50):
                    if sock is self.sockets.router:
                        self._receive()
                    elif sock is self.sockets.pub:
                        self._subscriptions()
                    elif sock == self._wake_r:
                        os.read(self._wake_r, 65536)
                self._send_replies()
                if time.monotonic() - expired > 600:
                    expired = time.monotonic()
                    self._expire_uploads()
                if keyring is not None and time.monotonic() - checked > 1.0:
                    checked = time.monotonic()
                    keyring.names()  # notices keys removed from the folders
                    if keyring.removals != removals:  # drop their subscriptions
                        removals = keyring.removals
                        poller.unregister(self.sockets.pub)
                        self.sockets.rebind_events()
                        poller.register(self.sockets.pub, zmq.POLLIN)
                        logger.info("a client key was removed: event subscriptions renewed")
                self._publish()
                if self.farm_state == "ok":
                    self._schedule()
        finally:
            self._shutdown()

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
        with self._lock:
            live = list(self._live.items())
            self._live.clear()
        for _job_id, run in live:  # interrupted, not cancelled: they resume next time
            run.handle.cancel()
        for lane in self._lanes:
            lane.shutdown(wait=True, cancel_futures=True)
        self._send_replies()
        os.close(self._wake_r)
        os.close(self._wake_w)
        locked = self._farm_lock.acquire(timeout=60)  # let a recovery in progress end
        try:
            if self._farm is not None and self._owns_farm:
                self._farm.shutdown()
        finally:
            if locked:
                self._farm_lock.release()
        self.sockets.close()
        self.store.close()

    def _receive(self) -> None:
        import zmq

        while True:
            try:
                frames = self.sockets.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity, body = frames[0].bytes, [f.bytes for f in frames[1:]]
            caller = self._caller(frames[-1])
            refusal = None
            if isinstance(caller, str):  # refused before anything is read
                refusal = protocol.reply_error(None, "refused", caller)
            else:
                try:
                    self._limit_rate(caller)
                except ServiceError as exc:
                    refusal = protocol.reply_error(None, exc.kind, exc.one_line())
            if refusal is not None:
                self._send(identity, [refusal])
                continue
            assert isinstance(caller, Caller)
            lane = self._lanes[zlib.crc32(caller.name.encode()) % len(self._lanes)]
            with self._lock:
                self._in_flight[caller.name] = self._in_flight.get(caller.name, 0) + 1
            lane.submit(self._answer_in_lane, identity, body, caller)

    def _answer_in_lane(self, identity: bytes, body: list[bytes], caller: Caller) -> None:
        try:
            reply = self._answer(body, caller)
        except BaseException:  # even the error reply failed: a fixed one, and go on
            logger.exception("a request could not be answered")
            reply = [protocol.reply_error(None, "internal", "the request could not be "
                                          "answered; it was dropped")]
        finally:
            with self._lock:
                self._in_flight[caller.name] -= 1
        self._replies.put([identity, *reply])
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:  # the main loop has wake-ups pending already
            pass

    def _send_replies(self) -> None:
        while True:
            try:
                frames = self._replies.get_nowait()
            except queue.Empty:
                return
            self._send(frames[0], frames[1:])

    def _send(self, identity: bytes, reply: list[bytes]) -> None:
        import zmq

        try:
            self.sockets.router.send_multipart([identity, *reply], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the client went away: nothing to do
            logger.debug("reply dropped: %s", exc)

    def _caller(self, frame: Any) -> Caller | str:
        """Who sent a message (its key's name, from the secure handshake), or why the
        sender is not allowed any more."""
        keyring = self.sockets.keyring
        if keyring is None:  # no keys: every caller is this machine's (loopback only)
            return Caller(LOCAL, admin=True)
        try:
            name = frame.get("User-Id")
        except Exception:  # no handshake metadata: not a keyed connection
            name = None
        caller = keyring.by_user_id(name) if name else None
        if caller is None:
            return ("this client's key is no longer allowed by the farm (it was removed from "
                    "the service's --clients); ask the farm's administrator")
        return caller

    def _answer(self, body: list[bytes], caller: Caller) -> list[bytes]:
        request_id = None
        request = None
        try:
            request = protocol.parse_request(body, self.config.max_message)
            request_id = request.id
            handler = self._handlers[request.op]
            result = handler(request, caller)
            self._audit(caller, request, None, result)
            if isinstance(result, tuple):
                fields, data = result
                return [protocol.reply_ok(request_id, **fields), data]
            return [protocol.reply_ok(request_id, **result)]
        except ProtocolError as exc:
            self._quiet.note("bad request", "bad request: %s", exc.message[:300])
            self._audit(caller, request, exc)
            return [protocol.reply_error(exc.request_id, exc.kind, self._scrub(exc.message))]
        except ServiceError as exc:
            self._audit(caller, request, exc)
            return [protocol.reply_error(request_id, exc.kind, self._scrub(exc.one_line()))]
        except RenderFarmError as exc:
            self._audit(caller, request, exc)
            kind = "limit" if isinstance(exc, LimitError) else "bad_input"
            return [protocol.reply_error(request_id, kind, self._scrub(exc.one_line()))]
        except Exception as exc:  # never let one request take the service down
            logger.exception("request failed")
            return [protocol.reply_error(request_id, "internal", self._scrub(
                f"internal error: {type(exc).__name__}: {exc}"))]

    def call(self, caller: Caller, op: str, fields: dict[str, Any],
             data: bytes | None = None) -> tuple[dict[str, Any], bytes | None]:
        """Answer one request of the protocol for another front end (the HTTP API): the
        same schema, checks, ownership, rate limit and audit as a ZeroMQ request.

        Returns:
            The reply's fields (``ok`` false with ``error`` for a refusal) and its data.
        """
        try:
            with self._lock:
                self._limit_rate(caller)
                self._in_flight[caller.name] = self._in_flight.get(caller.name, 0) + 1
        except ServiceError as exc:
            return {"ok": False, "error": {"type": exc.kind, "message": exc.one_line()}}, None
        try:
            try:
                frame = protocol.request(op, 1, **fields)
            except (TypeError, ValueError) as exc:
                return {"ok": False, "error": {"type": "bad_request",
                                               "message": f"{op}: not JSON ({exc})"}}, None
            reply = self._answer([frame] + ([data] if data is not None else []), caller)
        finally:
            with self._lock:
                self._in_flight[caller.name] -= 1
        return protocol.parse_reply(reply)

    def listen(self, callback: Any) -> Any:
        """Call ``callback(owner, message)`` with every job event the service publishes
        (from job threads: keep it short); returns a function that stops it."""
        with self._lock:
            self._listeners.append(callback)

        def stop() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return stop

    def _expire_uploads(self) -> None:
        """Delete uploads left unfinished for :data:`PART_EXPIRY` seconds."""
        now = time.time()
        for stale in (self.state_dir / "uploads").glob("*.part"):
            try:
                if now - stale.stat().st_mtime > PART_EXPIRY:
                    stale.unlink(missing_ok=True)
                    logger.info("unfinished upload %s expired", stale.name)
            except OSError:
                continue

    def _scrub(self, text: str) -> str:
        """``text`` without the farm's own paths (its state folder, its storage): clients
        see ``<farm>/jobs/...``, never where the service keeps things."""
        for root in self._private_roots:
            text = text.replace(root, "<farm>")
        return text

    def _public(self, job: dict[str, Any]) -> dict[str, Any]:
        """A job's dict as clients see it (no server paths in its error and warnings)."""
        if job.get("error"):
            job["error"] = self._scrub(job["error"])
        job["warnings"] = [self._scrub(w) for w in job.get("warnings") or []]
        return job

    def _audit(self, caller: Caller, request: protocol.Request | None,
               error: RenderFarmError | None, result: Any = None) -> None:
        """Record a state-changing request (or an attempt at one) with its caller."""
        if request is None or request.op not in AUDITED:
            return
        if request.op == "upload" and error is None and not (
                isinstance(result, dict) and result.get("complete")):
            return  # one row per uploaded file, not per chunk
        name = caller.name
        job_id = request.fields.get("job_id")
        if job_id is None and isinstance(result, dict):
            job_id = result.get("job_id")
        detail = request.fields.get("sha256") if request.op == "upload" else None
        if error is not None:
            detail = error.one_line()[:500]
        try:
            self.store.audit(name, request.op, job_id, error is None, detail)
        except Exception:  # the audit must not take the request down
            logger.exception("cannot record %s by %s in the audit table", request.op, name)

    def rate_refusal(self, caller: Caller) -> str | None:
        """Why a request of ``caller`` would be refused for its rate or its requests in
        flight, checked before its body is read (nothing is counted: :meth:`call` counts
        it); None when it may come."""
        with self._lock:
            return self._rate_problem(caller, time.monotonic())[0]

    def _rate_problem(self, caller: Caller, now: float) -> tuple[str | None, float | None]:
        """Why a request of ``caller`` may not come now (None: it may), and the tokens of
        its bucket at ``now`` (None: no rate is set)."""
        if self._in_flight.get(caller.name, 0) >= MAX_IN_FLIGHT:
            return (f"{caller.name} has {MAX_IN_FLIGHT} requests in flight already; wait for "
                    "their replies"), None
        rate = self.config.requests_per_second
        if not rate:
            return None, None
        tokens, then = self._buckets.get(caller.name, (2.0 * rate, now))
        tokens = min(2.0 * rate, tokens + (now - then) * rate)
        if tokens < 1.0:
            return (f"too many requests from {caller.name}: the farm allows {rate:g} per "
                    "second per client (serve --requests-per-second); slow down and try "
                    "again"), tokens
        return None, tokens

    def _limit_rate(self, caller: Caller) -> None:
        """Refuse a caller's request over its rate (a token bucket per client) or with too
        many requests in flight; count it when it may come."""
        now = time.monotonic()
        problem, tokens = self._rate_problem(caller, now)
        if tokens is not None:  # a refused request still leaves its bucket refilled to now
            self._buckets[caller.name] = (tokens - (0.0 if problem else 1.0), now)
        if problem is not None:
            raise ServiceError(problem, kind="rate_limited")

    def _subscriptions(self) -> None:
        """Honour each subscription to events only for the caller's own jobs (admins:
        any); the XPUB is in manual mode, so a refused topic delivers nothing."""
        import zmq

        pub = self.sockets.pub
        while True:
            try:
                frame = pub.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            message = frame.bytes
            if not message or message[0] not in (0, 1):
                continue
            topic = message[1:]
            caller = self._caller(frame)
            if not isinstance(caller, Caller):
                continue
            own = tuple(f"{kind}.{caller.name}.".encode() for kind in ("job", "preview"))
            if not (caller.admin or topic.startswith(own)):
                self._quiet.note("subscription", "subscription of %s to %r refused: not its "
                                 "jobs", caller.name, topic[:80])
                continue
            pub.setsockopt(zmq.SUBSCRIBE if message[0] == 1 else zmq.UNSUBSCRIBE, topic)
            if message[0] == 1:  # confirm it, so the client knows events flow from now on
                confirmation = protocol.encode({"kind": "subscribed",
                                                "topic": topic.decode(errors="replace")})
                try:
                    pub.send_multipart([topic, confirmation], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass

    def _publish(self) -> None:
        import zmq

        while True:
            try:
                frames = self._outbox.get_nowait()
            except queue.Empty:
                return
            try:
                self.sockets.pub.send_multipart(frames, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # no subscriber can keep up: events are advisory, state is in status

    # -- operations --------------------------------------------------------------------------
    def _handle(self, job_id: str) -> Any:
        """The running job's :class:`~renderfarm.handle.JobHandle`, or None."""
        with self._lock:
            live = self._live.get(job_id)
        return live.handle if live is not None else None

    def _op_hello(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        port = self.sockets.publish.rsplit(":", 1)[-1]
        return {"server": __version__, "protocol": protocol.VERSION,
                "publish_port": int(port) if port.isdigit() else None,
                "max_message": self.config.max_message, "chunk": protocol.CHUNK,
                "permit_scripts": self.config.permit_scripts, "http": self.http_address,
                "you": caller.name, "admin": caller.admin, **self._farm_status()}

    def _op_web_token(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        from renderfarm.server.keyring import web_token

        server_key = self.config.server_key
        if server_key is None or not caller.key:
            raise ServiceError("this farm runs without keys (--insecure-loopback): its status "
                               "page needs no login and serves this machine only",
                               kind="not_found")
        return {"token": web_token(server_key.secret, caller.key), "http": self.http_address}

    def _farm_status(self) -> dict[str, Any]:
        """The farm's own state, sent with every job's status: ``farm`` is ``ok`` or
        ``recovering`` (Ray failed and is being restarted; jobs resume afterwards)."""
        status: dict[str, Any] = {"farm": self.farm_state}
        if self.farm_state != "ok":
            status["farm_reason"] = self.recovery_reason
        return status

    def _upload_part(self, sha: str, caller: Caller) -> Path:
        # one part per client: another client sending the same content cannot reset it
        return self.state_dir / "uploads" / f"{sha}.{caller.name}.part"

    def _op_upload(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        from renderfarm.bundle import file_sha256 as file_hash

        sha, offset, total = (request.fields[k] for k in ("sha256", "offset", "total"))
        key = storage_key(sha)
        in_storage = self.storage.exists(key)
        if in_storage and self.store.owns(caller.name, sha):
            return {"received": total, "complete": True}
        # content the farm has from another client: this client sends it too (proof that
        # it has the file; a hash alone gives nobody another client's file), not stored twice
        if total > self.config.max_bundle_bytes:
            raise LimitError(f"upload of {sha[:12]}: {total} bytes is more than the farm's "
                             f"{self.config.max_bundle_bytes} (serve --max-bundle-gb)",
                             limit="upload_bytes")
        part = self._upload_part(sha, caller)
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        # the quota counts what the client stored, its other uploads in progress, and all of
        # this one (announced), at every chunk
        others = [p for p in part.parent.glob(f"*.{caller.name}.part") if p != part]
        if offset == 0 and not part.exists() and len(others) >= MAX_PARTS:
            raise LimitError(f"{caller.name} has {len(others)} uploads in progress, the most "
                             "the farm allows; finish or abandon one (unfinished uploads "
                             "expire after a day)", limit="uploads_in_progress")
        used = self.store.stored_bytes(caller.name)
        pending = sum(p.stat().st_size for p in others)
        quota = self.config.max_stored_bytes_per_client
        if used + pending + total > quota:
            raise LimitError(f"{caller.name} has stored {used} bytes and has {pending} in "
                             f"unfinished uploads; {total} more is over the farm's {quota} "
                             "per client (serve --max-stored-gb-per-client)",
                             limit="stored_bytes")
        data = request.data or b""
        if offset != have:
            if offset != 0:
                raise ServiceError(f"upload of {sha[:12]} must continue at byte {have}, not "
                                   f"{offset}", kind="conflict")
            part.unlink(missing_ok=True)
        if offset + len(data) > total:
            raise ProtocolError(f"upload: {offset + len(data)} bytes is more than the "
                                f"announced total {total}", request_id=request.id)
        with open(part, "ab" if offset else "wb") as handle:
            handle.write(data)
        received = offset + len(data)
        if received < total:
            return {"received": received, "complete": False}
        digest = file_hash(str(part))
        if digest != sha:
            part.unlink()
            raise ServiceError(f"the uploaded file's SHA-256 is {digest[:12]}…, not "
                               f"{sha[:12]}…: it was damaged on the way; upload it again",
                               kind="bad_upload")
        if not in_storage:
            self.storage.put_file(key, part)
        part.unlink(missing_ok=True)
        self.store.add_upload(caller.name, sha, total)
        return {"received": received, "complete": True}

    def _op_have(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        hashes = sorted(set(request.fields["hashes"]))
        return {"missing": [h for h in hashes if not self._has(caller, h)]}

    def _has(self, caller: Caller, sha: str) -> bool:
        """Whether the farm holds ``sha`` for this caller: stored, and sent by it once."""
        return self.store.owns(caller.name, sha) and self.storage.exists(storage_key(sha))

    def _manifest(self, request: protocol.Request, caller: Caller) -> Manifest:
        """The job's bundle: the client's manifest, or the one uploaded ``.blend`` alone."""
        fields = request.fields
        if ("blob" in fields) == ("bundle" in fields):
            raise ProtocolError("submit: give either 'bundle' (a manifest) or 'blob' (one "
                                "uploaded .blend)", request_id=request.id)
        if "blob" in fields:
            name = fields["filename"] if fields["filename"].endswith(".blend") else \
                fields["filename"] + ".blend"
            key = storage_key(fields["blob"])
            if not self._has(caller, fields["blob"]):
                raise ServiceError("the file was not uploaded (or the upload did not "
                                   "finish): upload it, then submit", kind="not_found")
            return Manifest(name, (BundleFile(name, fields["blob"], self.storage.size(key)),))
        try:
            manifest = Manifest.from_dict(fields["bundle"], self.config.max_bundle_bytes)
        except RenderFarmError as exc:
            raise ServiceError(f"submit: {exc.one_line()}", kind="bad_bundle") from exc
        absent = [h for h in manifest.hashes() if not self._has(caller, h)]
        if absent:
            raise ServiceError(f"{len(absent)} file(s) of the bundle were not uploaded (e.g. "
                               f"{absent[0][:12]}…): upload them, then submit",
                               kind="not_found")
        sizes: dict[str, int] = {}
        for entry in manifest.files:  # the limit counts what is stored, not what is claimed
            if entry.sha256 not in sizes:
                sizes[entry.sha256] = self.storage.size(storage_key(entry.sha256))
            if sizes[entry.sha256] != entry.size:
                raise ServiceError(f"bundle file {entry.path!r} is {sizes[entry.sha256]} "
                                   f"bytes on the farm, not the {entry.size} the manifest "
                                   "says", kind="bad_bundle")
        return manifest

    def _op_submit(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        from renderfarm.farm import check_spec
        from renderfarm.job import new_job_id

        fields = request.fields
        raw = dict(fields["spec"])
        unknown = sorted(set(raw) - set(CLIENT_SPEC_FIELDS) - {"blend_file"})
        if unknown:
            raise ProtocolError(f"submit: spec has unknown field(s) {', '.join(unknown)}",
                                request_id=request.id)
        manifest = self._manifest(request, caller)
        if manifest.missing and raw.get("allow_missing") is not True:
            raise ServiceError(missing_error(manifest.missing, fields["filename"]).one_line(),
                               kind="missing_files")
        job_id = new_job_id()
        workdir, outputs = self._job_dir(job_id), self._output_dir(job_id)
        try:  # nothing of a refused job is left behind
            output = raw.get("output")
            if output is not None and (not isinstance(output, str) or not Path(output).name):
                raise InputError(f"output must be a file name like shot_####.png, not "
                                 f"{output!r}")
            workdir.mkdir(parents=True)
            # the farm's folder for the job; the scene's own file names when none is given
            raw.update(blend_file=str(workdir / Path(manifest.root).name),
                       output=str(outputs / Path(output).name) if output is not None
                       else str(outputs) + os.sep, files="bundle",
                       bundle=manifest.to_dict())
            spec = JobSpec.from_dict(raw)
            self._check_after(caller, job_id, spec)
            self._check_require(spec)
            if spec.notify is not None:
                from renderfarm.notify import check_url

                check_url(spec.notify, self.config.notify_allow)
            check_spec(spec, self._farm.config if self._farm is not None
                       else self._farm_config())
            self._check_client_tasks(caller, spec)
            name = spec.name or Path(fields["filename"]).stem
            if not isinstance(name, str):
                raise InputError(f"name must be text, not {name!r}")
        except BaseException as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(outputs, ignore_errors=True)
            if isinstance(exc, RenderFarmError) or not isinstance(exc, Exception):
                raise
            raise ProtocolError(f"submit: the spec is not valid ({exc})",
                                request_id=request.id) from exc
        row = self.store.add_job(job_id, name, spec.to_dict(), fields.get("priority", 0),
                                 caller.name)
        logger.info("job %s queued: %s, priority %d", job_id, name, row.priority)
        self._event(Event("job_queued", job_id, message=f"{name} queued"), row)
        return {"job_id": job_id, "job": row.to_dict()}

    def _check_after(self, caller: Caller, job_id: str, spec: JobSpec) -> None:
        """A job may wait only for jobs its client sees, and never, through them, for
        itself."""
        seen: set[str] = set()
        todo = list(spec.after)
        while todo:
            other = todo.pop()
            if other == job_id:
                raise InputError(f"--after makes job {job_id} wait for itself (a cycle): "
                                 "name jobs that do not wait for it")
            if other in seen:
                continue
            seen.add(other)
            row = self._own(caller, other) if other in spec.after else self.store.job(other)
            todo += list(row.spec.get("after") or [])

    def _check_require(self, spec: JobSpec) -> None:
        """Refuse at once a job no worker of the running farm can take (``--require``)."""
        from renderfarm.tags import WorkerTags, check_offers

        workers = [w for w in self.farm_workers() if w["state"] != "starting"]
        if workers:  # no farm yet: the job says so when it starts
            check_offers(spec.require, [(w["worker"], WorkerTags(frozenset(w["tags"]),
                                                                  w["props"]))
                                        for w in workers])

    def _waiting(self, row: JobRow) -> str | None:
        """Why a job waits for others (``--after``), or None when it may go on: a job
        waits until each is done (frame by frame: until each has started); one that failed
        or was cancelled holds it, which the reason says."""
        spec = row.spec
        reasons = []
        for other in spec.get("after") or []:
            try:
                state = self.store.job(other).state
            except ServiceError:
                reasons.append(f"held: job {other} it comes after no longer exists")
                continue
            if state in ("failed", "cancelled"):
                reasons.append(f"held: job {other} it comes after {state} (requeue it, or "
                               "cancel this one)")
            elif state != "done" and not (spec.get("after_frames") and state in
                                          ("running", "paused")):
                reasons.append(f"waiting for job {other} ({state})")
        return "; ".join(reasons) or None

    def _frame_gate(self, row: JobRow) -> Any:
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
                    done = self.store.job(other).state == "done"
                    frames = None if done else set(self.store.frames(other))
                    cache[other] = (now, frames)
                if frames is not None and frame not in frames:
                    return False
            return True

        return ready

    def _own(self, caller: Caller, job_id: str) -> JobRow:
        """The job, when the caller may see and act on it (its owner, or an admin); to
        anyone else it does not exist."""
        try:
            row = self.store.job(job_id)
        except ServiceError:
            row = None
        if row is None or not caller.may_see(row.client or ""):
            raise ServiceError(f"no job {job_id!r} of yours on this farm", kind="not_found")
        return row

    def _check_client_tasks(self, caller: Caller, spec: JobSpec) -> None:
        """Refuse a job that would take the client's unfinished jobs over its task limit."""
        from renderfarm.farm import estimate_tasks

        limit = self.config.max_tasks_per_client
        held = 0
        for row in self.store.jobs(["queued", "running", "paused"]):
            if row.client == caller.name:
                try:
                    held += row.tasks_total or estimate_tasks(JobSpec.from_dict(row.spec)) or 0
                except RenderFarmError:
                    continue
        new = estimate_tasks(spec) or 0
        if held + new > limit:
            raise LimitError(f"{caller.name}'s unfinished jobs hold {held} tasks and this one "
                             f"plans {new}; the farm allows {limit} per client (serve "
                             "--max-tasks-per-client): wait for jobs to finish or cancel some",
                             limit="tasks_per_client")

    def _op_status(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        row = self._own(caller, request.fields["job_id"])
        return {"job": self._public({**row.to_dict(), "outputs": self._outputs(row),
                                     "extra_outputs": {name: frame for name, (frame, _sha)
                                                       in self.store.extras(row.id).items()},
                                     "eta": self.job_eta(row.id),
                                     "waiting": self.job_waiting(row),
                                     **self._farm_status()})}

    def _op_list(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        farm = self._farm_status()
        return {"jobs": [self._public({**j.to_dict(), "eta": self.job_eta(j.id),
                                       "waiting": self.job_waiting(j), **farm})
                         for j in self.store.jobs(request.fields.get("states"))
                         if caller.may_see(j.client or "")]}

    def job_eta(self, job_id: str) -> float | None:
        """A running job's seconds left at its own pace (None: not known, not running)."""
        with self._lock:
            live = self._live.get(job_id)
        if live is None or live.stale:
            return None
        try:
            return live.handle.eta()
        except Exception:  # an estimate must never fail a request
            logger.exception("job %s: no ETA", job_id)
            return None

    def _op_cancel(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        job_id = self._own(caller, request.fields["job_id"]).id
        row = self.store.act(job_id, "cancel", error="cancelled by a client")
        handle = self._handle(job_id)
        if handle is not None:
            handle.cancel()
        else:  # it never ran (or is paused): nothing else will say it ended
            self._notify(job_id)
        self._event(Event("job_cancelled", job_id, message="cancelled by a client"), row)
        return {"job": row.to_dict()}

    def _op_pause(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        job_id = self._own(caller, request.fields["job_id"]).id
        row = self.store.act(job_id, "pause")
        handle = self._handle(job_id)
        if handle is not None:
            handle.pause()
        self._event(Event("job_paused", job_id), row)
        return {"job": row.to_dict()}

    def _op_resume(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        job_id = self._own(caller, request.fields["job_id"]).id
        row = self.store.act(job_id, "resume")
        handle = self._handle(job_id)
        if handle is not None:
            handle.resume()
            row = self.store.act(job_id, "start")
        self._event(Event("job_resumed", job_id), row)
        return {"job": row.to_dict()}

    def _op_priority(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        job_id = self._own(caller, request.fields["job_id"]).id
        priority = request.fields["priority"]
        row = self.store.set_priority(job_id, priority)
        handle = self._handle(job_id)
        if handle is not None:
            handle.set_priority(priority)
        return {"job": row.to_dict()}

    def _op_requeue(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        from renderfarm.frames import format_frames, parse_frames

        row = self._own(caller, request.fields["job_id"])
        if row.state not in protocol.FINAL_STATES:
            raise ServiceError(f"job {row.id} is {row.state}: only a job that has ended can be "
                               "requeued", kind="conflict")
        written = set(self.store.frames(row.id))
        planned = set((row.plan or {}).get("frames") or [])
        if request.fields.get("frames"):
            if not planned:  # it never started: no frame of it exists to render again
                raise InputError(f"job {row.id} never started, so it has no frames to render "
                                 "again: requeue it without frames, and it renders them all")
            wanted = set(parse_frames(request.fields["frames"],
                                      max_count=self.config.max_frames_per_job))
            unknown = sorted(wanted - planned)
            if unknown:
                raise InputError(f"frame(s) {', '.join(map(str, unknown[:10]))} are not "
                                 f"frames of job {row.id} ({min(planned)}-{max(planned)})")
            again = wanted
        else:  # the frames it did not write
            again = planned - written if planned else set()
            if planned and not again:
                raise InputError(f"job {row.id} has written every frame; name the ones to "
                                 "render again with --frames")
        self.store.forget_frames(row.id, again)
        if row.plan is not None:  # chosen frames: only those render; else all not written
            self.store.set_plan(row.id, {**row.plan, "only": sorted(again) if
                                         request.fields.get("frames") else None})
        row = self.store.act(row.id, "again")
        with self._lock:
            self._notified.discard(row.id)
        message = (f"requeued: frame(s) {format_frames(again)} render again"
                   if again else "requeued")
        self._event(Event("job_queued", row.id, message=message), row)
        return {"job": self._public(row.to_dict()), "frames": sorted(again)}

    def _op_workers(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        return {"workers": self.workers_for(caller)}

    def _op_worker(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        if not caller.admin:
            raise ServiceError("only the farm's administrators (keys in --admins) take workers "
                               "out or put them back", kind="refused")
        fields = request.fields
        reason = fields.get("reason") or f"disabled by {caller.name}"
        worker = self.farm.set_worker(fields["worker_id"], fields["enabled"], reason)
        logger.info("worker %s %s by %s", worker["worker"],
                    "enabled" if fields["enabled"] else "disabled", caller.name)
        return {"worker": worker}

    def _op_fetch(self, request: protocol.Request,
                  caller: Caller) -> tuple[dict[str, Any], bytes]:
        job_id, frame = request.fields["job_id"], request.fields["frame"]
        row = self._own(caller, job_id)
        extra = request.fields.get("name")
        if extra is not None:  # a file a File Output node wrote
            extras = self.store.extras(job_id)
            if extra not in extras or extras[extra][0] != frame:
                raise ServiceError(f"job {job_id} has no file {extra!r} of frame {frame} "
                                   f"(its File Output files: {len(extras)})", kind="not_found")
            name, digest = extra, extras[extra][1]
        else:
            frames = self.store.frames(job_id)
            if frame not in frames:
                raise ServiceError(f"job {job_id} has no finished frame {frame} (finished: "
                                   f"{sorted(frames) or 'none'})", kind="not_found")
            name, digest = Path(frames[frame]).name, self.store.hashes(job_id).get(frame)
        key = self._output_key(job_id, name)
        size = self.storage.size(key)
        limit = self.config.max_message - 4096
        length = min(request.fields["length"] or limit, limit)
        data = self.storage.read(key, request.fields["offset"], length)
        return ({"job_id": row.id, "frame": frame, "name": name,
                 "size": size, "offset": request.fields["offset"], "sha256": digest}, data)

    def _op_report(self, request: protocol.Request,
                   caller: Caller) -> dict[str, Any] | tuple[dict[str, Any], bytes]:
        row = self._own(caller, request.fields["job_id"])
        report = self.job_report(row)
        if not request.fields.get("html"):
            return {"report": report}
        from renderfarm.report import render_html

        page = render_html(report, self._thumbnails(row)).encode()
        return {"report": report}, page

    def job_report(self, row: JobRow) -> dict[str, Any]:
        """A job's report: every run's calls (a resumed job has several), its outputs and
        their SHA-256 as recorded when written, its estimate, priced by this farm."""
        from renderfarm.report import build_report

        with self._lock:
            live = self._live.get(row.id)
            if live is not None and not live.stale and not live.accounted:
                self.store.set_account(row.id, live.run_id, _without_logs(live.handle))
            runs = self.store.accounts(row.id)
        merged: dict[str, Any] = {"job_id": row.id, "tasks": [], "checks": [], "suspects": [],
                                  "wall_seconds": 0.0, "warnings": list(row.warnings)}
        for run in runs:
            merged["tasks"] += run.get("tasks") or []
            merged["checks"] += run.get("checks") or []
            merged["suspects"] = sorted(set(merged["suspects"]) | set(run.get("suspects")
                                                                     or []))
            merged["wall_seconds"] += float(run.get("wall_seconds") or 0.0)
            for key in ("device", "worker_cpus", "frames", "tiles", "verify", "workers",
                        "estimate"):
                if run.get(key):
                    merged[key] = run[key]
        frames = self.store.frames(row.id)
        merged["outputs"] = {str(f): p for f, p in frames.items()}
        merged["hashes"] = {str(f): h for f, h in self.store.hashes(row.id).items()}
        report = build_report(merged, client=row.client or "", name=row.name,
                              state=row.state, prices=self.config.prices,
                              output_names={f: Path(p).name for f, p in frames.items()})
        report["warnings"] = [self._scrub(w) for w in report["warnings"]]
        return report

    def report_page(self, caller: Caller, job_id: str, style: str | None = None,
                    header: str = "") -> bytes:
        """A job's report as an HTML page in the look ``style`` (the web app's), with
        ``header`` above it (see :func:`renderfarm.report.render_html`).

        Raises:
            ServiceError: ``not_found``: no such job, or another client's.
        """
        from renderfarm.report import render_html

        row = self._own(caller, job_id)
        return render_html(self.job_report(row), self._thumbnails(row), style=style,
                           header=header).encode()

    def _thumbnails(self, row: JobRow, most: int = 500) -> dict[int, bytes]:
        """Small PNGs of a job's frames for the report's contact sheet."""
        out: dict[int, bytes] = {}
        for frame, path in list(self.store.frames(row.id).items())[:most]:
            try:
                image = self._thumbnail(row.id, frame, Path(path))
            except Exception as exc:  # a frame that cannot be read is shown without image
                logger.info("no thumbnail of %s: %s", path, exc)
                continue
            if image is not None:
                out[frame] = image
        return out

    # -- files -------------------------------------------------------------------------------
    def _job_dir(self, job_id: str) -> Path:
        """The job's folder in the state folder: its .blend, ``pieces/``, ``previews/``."""
        return self.state_dir / "jobs" / job_id

    def _output_key(self, job_id: str, name: str) -> str:
        return f"jobs/{job_id}/{name}"

    def _output_dir(self, job_id: str) -> Path:
        local = self.storage.local_path(self._output_key(job_id, "x"))
        return local.parent if local is not None else self.state_dir / "outputs" / job_id

    def _outputs(self, row: JobRow) -> dict[str, str]:
        """The frames a client fetches: those written in the job's output folder (a video's
        frames, unless kept, are not)."""
        folder = self._output_dir(row.id)
        return {str(frame): Path(path).name for frame, path in self.store.frames(row.id).items()
                if Path(path).parent == folder}

    def _keep_output(self, job_id: str, frame: int, path: Path, digest: str) -> None:
        """A file written for a job beside its frames (a File Output node's, a view's, its
        video), kept in the storage under its path in the job's output folder."""
        try:
            name = path.relative_to(self._output_dir(job_id)).as_posix()  # the farm's path
        except ValueError:  # never a file outside the job's folder
            logger.error("job %s: %s is outside the job's output folder; not kept", job_id,
                         path)
            return
        key = self._output_key(job_id, name)
        if self.storage.local_path(key) != path:
            self.storage.put_file(key, path)
        self.store.add_extra(job_id, frame, name, digest)

    # -- scheduling --------------------------------------------------------------------------
    def _schedule(self) -> None:
        with self._lock:
            running = len(self._live)
        if running >= self.config.max_running:
            return
        if not self._farm_lock.acquire(blocking=False):
            return  # the farm is being replaced: jobs start once it is back
        try:
            if self._farm is None and self.farm_state != "ok":
                return
            ready = [job for job in self.store.jobs(["queued"]) if self._waiting(job) is None]
            for job in ready[:self.config.max_running - running]:
                self._start(job)
        finally:
            self._farm_lock.release()

    def _start(self, job: JobRow) -> None:
        from renderfarm.handle import Resume, ResumePiece

        spec = JobSpec.from_dict(job.spec)
        resume = None
        if job.plan:  # it ran before: plan it the same way, keep what it finished
            spec = replace(spec, tiles=tuple(job.plan["tiles"]), chunks=job.plan["chunks"])
            only = job.plan.get("only")
            resume = Resume(
                pieces=tuple(ResumePiece(p["frame"], p["chunk"], tuple(p["tiles"]), p["tile"],
                                         p["path"]) for p in self.store.pieces(job.id)),
                frames=self.store.frames(job.id),
                skip=frozenset(set(job.plan.get("frames") or []) - set(only))
                if only else frozenset())
        row = self.store.act(job.id, "start")
        workdir = self._job_dir(job.id) / "pieces"
        try:
            handle = self.farm.submit(spec, job.priority, job_id=job.id, workdir=workdir,
                                      resume=resume, on_piece=self._keep_for_preview(job.id),
                                      on_result=self._keep_log(job.id),
                                      frame_gate=self._frame_gate(job),
                                      outputs_folder=self._output_dir(job.id))
        except RenderFarmError as exc:
            row = self.store.act(job.id, "fail", error=exc.one_line())
            self._event(Event("job_failed", job.id, message=exc.one_line()), row)
            self._notify(job.id)
            return
        live = _Live(handle, owner=job.client or LOCAL)
        with self._lock:
            self._live[job.id] = live
        threading.Thread(target=self._watch, args=(job.id, live), daemon=True,
                         name=f"renderfarm-watch-{job.id}").start()

    def _notify(self, job_id: str) -> None:
        """Send an ended job's summary to its webhook and the farm's (once each, on a
        thread: a slow webhook holds nothing up)."""
        from renderfarm.notify import send_later, summary

        with self._lock:
            if job_id in self._notified:
                return
            self._notified.add(job_id)
        row = self.store.job(job_id)
        urls = [u for u in dict.fromkeys([row.spec.get("notify"), self.config.notify]) if u]
        if not urls:
            return
        try:
            report = self.job_report(row)
        except Exception:  # the summary goes out even without its report
            logger.exception("job %s: no report for its notification", job_id)
            report = None
        payload = summary(self._public(row.to_dict()), report)
        for url in urls:
            send_later(url, payload)

    def _keep_log(self, job_id: str) -> Any:
        def keep(result: Any) -> None:
            self.store.add_log(job_id, result.to_dict())

        return keep

    def _op_log(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        row = self._own(caller, request.fields["job_id"])
        logs = self.store.logs(row.id, request.fields.get("frame"),
                               bool(request.fields.get("failed")))
        budget = self.config.max_message // 2  # the newest logs that fit in one reply
        kept: list[dict[str, Any]] = []
        for entry in reversed(logs):
            entry["log"] = self._scrub(entry["log"])
            budget -= len(entry["log"]) + 256
            if budget < 0:
                break
            kept.append(entry)
        return {"logs": kept[::-1], "left_out": len(logs) - len(kept)}

    def _keep_for_preview(self, job_id: str) -> Any:
        folder = self._job_dir(job_id) / "previews"

        def keep(task: Task, path: Path) -> None:
            folder.mkdir(parents=True, exist_ok=True)
            _link_or_copy(path, folder / path.name)

        return keep

    # -- a job's events (one thread per running job) ----------------------------------------
    def _watch(self, job_id: str, live: _Live) -> None:
        handle = live.handle
        for event in handle.events():
            if live.stale:  # its farm was lost: the job runs again from the database
                continue
            try:
                self._record(job_id, live, event)
            except Exception:  # a bookkeeping error must not stop the job's events
                logger.exception("job %s: cannot record %s", job_id, event.kind)
        self._save_account(job_id, live, final=True)
        if live.stale:
            return
        image = live.latest_png()
        if image is not None:
            (self._job_dir(job_id) / "preview.png").write_bytes(image)
        with self._lock:
            if self._live.get(job_id) is live:
                del self._live[job_id]
        shutil.rmtree(self._job_dir(job_id) / "previews", ignore_errors=True)
        row = self.store.job(job_id)
        if row.state in protocol.FINAL_STATES:
            shutil.rmtree(self._job_dir(job_id) / "pieces", ignore_errors=True)

    def _save_account(self, job_id: str, live: _Live, final: bool = False) -> None:
        """Keep what the job's run has cost so far (every few seconds, and at its end), so
        its report counts this run even if the service is killed."""
        now = time.monotonic()
        if not final and now - live.saved < ACCOUNT_EVERY:
            return
        live.saved = now
        try:
            with self._lock:
                self.store.set_account(job_id, live.run_id, _without_logs(live.handle))
                live.accounted = final
        except Exception:
            logger.exception("job %s: cannot record its accounting", job_id)

    def _record(self, job_id: str, live: _Live, event: Event) -> None:
        self._save_account(job_id, live)
        store = self.store
        if self._stop.is_set() and event.kind in ("job_cancelled", "job_failed"):
            return  # the service is stopping: the job resumes on restart
        if event.kind == "job_failed" and self._cluster_lost(live, event):
            return  # Ray failed under it: the watchdog requeues it, it resumes
        if event.tasks_total:
            store.set_progress(job_id, event.tasks_done, event.tasks_total, event.frames_done,
                               event.frames_total)
        data = event.data
        if event.kind == "job_started":
            canvas = data.get("canvas")
            live.canvas = Rect(*canvas) if canvas else None
            live.display = dict(data.get("display") or {})
            before = store.job(job_id).plan or {}
            store.set_plan(job_id, {**{k: data.get(k) for k in
                                       ("tiles", "chunks", "size", "canvas", "device",
                                        "workers", "overscan", "frames")},
                                    "only": before.get("only")})
        elif event.kind == "task_done":
            piece = data["piece"]
            path = Path(piece["path"])
            record = (job_id, path.stem, event.frame or 0, piece["chunk"], data["tiles"],
                      piece["tile"], str(path), data.get("worker"),
                      data.get("render_seconds"))
            if data.get("checked"):  # kept for a restart only once its check has agreed
                live.held[(event.frame or 0, piece["chunk"], tuple(data["tiles"]))] = (
                    data.get("worker"), record)
            else:
                store.add_piece(*record)
            self._preview(job_id, live, event.frame or 0, Tile.from_dict(piece["tile"]),
                          self._job_dir(job_id) / "previews" / path.name)
        elif event.kind == "task_checked":
            held = live.held.pop((event.frame or 0, data.get("chunk", 0),
                                  tuple(data.get("tiles") or ())), None)
            if held is not None and data.get("outcome") in ("agreed", "settled", "unchecked") \
                    and held[0] not in (data.get("suspects") or []):
                store.add_piece(*held[1])
            for worker in data.get("suspects") or []:  # nothing of it survives a restart
                store.drop_worker(job_id, worker, data.get("reopened") or [])
                live.held = {k: v for k, v in live.held.items() if v[0] != worker}
                logger.info("job %s: worker %s is suspect; frames %s are merged again",
                            job_id, worker, data.get("reopened"))
        elif event.kind == "frame_merged":
            path = Path(data["path"])
            key = self._output_key(job_id, path.name)
            if not data.get("intermediate") and self.storage.local_path(key) != path:
                self.storage.put_file(key, path)
            store.add_frame(job_id, event.frame or 0, str(path))
            if data.get("sha256"):
                store.set_hash(job_id, event.frame or 0, data["sha256"])
            for extra, digest in (data.get("extras") or {}).items():
                self._keep_output(job_id, event.frame or 0, Path(extra), digest)
        elif event.kind == "output_written":  # a video
            self._keep_output(job_id, event.frame or 0, Path(data["path"]), data["sha256"])
        elif event.kind == "warning":
            store.add_warning(job_id, event.message)
        elif event.kind in ("job_done", "job_failed", "job_cancelled"):
            action = {"job_done": "done", "job_failed": "fail",
                      "job_cancelled": "cancelled"}[event.kind]
            try:
                store.act(job_id, action, error=event.message or None)
            except ServiceError:
                pass  # already cancelled by a request
            self._save_account(job_id, live, final=True)
            self._notify(job_id)
        self._event(event, store.job(job_id))

    def _cluster_lost(self, live: _Live, event: Event) -> bool:
        """Whether a job failed because the Ray cluster failed under it: then it is not
        failed but left to the watchdog, which requeues it and recovers the farm."""
        if event.data.get("error") != "ClusterLostError" or not self._owns_farm:
            return False
        live.stale = True
        farm = self._farm
        if farm is not None and farm.lost is None:
            farm.mark_lost(event.message or "Ray failed")  # the watchdog sees it and recovers
        return True

    def _preview(self, job_id: str, live: _Live, frame: int, tile: Tile, path: Path) -> None:
        from renderfarm.server.preview import tile_preview

        if live.canvas is None or not path.exists():
            return
        try:
            preview = tile_preview(path, tile, live.canvas, display=live.display)
        except RenderFarmError as exc:
            logger.info("no preview for %s: %s", path.name, exc.one_line())
            return
        finally:
            path.unlink(missing_ok=True)
        if preview is None:
            return
        self._keep_frame_preview(live, frame, preview)
        header = {"job_id": job_id, "frame": frame, "tile": tile.index, **preview.header()}
        self._outbox.put([protocol.event_topic("preview", live.owner, job_id),
                          protocol.encode(header),
                          zlib.compress(preview.rgba, 6)])

    def _keep_frame_preview(self, live: _Live, frame: int, preview: Any) -> None:
        import numpy as np

        canvas = live.previews.get(frame)
        if canvas is None:
            canvas = np.zeros((preview.frame_height, preview.frame_width, 4), np.uint8)
            live.previews[frame] = canvas
            for old in sorted(live.previews)[:-4]:  # frames in flight; the last one is shown
                del live.previews[old]
        pixels = np.frombuffer(preview.rgba, np.uint8).reshape(preview.height, preview.width, 4)
        canvas[preview.y:preview.y + preview.height, preview.x:preview.x + preview.width] = \
            pixels

    def _event(self, event: Event, row: JobRow) -> None:
        message = {**event.to_dict(), "state": row.state, "elapsed": row.to_dict()["elapsed"],
                   "eta": self.job_eta(event.job_id) if row.state == "running" else None}
        if message.get("message"):
            message["message"] = self._scrub(message["message"])
        if message.get("data"):  # files by their names in the job's folder, never the farm's
            message["data"] = self._job_relative(event.job_id, message["data"])
        if not event.tasks_total:
            message.update(tasks_done=row.tasks_done, tasks_total=row.tasks_total,
                           frames_done=row.frames_done, frames_total=row.frames_total)
        self._outbox.put([protocol.event_topic("job", row.client or LOCAL, event.job_id),
                          protocol.encode(message)])
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(row.client or LOCAL, message)
            except Exception:  # a listener (a closed page) never stops the job's events
                logger.exception("an event listener failed")

    def _job_relative(self, job_id: str, value: Any) -> Any:
        """``value`` (an event's data) with every path of the farm's disk replaced by its
        name in the job's output folder (``passes/depth_0001.exr``), or by its file name
        for a file elsewhere (a piece); other text is scrubbed of the farm's paths."""
        if isinstance(value, dict):
            return {k: self._job_relative(job_id, v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._job_relative(job_id, v) for v in value]
        if not isinstance(value, str) or not os.path.isabs(value):
            return self._scrub(value) if isinstance(value, str) else value
        try:
            return Path(value).relative_to(self._output_dir(job_id)).as_posix()
        except ValueError:
            return Path(value).name

    def workers_for(self, caller: Caller) -> list[dict[str, Any]]:
        """The farm's workers as ``caller`` may see them: what a worker renders for another
        client's job is "busy", without the job (an admin sees everything)."""
        workers = self.farm_workers()
        if caller.admin:
            return workers
        mine = {row.id for row in self.jobs_for(caller)}
        shown = []
        for worker in workers:
            current = worker.get("current")
            worker = {**worker, "loaded": None}
            if current and current.split(" ", 1)[0] not in mine:
                worker["current"] = "another client's job"
            shown.append(worker)
        return shown

    # -- status page -------------------------------------------------------------------------
    def preview_png(self, job_id: str) -> bytes | None:
        """The latest frame's preview of a job as PNG (kept on disk once the job ends)."""
        with self._lock:
            live = self._live.get(job_id)
        image = live.latest_png() if live is not None else None
        if image is not None:
            return image
        path = self._job_dir(job_id) / "preview.png"
        return path.read_bytes() if path.is_file() else None

    def jobs_for(self, caller: Caller) -> list[JobRow]:
        """The jobs ``caller`` may see (its own; an admin's: all), as ``list`` gives them."""
        return [row for row in self.store.jobs() if caller.may_see(row.client or "")]

    def job_for(self, caller: Caller, job_id: str) -> JobRow:
        """A job ``caller`` may see.

        Raises:
            ServiceError: ``not_found`` when there is no such job or it is another client's.
        """
        return self._own(caller, job_id)

    def job_waiting(self, row: JobRow) -> str | None:
        """Why a queued or running job waits for others (``--after``), or None."""
        return self._waiting(row) if row.state in ("queued", "running") else None

    def farm_workers(self) -> list[dict[str, Any]]:
        """The farm's workers (none before the farm has started)."""
        return self._farm.workers() if self._farm is not None else []

    def scrub(self, text: str) -> str:
        """``text`` without the farm's own paths."""
        return self._scrub(text)

    def frame_thumbnail(self, caller: Caller, job_id: str, frame: int) -> bytes | None:
        """A small PNG of a written frame of a job ``caller`` may see (kept once made).

        Raises:
            ServiceError: ``not_found``: no such job, or another client's.
        """
        self._own(caller, job_id)
        path = self.store.frames(job_id).get(frame)
        return self._thumbnail(job_id, frame, Path(path)) if path is not None else None

    def _thumbnail(self, job_id: str, frame: int, path: Path) -> bytes | None:
        """A frame's thumbnail, made once per content of its file (None: no file)."""
        from renderfarm.merge import thumbnail

        if not path.is_file():
            return None
        digest = self.store.hashes(job_id).get(frame, "")[:16]
        cached = self._job_dir(job_id) / "thumbs" / f"{frame}-{digest}.png"
        if cached.is_file():
            return cached.read_bytes()
        image = thumbnail(Path(path))
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(image)
        return image

    def public_job(self, row: JobRow) -> dict[str, Any]:
        """A job as clients see it (its error and warnings without the farm's paths)."""
        return self._public(row.to_dict())

    def _start_http(self, address: str) -> None:
        from renderfarm.server.web import start_status_page

        self._http = start_status_page(self, address)
        self.http_address = self._http.url
        logger.info("status page on %s", self.http_address)


def _without_logs(handle: Any) -> dict[str, Any]:
    """A running job's snapshot for its accounting, without Blender's output (the logs
    table keeps that)."""
    snapshot = handle.snapshot()
    for task in snapshot.get("tasks", []):
        task.pop("log", None)
    return snapshot


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (a copy across file systems)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


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
