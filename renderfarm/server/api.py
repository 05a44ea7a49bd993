"""The farm's HTTP control API (``/api/v1``), for pipeline tools that do not speak ZeroMQ,
and the live event stream the web app listens to.

Every operation of the ZeroMQ protocol is ``POST /api/v1/OP`` with the request's fields as
a JSON object (``upload`` is ``PUT /api/v1/upload?sha256=..&offset=..&total=..`` with the
chunk as the body). A request goes through the very code a ZeroMQ request does
(:meth:`~renderfarm.server.service.FarmService.call`: schema, limits, ownership, rate, audit),
as the client whose token it carries (``Authorization: Bearer TOKEN``, or the page's login
cookie from a page of the same origin). A reply is the protocol's reply as JSON; a reply that
carries bytes (``fetch``, ``report`` with ``html``) has them as its body and its fields in the
``X-Renderfarm-Reply`` header. Refusals get the HTTP status of their kind (400, 401, 403,
404, 409, 413, 429, 500) and ``{"ok": false, "error": {"type", "message"}}``.
``GET /api/v1/openapi.json`` describes it all, made from the protocol's own schema.

``GET /api/v1/events[?job_id=ID]`` is a server-sent event stream of the caller's jobs'
events (an admin's: every job's), as the ZeroMQ PUB socket sends them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from renderfarm import __version__
from renderfarm.server import protocol
from renderfarm.server.keyring import Caller
from renderfarm.server.rates import Thinning

logger = logging.getLogger(__name__)

#: HTTP status of each error kind of the protocol
#: task events of one job an event stream gets per second (a page refreshes at most five
#: times a second; the job's own events, its frames' and warnings always come)
STREAM_TASK_EVENTS = 10.0

STATUS = {"bad_request": 400, "bad_input": 400, "version": 400, "too_big": 413,
          "not_found": 404, "refused": 403, "refused_key": 403, "conflict": 409,
          "limit": 429, "rate_limited": 429, "missing_files": 400, "bad_bundle": 400,
          "internal": 500, "failed": 500}
#: seconds between keep-alive comments on an idle event stream
KEEP_ALIVE = 15.0
#: seconds between checks that a stream's key is still allowed (a removed key's streams end
#: within this time)
RECHECK = 1.0
#: seconds a request body may take to begin arriving, plus its size at :data:`MIN_RATE`
BODY_TIMEOUT = 10.0
#: the slowest a request body may arrive, in bytes per second, after :data:`BODY_TIMEOUT`
MIN_RATE = 64 * 1024

#: where the OpenAPI document's schemas live
_REF = "#/components/schemas/{name}"


def _body_schema(component: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of an operation's HTTP request, from its request's schema: the
    operation's own fields (the version, operation and id of the header are the API's to
    add)."""
    properties = {name: schema for name, schema in component["properties"].items()
                  if name not in protocol.ENVELOPE}
    required = sorted(n for n in component.get("required", ()) if n not in protocol.ENVELOPE)
    body: dict[str, Any] = {"type": "object", "properties": properties,
                            "additionalProperties": False}
    if component.get("description"):
        body["description"] = component["description"]
    if required:
        body["required"] = required
    return body


def openapi() -> dict[str, Any]:
    """The API's OpenAPI 3.1 description, made from the protocol's declarations
    (:data:`protocol.REQUESTS`, through :func:`msgspec.json.schema_components`): each
    operation's fields with their types, bounds and descriptions."""
    error = {"description": "refused: the error's type and a message naming the problem",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    _, components = msgspec.json.schema_components(protocol.REQUESTS.values(),
                                                   ref_template=_REF)
    paths: dict[str, Any] = {}
    for op, message in sorted(protocol.REQUESTS.items()):
        body = _body_schema(components[message.__name__])
        responses = {"200": {"description": f"the {op} reply (the protocol's fields)",
                             "content": {"application/json": {"schema": {"type": "object"}}}},
                     "400": error, "401": {"description": "no valid token"}, "403": error,
                     "404": error, "409": error, "429": error}
        if message.with_data:  # the chunk travels as the body
            required = body.get("required", [])
            paths[f"/api/v1/{op}"] = {"put": {
                "operationId": op, "summary": f"{op}: the chunk is the body",
                "description": body.get("description", ""),
                "parameters": [{"name": n, "in": "query", "required": n in required,
                                "schema": schema} for n, schema in body["properties"].items()],
                "requestBody": {"required": True, "content": {
                    "application/octet-stream": {"schema": {"type": "string",
                                                            "format": "binary"}}}},
                "responses": responses}}
            continue
        if message.bytes_reply:
            responses["200"]["content"]["application/octet-stream"] = {
                "schema": {"type": "string", "format": "binary"}}
            responses["200"]["description"] += ("; with bytes (a frame, a report's HTML) "
                                                "they are the body and the fields are in "
                                                "the X-Renderfarm-Reply header")
        paths[f"/api/v1/{op}"] = {"post": {
            "operationId": op, "summary": f"the protocol's {op!r} request",
            "requestBody": {"required": "required" in body, "content": {
                "application/json": {"schema": body}}},
            "responses": responses}}
    paths["/api/v1/events"] = {"get": {
        "operationId": "events", "summary": "server-sent events of the caller's jobs",
        "parameters": [{"name": "job_id", "in": "query", "required": False,
                        "schema": {"type": "string", "pattern": protocol.JOB_ID.pattern}}],
        "responses": {"200": {"description": "an event stream; each data line is an event",
                              "content": {"text/event-stream": {}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "renderfarm", "version": __version__,
                 "description": "The farm service's operations over HTTP: the same as its "
                 "ZeroMQ protocol, checked and audited the same way."},
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer",
                                          "description": "renderfarm web-token prints it"}},
            "schemas": {"Error": {"type": "object", "properties": {
                "ok": {"type": "boolean"}, "error": {"type": "object", "properties": {
                    "type": {"type": "string"}, "message": {"type": "string"}}}}}}},
        "security": [{"token": []}],
        "paths": paths,
    }


def reply_response(op: str, reply: dict[str, Any], data: bytes | None,
                   headers: dict[str, str]) -> Response:
    """The HTTP answer of a protocol reply."""
    fields = {k: v for k, v in reply.items() if k not in ("v", "id")}
    if not reply.get("ok"):
        kind = str((reply.get("error") or {}).get("type", "bad_request"))
        return Response(json.dumps(fields), STATUS.get(kind, 400), headers=headers,
                        media_type="application/json")
    if data is not None:
        kind = "text/html; charset=utf-8" if op == "report" else "application/octet-stream"
        return Response(data, 200, media_type=kind, headers={
            **headers, "X-Renderfarm-Reply": json.dumps(fields, ensure_ascii=True)})
    return Response(json.dumps(fields), 200, headers=headers, media_type="application/json")


class EventStreams:
    """The server-sent event streams open now, a share per client (see
    :class:`~renderfarm.server.admission.Admission`)."""

    def __init__(self, service: Any, admission: Any) -> None:
        self.service = service
        self.admission = admission

    @property
    def open(self) -> int:
        """Streams open now."""
        return sum(self.admission.streams.values())

    def stream(self, caller: Caller, job_id: str | None, headers: dict[str, str],
               allowed: Callable[[], bool] = lambda: True) -> Response:
        """A stream of the job events ``caller`` may see (of ``job_id`` only, if given),
        until the client goes or ``allowed()`` says no more (its key was removed, its
        session ended: checked every :data:`RECHECK` seconds)."""
        refused = self.admission.open_stream(caller.name)
        if refused is not None:
            return Response(refused, 429, headers=headers, media_type="text/plain")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        thinning = Thinning(STREAM_TASK_EVENTS)  # this subscriber's
        lock = threading.Lock()

        def listener(owner: str, message: dict[str, Any]) -> None:
            if not caller.may_see(owner) or (job_id and message.get("job_id") != job_id):
                return
            with lock:
                if not thinning.allow(str(message.get("job_id")), str(message.get("kind")),
                                      time.monotonic()):
                    return
            loop.call_soon_threadsafe(_put, queue, message)

        stop = self.service.listen(listener)

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b": renderfarm events\n\n"
                quiet = 0.0
                while allowed():
                    try:
                        message = await asyncio.wait_for(queue.get(), RECHECK)
                    except TimeoutError:
                        quiet += RECHECK
                        if quiet >= KEEP_ALIVE:
                            quiet = 0.0
                            yield b": still here\n\n"
                        continue
                    quiet = 0.0
                    if not allowed():
                        break
                    yield f"data: {json.dumps(message)}\n\n".encode()
                yield b"event: ended\ndata: {\"reason\": \"the login ended\"}\n\n"
            finally:
                stop()
                self.admission.close_stream(caller.name)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-store"})


def _put(queue: asyncio.Queue[dict[str, Any]], message: dict[str, Any]) -> None:
    if not queue.full():  # a page that does not read its events loses the oldest news
        queue.put_nowait(message)


async def read_body(request: Request, limit: int,
                    timeout: float | None = None) -> bytes | str:
    """A request's body, or why it was not read: over ``limit`` bytes (said by its
    ``Content-Length`` before a byte is read), or too slow: it must have come within
    ``timeout`` seconds (default: :data:`BODY_TIMEOUT` plus its size at :data:`MIN_RATE`)."""
    length = request.headers.get("content-length")
    if length is not None and (not (0 < len(length) <= 18 and length.isascii()
                                    and length.isdigit()) or int(length) > limit):
        return f"the request's body is over the limit of {limit} bytes"
    size = int(length) if length is not None else limit
    deadline = timeout if timeout is not None else BODY_TIMEOUT + size / MIN_RATE
    chunks: list[bytes] = []
    got = 0
    try:
        with anyio.fail_after(deadline):
            async for chunk in request.stream():
                got += len(chunk)
                if got > limit:
                    return f"the request's body is over the limit of {limit} bytes"
                chunks.append(chunk)
    except TimeoutError:
        return (f"the request's body came too slowly ({got} of {size} bytes in "
                f"{deadline:.0f} s); send it at once")
    return b"".join(chunks)
