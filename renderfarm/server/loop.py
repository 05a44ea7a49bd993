"""The service's ZeroMQ side: the main thread's loop moves messages (requests in, replies and
events out, subscriptions checked), and lane threads answer requests: who is asking, at what
rate, through the operations' table, with every state-changing request audited. The HTTP API
comes in through :meth:`RequestLoop.call`, to the same checks."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from renderfarm.errors import LimitError, ProtocolError, RenderFarmError, ServiceError
from renderfarm.server import protocol
from renderfarm.server.config import ServiceConfig
from renderfarm.server.keyring import LOCAL, Caller
from renderfarm.server.quiet import QuietLog
from renderfarm.server.rates import Rates
from renderfarm.server.store import Store
from renderfarm.server.transport import ServerSockets

logger = logging.getLogger(__name__)

#: threads that answer requests; a client's requests always go to the same one (in order),
#: so one client's expensive request delays only the clients that share its lane
LANES = 4

#: requests that change state: each is recorded, with its caller, in the audit table
AUDITED = ("upload", "submit", "cancel", "pause", "resume", "priority", "requeue", "worker")

#: an operation's handler: its reply's fields, or those and the reply's data
Handler = Callable[[protocol.Request, Caller], Any]


class RequestLoop:
    """Requests and events over ZeroMQ.

    Args:
        config: how the service runs (the largest message, the rate per client).
        sockets: the bound sockets (only the thread in :meth:`run` touches them).
        handlers: the handler of each operation.
        store: the service's database (its audit table).
        scrub: ``text`` without the farm's own paths, for error replies.
        outbox: the events to publish (put by any thread).
        stop: set to make :meth:`run` return.
    """

    def __init__(self, config: ServiceConfig, sockets: ServerSockets,
                 handlers: Mapping[str, Handler], store: Store, scrub: Callable[[str], str],
                 outbox: queue.Queue[list[bytes]], stop: threading.Event) -> None:
        self._config = config
        self._sockets = sockets
        self._handlers = handlers
        self._store = store
        self._scrub = scrub
        self._outbox = outbox
        self._stop = stop
        #: refused requests, logged a few lines per kind at most
        self._quiet = QuietLog(logger)
        self._rates = Rates(config.requests_per_second)
        self._lock = threading.Lock()
        #: requests are parsed and answered off the main thread, which only moves messages
        self._lanes = [ThreadPoolExecutor(1, thread_name_prefix=f"renderfarm-lane{i}")
                       for i in range(LANES)]
        self._replies: queue.Queue[list[bytes]] = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    # -- the main thread ---------------------------------------------------------------------
    def run(self, tick: Callable[[], None]) -> None:
        """Move messages until ``stop`` is set, calling ``tick()`` every 50 ms at most (the
        main thread's other work)."""
        import zmq

        sockets = self._sockets
        poller = zmq.Poller()
        poller.register(sockets.router, zmq.POLLIN)
        poller.register(sockets.pub, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        keyring = sockets.keyring
        removals, checked = (keyring.removals if keyring else 0), 0.0
        while not self._stop.is_set():
            for sock, _ in poller.poll(50):
                if sock is sockets.router:
                    self._receive()
                elif sock is sockets.pub:
                    self._subscriptions()
                elif sock == self._wake_r:
                    os.read(self._wake_r, 65536)
            self._send_replies()
            if keyring is not None and time.monotonic() - checked > 1.0:
                checked = time.monotonic()
                keyring.names()  # notices keys removed from the folders
                if keyring.removals != removals:  # drop their subscriptions
                    removals = keyring.removals
                    poller.unregister(sockets.pub)
                    sockets.rebind_events()
                    poller.register(sockets.pub, zmq.POLLIN)
                    logger.info("a client key was removed: event subscriptions renewed")
            self._publish()
            tick()

    def close(self) -> None:
        """Let the requests being answered end (the queued ones are dropped), send their
        replies, and close the loop's own pipe (not the sockets)."""
        for lane in self._lanes:
            lane.shutdown(wait=True, cancel_futures=True)
        self._send_replies()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _receive(self) -> None:
        import zmq

        while True:
            try:
                frames = self._sockets.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity, body = frames[0].bytes, [f.bytes for f in frames[1:]]
            caller = self._caller(frames[-1])
            refusal = None
            if isinstance(caller, str):  # refused before anything is read
                refusal = protocol.reply_error(None, "refused", caller)
            else:
                try:
                    self._admit(caller)
                except ServiceError as exc:
                    refusal = protocol.reply_error(None, exc.kind, exc.one_line())
            if refusal is not None:
                self._send(identity, [refusal])
                continue
            assert isinstance(caller, Caller)
            lane = self._lanes[zlib.crc32(caller.name.encode()) % len(self._lanes)]
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
                self._rates.leave(caller.name)
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
            self._sockets.router.send_multipart([identity, *reply], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the client went away: nothing to do
            logger.debug("reply dropped: %s", exc)

    def _caller(self, frame: Any) -> Caller | str:
        """Who sent a message (its key's name, from the secure handshake), or why the
        sender is not allowed any more."""
        keyring = self._sockets.keyring
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

    def _subscriptions(self) -> None:
        """Honour each subscription to events only for the caller's own jobs (admins:
        any); the XPUB is in manual mode, so a refused topic delivers nothing."""
        import zmq

        pub = self._sockets.pub
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
                self._sockets.pub.send_multipart(frames, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # no subscriber can keep up: events are advisory, state is in status

    # -- any thread --------------------------------------------------------------------------
    def call(self, caller: Caller, op: str, fields: dict[str, Any],
             data: bytes | None = None) -> tuple[dict[str, Any], bytes | None]:
        """Answer one request of the protocol for another front end (the HTTP API): the
        same schema, checks, ownership, rate limit and audit as a ZeroMQ request.

        Returns:
            The reply's fields (``ok`` false with ``error`` for a refusal) and its data.
        """
        try:
            self._admit(caller)
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
                self._rates.leave(caller.name)
        return protocol.parse_reply(reply)

    def rate_refusal(self, caller: Caller) -> str | None:
        """Why a request of ``caller`` would be refused for its rate or its requests in
        flight, checked before its body is read (nothing is counted: :meth:`call` counts
        it); None when it may come."""
        with self._lock:
            return self._rates.problem(caller.name, time.monotonic())[0]

    def _admit(self, caller: Caller) -> None:
        """Count a request of ``caller`` in flight, when its rate and its requests in
        flight allow it.

        Raises:
            ServiceError: ``rate_limited``: they do not (nothing is counted in flight).
        """
        with self._lock:
            problem = self._rates.take(caller.name, time.monotonic())
            if problem is None:
                self._rates.enter(caller.name)
        if problem is not None:
            raise ServiceError(problem, kind="rate_limited")

    def _answer(self, body: list[bytes], caller: Caller) -> list[bytes]:
        request_id = None
        request = None
        try:
            request = protocol.parse_request(body, self._config.max_message)
            request_id = request.id
            result = self._handlers[request.op](request, caller)
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
            self._store.audit(name, request.op, job_id, error is None, detail)
        except Exception:  # the audit must not take the request down
            logger.exception("cannot record %s by %s in the audit table", request.op, name)
