"""The farm service's wire protocol: every request declared once, checked as it arrives.

Each operation's request is a :class:`msgspec.Struct` below (a subclass of
:class:`Message`, tagged with the operation's name in ``op``), and each field's bounds are
declared with its type: patterns of ids and hashes, ranges of numbers, lengths of strings
and lists. The words a refusal uses for a field travel in the same declaration
(``Meta(extra={"problem": ...})``). :func:`parse_request` decodes a request's header
straight into its struct (msgspec checks it while it parses); the HTTP API's OpenAPI
document (:func:`renderfarm.server.api.openapi`) is made from the same declarations.

What a client needs (limits, framing, replies, topics, name rules) is in
:mod:`renderfarm.server.wire`, which needs only the standard library; every name of it is
re-exported here.
"""

from __future__ import annotations

import json
import types
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from renderfarm.errors import ProtocolError
from renderfarm.frames import MAX_TEXT as MAX_FRAMES_TEXT
from renderfarm.server.wire import (
    CHUNK,
    FILE_NAME_PATTERN,
    FINAL_STATES,
    JOB_ID,
    JOB_ID_PATTERN,
    MAX_DEPTH,
    MAX_HASHES,
    MAX_HEADER,
    MAX_INT,
    MAX_MESSAGE,
    MAX_RELATIVE_NAME,
    RELATIVE_NAME_PATTERN,
    RELATIVE_NAME_PROBLEM,
    SHA256_PATTERN,
    STATES,
    VERSION,
    check_relative_name,
    encode,
    event_topic,
    parse_reply,
    reply_error,
    reply_ok,
    request,
)

__all__ = [
    "CHUNK", "FINAL_STATES", "JOB_ID", "MAX_DEPTH", "MAX_HASHES", "MAX_HEADER", "MAX_INT",
    "MAX_MESSAGE", "ENVELOPE", "REQUESTS", "STATES", "VERSION", "WITH_DATA", "Message", "Request",
    "check_relative_name", "encode", "event_topic", "parse_reply", "parse_request",
    "reply_error", "reply_ok", "request",
]

# -- the fields' types: each with its bounds and the words a refusal uses ------------------
#: a whole number a field takes (JSON's exact integers)
Int = Annotated[int, Meta(ge=-MAX_INT, le=MAX_INT, description="a whole number", extra={
    "problem": f"must be between {-MAX_INT} and {MAX_INT}"})]
#: a count of bytes, an offset
Count = Annotated[int, Meta(ge=0, le=MAX_INT, description="a number of bytes", extra={
    "problem": f"must be 0 or more: between 0 and {MAX_INT}"})]
#: a job's priority
Priority = Annotated[int, Meta(ge=-1000, le=1000, description="higher runs first; 0 is the "
                               "default", extra={"problem": "must be between -1000 and 1000"})]
#: a file's content hash
Sha256 = Annotated[str, Meta(min_length=64, max_length=64, pattern=SHA256_PATTERN,
                             description="a SHA-256: 64 lowercase hex digits", extra={
                                 "problem": "must be 64 lowercase hex digits (SHA-256)"})]
#: a job's id
JobId = Annotated[str, Meta(max_length=64, pattern=JOB_ID_PATTERN, description="a job's id",
                            extra={"problem": "is not a job id"})]
#: a worker's id (the same shape as a job's)
WorkerId = Annotated[str, Meta(max_length=64, pattern=JOB_ID_PATTERN,
                               description="a worker's id (renderfarm workers lists them)",
                               extra={"problem": "is not a worker id"})]
#: a file name without a folder
FileName = Annotated[str, Meta(min_length=1, max_length=255, pattern=FILE_NAME_PATTERN,
                               description="a plain file name (no folder), at most 255 "
                               "characters", extra={"problem": "must be a plain file name"})]
#: a file in a job's output folder
RelativeName = Annotated[str, Meta(max_length=MAX_RELATIVE_NAME, pattern=RELATIVE_NAME_PATTERN,
                                   description="a path relative to the job's output folder",
                                   extra={"problem": RELATIVE_NAME_PROBLEM})]
#: a job state
State = Annotated[Literal[STATES], Meta(extra={
    "problem": f"is not a job state (unknown states are refused); known: "
               f"{', '.join(STATES)}"})]
#: hashes one ``have`` asks about
Hashes = Annotated[list[Sha256], Meta(max_length=MAX_HASHES, extra={
    "problem": f"asks about more than {MAX_HASHES} files"})]
#: a frame-range string (``1-10,20``)
Frames = Annotated[str, Meta(max_length=MAX_FRAMES_TEXT, description="frames, e.g. 1-10,20",
                             extra={"problem": f"is over {MAX_FRAMES_TEXT} characters"})]
#: a short free text
Reason = Annotated[str, Meta(max_length=1000, extra={"problem": "is over 1000 characters"})]
#: an object whose contents the service checks itself (a job's spec, a bundle's manifest)
Object = dict[str, Any]


# -- the requests ----------------------------------------------------------------------------
class Message(Struct, tag_field="op", forbid_unknown_fields=True, kw_only=True):
    """A request's header: the protocol's version ``v``, the operation (``op``, the tag of
    a subclass) and the client's request id, which the reply echoes when it is a short
    string or a bounded integer; then the operation's fields, declared by the subclass.

    Attributes:
        v: the protocol version the client speaks (:data:`VERSION`).
        id: the client's request id: any JSON value (echoed only when short, see
            :attr:`Request.id`).
        with_data: whether the request carries exactly one frame of bytes after the
            header (other requests take none).
        bytes_reply: whether the reply may carry bytes after its header.
    """

    with_data: ClassVar[bool] = False
    bytes_reply: ClassVar[bool] = False

    v: int
    id: Any = None


class Hello(Message, tag="hello"):
    """Who the caller is (``you``, ``admin``) and what the farm offers: its version, its
    limits, its event port, its workers."""


class WebToken(Message, tag="web_token"):
    """The caller's own token for the farm's status page (a farm with keys)."""


class Upload(Message, tag="upload"):
    """One chunk of a file, the request's data frame, at ``offset`` of ``total`` bytes;
    the file is kept once its bytes hash to ``sha256``."""

    with_data: ClassVar[bool] = True

    sha256: Sha256
    offset: Count
    total: Count


class Have(Message, tag="have"):
    """Which of these files the farm lacks for the caller (``missing``)."""

    hashes: Hashes


class Submit(Message, tag="submit"):
    """A job: its spec, and its scene as one uploaded ``blob`` or a ``bundle`` manifest of
    uploaded files (one of the two)."""

    spec: Annotated[Object, Meta(description="the job's settings (as renderfarm submit "
                                 "takes them)")]
    filename: Annotated[FileName, Meta(description="the scene's file name")]
    blob: Annotated[Sha256, Meta(description="the uploaded .blend")] | UnsetType = UNSET
    bundle: Annotated[Object, Meta(description="a bundle's manifest: {files: [{path, "
                                   "sha256, size}]}")] | UnsetType = UNSET
    priority: Priority | UnsetType = UNSET


class Status(Message, tag="status"):
    """A job's state, progress and outputs."""

    job_id: JobId


class ListJobs(Message, tag="list"):
    """The jobs the caller may see (of these states only, if given)."""

    states: Annotated[list[State], Meta(max_length=len(STATES) * 4, extra={
        "problem": f"lists more than {len(STATES) * 4} states"})] | UnsetType = UNSET


class Cancel(Message, tag="cancel"):
    """Cancel a job."""

    job_id: JobId


class Pause(Message, tag="pause"):
    """Pause a job (its running tasks finish)."""

    job_id: JobId


class Resume(Message, tag="resume"):
    """Resume a paused job."""

    job_id: JobId


class SetPriority(Message, tag="priority"):
    """Change a job's priority."""

    job_id: JobId
    priority: Priority


class Fetch(Message, tag="fetch"):
    """Bytes of a frame the job wrote (or of a File Output node's file ``name``), from
    ``offset``, ``length`` of them (0: as many as one reply holds)."""

    bytes_reply: ClassVar[bool] = True

    job_id: JobId
    frame: Annotated[Int, Meta(description="the frame's number")]
    offset: Annotated[Count, Meta(description="the first byte to read")]
    length: Annotated[Count, Meta(description="bytes to read; 0: as many as one reply "
                                  "holds")]
    name: Annotated[RelativeName, Meta(description="a file a File Output node wrote")] | \
        UnsetType = UNSET


class Report(Message, tag="report"):
    """A job's report (accounting, verification, outputs' SHA-256); with ``html``, the
    page too."""

    bytes_reply: ClassVar[bool] = True

    job_id: JobId
    html: bool | UnsetType = UNSET


class Log(Message, tag="log"):
    """What Blender printed for a job's tasks (of one frame; of failed tasks only)."""

    job_id: JobId
    frame: Annotated[Int, Meta(description="the frame's number")] | UnsetType = UNSET
    failed: bool | UnsetType = UNSET


class Requeue(Message, tag="requeue"):
    """Render frames of a job that ended again, into the same outputs (all of them, or
    ``frames``, or the ``failed`` ones)."""

    job_id: JobId
    frames: Frames | UnsetType = UNSET
    failed: bool | UnsetType = UNSET


class Workers(Message, tag="workers"):
    """The farm's workers."""


class Worker(Message, tag="worker"):
    """Take a worker out (``enabled`` false, with a ``reason``) or put it back (admins)."""

    worker_id: WorkerId
    enabled: bool
    reason: Reason | UnsetType = UNSET


#: each operation's request, by the operation's name
REQUESTS: dict[str, type[Message]] = {
    cls.__struct_config__.tag: cls for cls in (
        Hello, Upload, Have, Submit, Status, ListJobs, Cancel, Pause, Resume, SetPriority, Fetch,
        WebToken, Report, Log, Requeue, Workers, Worker)}
#: operations that carry exactly one frame of bytes after the header
WITH_DATA = tuple(op for op, cls in REQUESTS.items() if cls.with_data)
#: the header's own fields, in every request
ENVELOPE = ("v", "op", "id")

_DECODER = msgspec.json.Decoder(Union[tuple(REQUESTS.values())])  # noqa: UP007 (of a tuple)


@dataclass(frozen=True)
class Request:
    """A checked request.

    Attributes:
        op: the operation.
        id: the client's request id (echoed in the reply), or None when it was not a short
            string or a bounded integer.
        fields: the operation's fields the client sent (an optional one it left out is not
            there: ``fields.get(name)``).
        data: the bytes frame (uploads), else None.
    """

    op: str
    id: Any
    fields: dict[str, Any]
    data: bytes | None = None


def _request_id(value: Any) -> Any:
    """The client's request id when it is a short string or a bounded int, else None (an id
    is echoed in the reply: a nested or huge one must never reach the encoder)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int) and -(2**53) < value < 2**53:
        return value
    if isinstance(value, str) and len(value) <= 64:
        return value
    return None


def _too_deep(value: Any, depth: int = 1) -> bool:
    """Whether ``value``, at ``depth`` in a message, nests deeper than :data:`MAX_DEPTH`
    (checked without recursion)."""
    stack = [(value, depth)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def _parts(declared: Any) -> tuple[Any, dict[str, Any]]:
    """A declared type without ``UnsetType``, as its bare type and its metadata's extras."""
    if get_origin(declared) in (Union, types.UnionType):
        kept = [a for a in get_args(declared) if a is not UnsetType]
        declared = kept[0] if len(kept) == 1 else declared
    extra: dict[str, Any] = {}
    if get_origin(declared) is Annotated:
        declared, *metadata = get_args(declared)
        for meta in metadata:
            if isinstance(meta, Meta) and meta.extra:
                extra.update(meta.extra)
    return declared, extra


def _has_any(declared: Any) -> bool:
    """Whether a declared type takes values of any shape somewhere (so may nest deep)."""
    return declared is Any or any(_has_any(a) for a in get_args(declared))


@cache
def _declared(cls: type[Message]) -> dict[str, Any]:
    """The declared type of each field of ``cls``, metadata included."""
    return get_type_hints(cls, include_extras=True)


#: per request struct: its operation, its own fields, and those that take any shape
_LAYOUT = {cls: (op, tuple(f for f in cls.__struct_fields__ if f not in ENVELOPE),
                 tuple(f for f, t in _declared(cls).items() if _has_any(t)))
           for op, cls in REQUESTS.items()}


def _shown(value: Any, most: int = 40) -> str:
    """A client's value quoted for a refusal, cut to ``most`` characters."""
    text = repr(value)
    return text if len(text) <= most else text[:most] + "..."


def _refusal(cls: type[Message], header: dict[str, Any], error: str) -> str:
    """The words refusing a request whose header decoded into a dict but not into ``cls``:
    the operation, the field (and the item of a list) and what is wrong, in the words its
    declaration gives (msgspec's ``error`` names the first problem and where it is)."""
    op = _LAYOUT[cls][0]
    what, at, where = error.partition(" - at `$")
    if what.startswith("Object contains unknown field"):
        unknown = sorted(set(header) - set(cls.__struct_fields__) - set(ENVELOPE))
        shown = ", ".join(n if len(n) <= 64 else n[:64] + "..." for n in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        return f"{op}: unknown field(s) {shown}{more}; known: " \
               f"{', '.join(_LAYOUT[cls][1]) or 'none'}"
    if what.startswith("Object missing required field"):
        return f"{op}: field {what.split('`')[1]!r} is missing"
    path = where.rstrip("`")
    name, _, rest = path.lstrip(".").partition("[")
    if not at or name not in _declared(cls):
        return f"{op}: {what[:200]}"
    declared, extra = _parts(_declared(cls)[name])
    place, value = f"field {name!r}", header.get(name)
    for index in [int(i) for i in rest.replace("]", "").split("[") if i.isdigit()]:
        item = get_args(declared)[0] if get_origin(declared) is list else Any
        declared, extra = _parts(item)
        place += f" item {index}"
        value = value[index] if isinstance(value, list) and index < len(value) else None
    if ", got `" in what:  # a value of another type
        wanted, got = what.removeprefix("Expected `").split("`, got `")
        return f"{op}: {place} must be {wanted}, not {got.rstrip('`')}"
    problem = extra.get("problem")
    if problem is None:
        return f"{op}: {place} is not valid ({what[:200]})"
    if what.startswith("Invalid enum value"):
        return f"{op}: {place} ({_shown(value)}) {problem}"
    return f"{op}: {place} {problem}"


def _diagnose(header_frame: bytes, error: Exception) -> ProtocolError:
    """Why a header msgspec would not decode is refused, in the order a reader checks: JSON,
    an object, its nesting, the protocol version, the operation, then the first field that
    is wrong. The header is read again with :mod:`json` for this (a refusal's path only), so
    the reply can echo the request id even when the rest is wrong."""
    try:
        header = json.loads(header_frame)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return ProtocolError(f"the first frame is not JSON ({exc})")
    except RecursionError:
        return ProtocolError(f"the message nests deeper than {MAX_DEPTH} levels")
    except ValueError as exc:  # e.g. an integer of thousands of digits
        return ProtocolError(f"the first frame is not usable JSON ({exc})")
    if not isinstance(header, dict):
        return ProtocolError("the first frame must be a JSON object")
    request_id = _request_id(header.get("id"))
    if _too_deep(header):
        return ProtocolError(f"the message nests deeper than {MAX_DEPTH} levels",
                             request_id=request_id)
    version = header.get("v")
    if type(version) is not int or version != VERSION:
        return ProtocolError(f"protocol version {_shown(version)} is not supported; this "
                             f"server speaks version {VERSION}: update the client",
                             kind="version", request_id=request_id)
    op = header.get("op")
    cls = REQUESTS.get(op) if isinstance(op, str) else None
    if cls is None:
        return ProtocolError(f"unknown operation {_shown(op)}; known: "
                             f"{', '.join(sorted(REQUESTS))}", request_id=request_id)
    if isinstance(error, msgspec.ValidationError):
        return ProtocolError(_refusal(cls, header, str(error)), request_id=request_id)
    # JSON to Python's reader, not to the standard's: NaN, Infinity, UTF-16, lone surrogates
    return ProtocolError(f"{op}: the first frame is not standard JSON in UTF-8 "
                         f"({str(error)[:200]}; NaN and Infinity are not JSON numbers)",
                         request_id=request_id)


def parse_request(frames: Sequence[bytes], limit: int = MAX_MESSAGE) -> Request:
    """Check a request's frames against its operation's declaration.

    Args:
        frames: the message's frames: the JSON header, then the data frame of an upload.
        limit: the largest message taken, all frames together, in bytes.

    Returns:
        The request, its fields as the client sent them.

    Raises:
        ProtocolError: the message is too big (``kind`` ``too_big``), not JSON, of another
            version (``version``), an unknown operation, or has a missing, unknown or
            wrongly typed field, a value out of its bounds, or the wrong data frames;
            ``request_id`` is the client's id when it could be read.
    """
    if frames and len(frames[0]) > MAX_HEADER:
        raise ProtocolError(f"the request's header is {len(frames[0])} bytes, over the limit "
                            f"of {MAX_HEADER}; send bytes in a data frame, and ask about at "
                            f"most {MAX_HASHES} files at once", kind="too_big")
    size = sum(len(f) for f in frames)
    if size > limit:
        raise ProtocolError(f"message of {size} bytes is over the limit of {limit} bytes; "
                            f"send files in chunks of at most {CHUNK} bytes", kind="too_big")
    if not frames:
        raise ProtocolError("empty message")
    try:
        message = _DECODER.decode(frames[0])
    except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError is a DecodeError
        raise _diagnose(frames[0], exc) from None
    cls = type(message)
    op, names, free = _LAYOUT[cls]
    request_id = _request_id(message.id)
    for name in free:
        if _too_deep(getattr(message, name), 2):
            raise ProtocolError(f"{op}: field {name!r} nests deeper than {MAX_DEPTH} levels",
                                request_id=request_id)
    if message.v != VERSION:
        raise ProtocolError(f"protocol version {message.v} is not supported; this server "
                            f"speaks version {VERSION}: update the client", kind="version",
                            request_id=request_id)
    data = None
    if cls.with_data:
        if len(frames) != 2:
            raise ProtocolError(f"{op}: needs exactly one data frame after the header",
                                request_id=request_id)
        data = bytes(frames[1])
    elif len(frames) != 1:
        raise ProtocolError(f"{op}: takes no data frames", request_id=request_id)
    fields = {}
    for name in names:
        value = getattr(message, name)
        if value is not UNSET:
            fields[name] = value
    return Request(op=op, id=request_id, fields=fields, data=data)
