"""``FarmClient``: talk to ``renderfarm serve`` over ZeroMQ.

Needs only pyzmq: no Ray, no OpenImageIO, no bpy (the Blender add-on uses it). One client is
for one thread (ZeroMQ sockets are not thread-safe).

    from renderfarm.client import FarmClient

    with FarmClient("tcp://farm:5555", server_key="farm.key", client_key="me.key_secret") as c:
        job_id = c.submit("shot.blend", {"frames": "1-10", "tiles": [2, 2],
                                         "output": "shot_####.exr"})
        for event in c.events(job_id):
            print(event["kind"], event["tasks_done"], "/", event["tasks_total"])
        c.fetch_outputs(job_id, "out/")
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from renderfarm.errors import InputError, OutputMismatchError, ServiceError
from renderfarm.server import wire
from renderfarm.server.transport import KeyPair, read_key, secure_client

logger = logging.getLogger(__name__)

#: seconds to wait for a reply before calling the farm unreachable
DEFAULT_TIMEOUT = 15.0


_MONITORS = itertools.count()
#: the largest preview a client unpacks (a 512 px RGBA frame is 1 MiB)
MAX_PREVIEW_BYTES = 4 * 1024 * 1024


def plain_name(name: object) -> str:
    """A file name the farm sent, checked: a plain name, never a path (a farm that names
    ``../x`` or ``/etc/x`` could otherwise make a client write anywhere).

    Raises:
        ServiceError: the name is not a plain file name.
    """
    text = str(name) if isinstance(name, str) else ""
    if (not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text
            or ":" in text or len(text) > 255 or text.startswith(".")):
        raise ServiceError(f"the farm sent the file name {str(name)[:80]!r}, which is not a "
                           "plain file name; nothing was written", kind="failed")
    return text


def _inflate(data: bytes, limit: int) -> bytes | None:
    """``zlib`` data unpacked, or None when it is damaged or unpacks past ``limit``."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit)
    except zlib.error:
        return None
    if inflater.unconsumed_tail:
        return None
    return out


def _check_tiles(blend: str, spec: dict[str, Any]) -> None:
    """Refuse a tile grid larger than the scene's frames before anything is bundled or sent
    (what the file tells without Blender; the farm checks again with Blender's numbers).

    Raises:
        SceneError: more tile columns or rows than the frame has pixels.
    """
    from renderfarm.bundle import frame_size
    from renderfarm.job import AUTO_TILES
    from renderfarm.planner import check_grid

    tiles = spec.get("tiles")
    if not tiles or tuple(tiles) == AUTO_TILES or len(tiles) != 2:
        return
    percentage = spec.get("percentage")
    size = frame_size(blend, spec.get("scene"),
                      percentage if isinstance(percentage, int) else None)
    if size is not None and all(isinstance(t, int) for t in tiles):
        check_grid(int(tiles[0]), int(tiles[1]), size[0], size[1], path=blend)


class FarmClient:
    """A connection to a farm service.

    Args:
        address: the service's request address (``tcp://host:5555``).
        server_key: the service's public key (Z85 text or a ``.key`` file); None for a
            service on loopback without keys.
        client_key: this client's key pair: a ``.key_secret`` file or a :class:`KeyPair`.
        timeout: seconds to wait for each reply.

    Raises:
        InputError: a key is malformed, or only one of the two keys is given.
    """

    def __init__(self, address: str, server_key: str | None = None,
                 client_key: str | KeyPair | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        import zmq

        self.address = address
        self.timeout = timeout
        self._server_key = read_key(server_key).public if server_key else None
        if isinstance(client_key, str):
            client_key = read_key(client_key, secret=True)
        self._client_key = client_key
        self._context = zmq.Context.instance()
        self._ids = itertools.count(1)
        #: what the last :meth:`submit` sent: ``bundle_files``, ``bundle_bytes``,
        #: ``sent_files``, ``sent_bytes``
        self.last_transfer: dict[str, int] = {}
        self._sock: Any = None
        self._monitor: Any = None
        self._sub: Any = None
        #: events that arrived while a subscription was being confirmed
        self._early: list[dict[str, Any]] = []
        self._hello: dict[str, Any] | None = None
        self._connect()

    # -- connection --------------------------------------------------------------------------
    def _connect(self) -> None:
        import zmq

        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        secure_client(sock, self._server_key, self._client_key)
        # a unique monitor address: pyzmq's default is named after the socket's file
        # descriptor, and a closed socket's monitor can still hold that name when the next
        # socket gets the same descriptor ("Address already in use", seen once under load)
        self._monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
            addr=f"inproc://renderfarm-monitor-{os.getpid()}-{next(_MONITORS)}")
        sock.connect(self.address)
        self._sock = sock

    def close(self) -> None:
        """Close the sockets."""
        self._disconnect()
        if self._sub is not None:
            self._sub.close(linger=0)
        self._sub = None

    def __enter__(self) -> FarmClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _refused(self) -> str | None:
        """Why the service refused our handshake, if it did."""
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        reason = None
        while self._monitor is not None and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                reason = ("the farm refused this client's key: give the farm's admin this "
                          "client's public key (for its --clients folder), and check the "
                          "server key in your settings")
            elif reason is None:
                reason = ("the secure handshake with the farm failed: the server's public key "
                          "is wrong, or the farm runs without keys")
        return reason

    def request(self, op: str, data: bytes | None = None,
                **fields: Any) -> tuple[dict[str, Any], bytes | None]:
        """Send one request and wait for its reply.

        Raises:
            ServiceError: the service replied with an error (``kind`` says which), or did
                not reply in time (``unreachable``).
        """
        import zmq

        if self._sock is None:
            self._connect()
        request_id = next(self._ids)
        frames = [wire.request(op, request_id, **fields)]
        if data is not None:
            frames.append(data)
        self._sock.send_multipart(frames, copy=False)
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(min(left, 0.2) * 1000)):
                refused = self._refused()
                if refused:  # stop retrying the handshake: it would fail again and again
                    self._disconnect()
                    raise ServiceError(refused, kind="refused_key")
                if left <= 0:
                    self._disconnect()
                    raise ServiceError(
                        f"no reply from the farm at {self.address} in {self.timeout:.0f} s: "
                        "is `renderfarm serve` running there, and are the address and keys "
                        "right?", kind="unreachable")
                continue
            reply, blob = wire.parse_reply(self._sock.recv_multipart(zmq.NOBLOCK))
            if reply.get("id") not in (request_id, None):
                continue  # a late reply to a request that timed out
            if not reply.get("ok"):
                error = reply.get("error") or {}
                raise ServiceError(error.get("message", "the farm refused the request"),
                                   kind=error.get("type", "refused"))
            return reply, blob

    def _disconnect(self) -> None:
        """Drop the request socket (the next request opens a fresh one: a DEALER would
        otherwise keep unsent requests queued, or retry a refused handshake forever)."""
        if self._monitor is not None:
            self._monitor.close(linger=0)
        if self._sock is not None:
            self._sock.close(linger=0)  # stops its monitor too
        self._sock = self._monitor = None

    # -- operations --------------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        """The service's version, limits and event port."""
        if self._hello is None:
            self._hello = self.request("hello")[0]
        return self._hello

    def web_token(self) -> str:
        """This client's token for the farm's status page (log in with it, or send it as
        ``Authorization: Bearer TOKEN``); it stops working when the client's key is removed
        from the farm.

        Raises:
            ServiceError: the farm runs without keys (its page needs no login), or refused.
        """
        return str(self.request("web_token")[0]["token"])

    def upload(self, path: str | os.PathLike[str],
               progress: Callable[[int, int], None] | None = None,
               sha256: str | None = None) -> str:
        """Upload a file in chunks; returns its SHA-256 (the service keeps each file once).

        Args:
            path: the file.
            progress: called with (bytes sent, total).
            sha256: the content the caller expects; a file that changed since is refused.

        Raises:
            InputError: the file cannot be read, or no longer has the expected content.
        """
        path = Path(path)
        try:
            total = path.stat().st_size
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise InputError(f"cannot read the file to upload ({exc.strerror})",
                             path=str(path)) from exc
        sha = digest.hexdigest()
        if sha256 is not None and sha != sha256:
            raise InputError("the file changed while the job was being sent; submit again",
                             path=str(path))
        chunk = int(self.hello().get("chunk") or wire.CHUNK)
        offset = 0
        with open(path, "rb") as handle:
            while True:
                data = handle.read(chunk)
                reply, _ = self.request("upload", data, sha256=sha, offset=offset, total=total)
                offset = reply["received"]
                if progress is not None:
                    progress(offset, total)
                if reply["complete"]:
                    return sha
                if not data:
                    raise ServiceError("the upload stopped before the end of the file",
                                       kind="bad_upload")
                handle.seek(offset)

    def submit(self, blend: str | os.PathLike[str], spec: dict[str, Any] | None = None,
               priority: int = 0, filename: str | None = None,
               progress: Callable[[int, int], None] | None = None,
               project: str | os.PathLike[str] | None = None) -> str:
        """Bundle a ``.blend`` with every file it depends on, upload what the farm lacks and
        queue a job; returns the job id. When it returns, the files may change or move.

        Args:
            blend: the file.
            spec: job fields (``frames``, ``tiles``, ``samples``, ``device``, ``output`` — its
                file name only: outputs stay on the farm until fetched —, ``denoise``,
                ``allow_missing``, ...).
            priority: higher first.
            filename: the name the farm shows (default: the file's).
            progress: called with (bytes sent, total) during the upload.
            project: the folder relative paths are kept from (default: the file's folder).

        Raises:
            MissingFilesError: the scene needs files that cannot be found and ``spec`` does
                not set ``allow_missing``.
            BundleError: the dependencies cannot be read.
            ServiceError: the farm refused the job.
        """
        from renderfarm.bundle import make_bundle
        from renderfarm.errors import missing_error

        spec = dict(spec or {})
        _check_tiles(str(blend), spec)
        spec.setdefault("origin", os.path.abspath(blend))  # the File its outputs name
        with tempfile.TemporaryDirectory(prefix="renderfarm-bundle-") as folder:
            manifest = make_bundle(blend, folder, project)
            if manifest.missing and spec.get("allow_missing") is not True:
                raise missing_error(manifest.missing, str(blend))
            hashes = manifest.hashes()
            lacking: set[str] = set()
            step = wire.MAX_HASHES
            for start in range(0, len(hashes), step):
                reply = self.request("have", hashes=hashes[start:start + step])[0]
                lacking.update(reply["missing"])
            sources = {f.sha256: f for f in manifest.files if f.sha256 in lacking}
            total = sum(f.size for f in sources.values())
            done = 0
            for entry in sources.values():
                assert entry.source is not None
                self.upload(entry.source, None if progress is None else (
                    lambda sent, _size, base=done: progress(base + sent, total)),
                    sha256=entry.sha256)
                done += entry.size
        self.last_transfer = {"bundle_files": len(manifest.files),
                              "bundle_bytes": manifest.total_bytes,
                              "sent_files": len(sources), "sent_bytes": total}
        reply, _ = self.request("submit", spec=spec, bundle=manifest.to_dict(),
                                filename=filename or Path(blend).name, priority=priority)
        return str(reply["job_id"])

    def status(self, job_id: str) -> dict[str, Any]:
        """A job's state, progress, warnings and finished frames."""
        return self.request("status", job_id=job_id)[0]["job"]

    def list(self, states: list[str] | None = None) -> list[dict[str, Any]]:
        """Jobs in queue order (optionally only those in ``states``)."""
        fields = {"states": states} if states else {}
        return self.request("list", **fields)[0]["jobs"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job; frames already finished are kept."""
        return self.request("cancel", job_id=job_id)[0]["job"]

    def pause(self, job_id: str) -> dict[str, Any]:
        """Start no more tasks of a job until :meth:`resume`."""
        return self.request("pause", job_id=job_id)[0]["job"]

    def resume(self, job_id: str) -> dict[str, Any]:
        """Resume a paused job."""
        return self.request("resume", job_id=job_id)[0]["job"]

    def set_priority(self, job_id: str, priority: int) -> dict[str, Any]:
        """Change a job's priority."""
        return self.request("priority", job_id=job_id, priority=priority)[0]["job"]

    def fetch(self, job_id: str, frame: int, folder: str | os.PathLike[str],
              name: str | None = None) -> Path:
        """Download a finished frame into ``folder``; returns its path. With ``name`` (one
        of the status' ``extra_outputs``), the file a File Output node wrote for the frame,
        at that path inside ``folder``.

        Raises:
            ServiceError: the frame (or file) is not finished (``not_found``).
        """
        folder = Path(folder)
        if name is not None:
            if wire.check_relative_name(name) is not None:
                raise ServiceError(f"the farm named a file {name!r} outside the output folder",
                                   kind="failed")
            folder = folder.joinpath(*Path(name).parent.parts)
        folder.mkdir(parents=True, exist_ok=True)
        offset, size, expected = 0, None, None
        tmp = folder / f".{job_id}-{frame}.part"
        digest = hashlib.sha256()
        extra = {} if name is None else {"name": name}
        try:
            with open(tmp, "wb") as handle:
                while size is None or offset < size:
                    reply, data = self.request("fetch", job_id=job_id, frame=frame,
                                               offset=offset, length=0, **extra)
                    size = reply["size"]
                    name = name if extra else reply["name"]
                    expected = reply.get("sha256")
                    handle.write(data or b"")
                    digest.update(data or b"")
                    offset += len(data or b"")
                    if not data and offset < size:
                        raise ServiceError("the farm sent an empty chunk", kind="failed")
            if expected and digest.hexdigest() != expected:
                raise OutputMismatchError(
                    f"frame {frame} of job {job_id} ({plain_name(name)}) arrived with SHA-256 "
                    f"{digest.hexdigest()[:16]}… but the farm wrote {expected[:16]}…: the "
                    "farm's copy was changed or damaged after the render; nothing was "
                    "written (render the frame again: renderfarm requeue JOB --frames N)")
        except BaseException:  # nothing half-downloaded or damaged is left in the folder
            tmp.unlink(missing_ok=True)
            raise
        target = folder / plain_name(Path(name).name)
        os.replace(tmp, target)
        return target

    def log(self, job_id: str, frame: int | None = None,
            failed: bool = False) -> list[dict[str, Any]]:
        """What Blender printed for a job's tasks, oldest first: each call's ``frame``,
        ``tile``, ``kind``, ``attempt``, ``worker``, ``ok``, ``error`` and ``log`` (the tail of
        a task that succeeded, all of a failed one's)."""
        fields: dict[str, Any] = {"job_id": job_id, "failed": failed}
        if frame is not None:
            fields["frame"] = frame
        return self.request("log", **fields)[0]["logs"]

    def report(self, job_id: str) -> dict[str, Any]:
        """A job's report (see :mod:`renderfarm.report`)."""
        return self.request("report", job_id=job_id)[0]["report"]

    def report_html(self, job_id: str) -> tuple[dict[str, Any], bytes]:
        """A job's report and its HTML page (timeline, contact sheet)."""
        reply, page = self.request("report", job_id=job_id, html=True)
        return reply["report"], page or b""

    def fetch_outputs(self, job_id: str, folder: str | os.PathLike[str],
                      extras_folder: str | os.PathLike[str] | None = None) -> dict[int, Path]:
        """Download every finished frame of a job into ``folder``, and the files its File
        Output nodes wrote at their paths inside ``extras_folder`` (default ``folder``:
        ``passes/depth_0001.exr``); returns the frames' files."""
        status = self.status(job_id)
        outputs = status.get("outputs") or {}
        fetched = {int(frame): self.fetch(job_id, int(frame), folder)
                   for frame in sorted(outputs, key=int)}
        for name, frame in sorted((status.get("extra_outputs") or {}).items()):
            self.fetch(job_id, int(frame), extras_folder or folder, name=name)
        return fetched

    # -- events ------------------------------------------------------------------------------
    def subscribe(self, job_id: str | None = None, previews: bool = False) -> None:
        """Start receiving events of one job (or of all), with tile previews if asked.

        Subscribe before submitting to see a job's first events (``job_id=None``).
        """
        import zmq

        if self._sub is None:
            port = self.hello().get("publish_port")
            base = self.address.rsplit(":", 1)[0]
            sub = self._context.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, 100_000)
            secure_client(sub, self._server_key, self._client_key)
            sub.connect(f"{base}:{port}")
            self._sub = sub
        # topics are KIND.OWNER.JOB: the farm honours only this client's own (admins: any)
        you = str(self.hello().get("you") or "local")
        owner = str(self.status(job_id).get("owner") or you) if job_id else you
        topics = [wire.event_topic("job", owner, job_id or "")]
        if previews:
            topics.append(wire.event_topic("preview", owner, job_id or ""))
        for topic in topics:
            self._sub.setsockopt(zmq.SUBSCRIBE, topic)
        # the farm confirms each subscription it honours: wait for that, so no event sent
        # right after (a submit's first events) is missed
        waiting = {t.decode() for t in topics}
        deadline = time.monotonic() + min(self.timeout, 5.0)
        while waiting and time.monotonic() < deadline:
            for event in self._receive_events(0.1):
                if event.get("kind") == "subscribed":
                    waiting.discard(str(event.get("topic")))
                else:
                    self._early.append(event)
        if waiting:
            logger.warning("the farm did not confirm the event subscription(s) %s; early "
                           "events may be missed", ", ".join(sorted(waiting)))

    def poll_events(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Events received so far (waiting up to ``timeout`` for the first one).

        Each is a dict: ``kind`` (``job_started``, ``task_done``, ``frame_merged``,
        ``job_done``, ``job_failed``, ``job_cancelled``, ... or ``preview``), ``job_id``,
        ``state``, progress counters; a preview has ``x``, ``y``, ``width``, ``height``,
        ``frame_width``, ``frame_height`` and ``rgba`` (8-bit RGBA bytes, top row first).
        """
        if self._sub is None:
            raise InputError("subscribe() before polling events")
        events, self._early = self._early, []
        events += [e for e in self._receive_events(0.0 if events else timeout)
                   if e.get("kind") != "subscribed"]
        return events

    def _receive_events(self, timeout: float) -> list[dict[str, Any]]:
        import zmq

        assert self._sub is not None
        events = []
        wait = int(timeout * 1000)
        while self._sub.poll(wait):
            wait = 0
            frames = self._sub.recv_multipart(zmq.NOBLOCK)
            try:
                message, blob = wire.parse_reply(frames[1:])
            except Exception:
                logger.warning("malformed event on %r dropped", frames[0][:40])
                continue
            if frames[0].startswith(b"preview.") and message.get("kind") != "subscribed":
                rgba = _inflate(blob or b"", MAX_PREVIEW_BYTES)
                if rgba is None:
                    logger.warning("oversized or damaged preview on %r dropped", frames[0][:40])
                    continue
                message = {**message, "kind": "preview", "rgba": rgba}
            events.append(message)
        return events

    def events(self, job_id: str, timeout: float | None = None, previews: bool = False,
               on_idle: Callable[[], None] | None = None) -> Iterator[dict[str, Any]]:
        """Yield a job's events until it ends (done, failed or cancelled).

        The job's state is also asked every few seconds, so an event lost on the way (events
        are not stored) cannot make this wait forever. ``on_idle`` is called on this thread
        between polls (about every 0.2 s), e.g. to send a request such as a cancel.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        self.subscribe(job_id, previews)
        deadline = None if timeout is None else time.monotonic() + timeout
        next_check = time.monotonic()
        while True:
            if on_idle is not None:
                on_idle()
            for event in self.poll_events(0.2):
                if event.get("job_id") != job_id:
                    continue
                yield event
                if event.get("kind") in ("job_done", "job_failed", "job_cancelled"):
                    return
            if time.monotonic() >= next_check:
                job = self.status(job_id)
                if job["state"] in wire.FINAL_STATES:
                    yield {**job, "kind": f"job_{job['state']}",
                           "message": job.get("error") or ""}
                    return
                next_check = time.monotonic() + 2.0
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still running after {timeout} s")

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait until a job ends and return its status."""
        for _event in self.events(job_id, timeout):
            pass
        return self.status(job_id)
