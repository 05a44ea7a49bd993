"""How the farm service runs: :class:`ServiceConfig`, what ``renderfarm serve``'s options
become, read by every part of the service."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from renderfarm.bundle import MAX_BUNDLE_BYTES
from renderfarm.server import protocol
from renderfarm.server.transport import KeyPair


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
        autoscale, max_workers, wait_for_workers, cpus_per_worker, pieces: the farm's
            (:class:`~renderfarm.farm.FarmConfig`): ask Ray's autoscaler for the workers the
            queue can use; where finished pieces are kept (the head or the nodes).
        store_node_pieces: with pieces on the nodes, each node also writes its pieces into
            the state folder when it sees it, so that a restart renders only what was not
            finished (:attr:`renderfarm.farm.FarmConfig.store_node_pieces`).
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
    autoscale: bool = False
    max_workers: int | None = None
    wait_for_workers: float = 600.0
    cpus_per_worker: float | None = None
    pieces: str = "auto"
    store_node_pieces: bool = True
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
