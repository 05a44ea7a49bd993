"""The status page of ``renderfarm serve --http HOST:PORT``: a Starlette app served by uvicorn
in a thread of the service.

``/`` lists the jobs, ``/job/ID`` shows one job's tasks per worker and the preview of its
latest frame (``/preview/ID.png``), ``/api/jobs`` and ``/api/job/ID`` give the same as JSON.
Nothing on it changes the farm.

**Login.** A service with keys asks for a login on every page: a client's token is
:func:`~renderfarm.server.keyring.web_token` of its public key (``renderfarm web-token``
prints it), sent once through the login form (``POST /login``: the answer sets it as an
HttpOnly, SameSite=Strict cookie) or with each request as ``Authorization: Bearer TOKEN``.
Tokens are recomputed from the keys the service allows now, so a key removed from
``--clients`` stops its token at once. A client sees its own jobs only (an admin: all); to
anyone else a job does not exist (404), as in the protocol. Without keys
(``--insecure-loopback``) there is no login, and the page serves loopback only.

**Connections.** uvicorn serves at most :data:`MAX_CONNECTIONS` requests at once (more get
503) on one asyncio thread, plus at most :data:`WORKER_THREADS` threads that read the
database. uvicorn itself never times out a connection that has not sent a whole request
header (its keep-alive timer starts only after a response, and any byte received stops it),
and counts such connections against its limit, so a few hundred half-sent requests would
lock everyone out. :class:`_Waiting` guards that: a connection waiting for a request header
(a new one, or a kept-alive one between requests) is closed :data:`TIMEOUT` seconds after it
began to wait, whatever it sends meanwhile; at most :data:`MAX_WAITING` wait at once (the
oldest is closed when one more comes); and only connections with a request in progress count
against ``limit_concurrency``. A header is at most :data:`MAX_HEADER` bytes (h11's incomplete
event size; more gets 400).
"""

from __future__ import annotations

import asyncio
import hmac
import html
import ipaddress
import json
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import anyio
import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from renderfarm.errors import InputError, ServiceError
from renderfarm.server.keyring import LOCAL, Caller, web_token
from renderfarm.server.protocol import JOB_ID

logger = logging.getLogger(__name__)

#: requests served at once (uvicorn's ``limit_concurrency``; more get 503)
MAX_CONNECTIONS = 64
#: seconds a connection may take to send a whole request header, counted from its opening
#: (or from its previous response); then it is closed
TIMEOUT = 10.0
#: seconds a kept-alive connection may stay silent after a response (uvicorn's
#: ``timeout_keep_alive``)
KEEP_ALIVE = 5
#: connections waiting for a request header at once (the oldest is closed when one more comes)
MAX_WAITING = 256
#: the largest request header, in bytes (h11's incomplete event size)
MAX_HEADER = 16 * 1024
#: the largest login form, in bytes
MAX_FORM = 4096
#: threads that read the database and previews for the page
WORKER_THREADS = 4
#: seconds a login lasts in the browser
COOKIE_AGE = 12 * 3600
#: the longest token looked at
_MAX_TOKEN = 128

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; background: #222; color: #ddd; }
table { border-collapse: collapse; } td, th { padding: .3em .8em; border-bottom: 1px solid #444; }
a { color: #8cf; } .bar { width: 10em; height: .8em; background: #444; display: inline-block; }
.bar span { display: block; height: 100%; background: #6c6; }
.failed { color: #f77; } .done { color: #7d7; } img { image-rendering: pixelated; }
#who { float: right; } #who form { display: inline; }
"""

#: headers of every answer: nothing cached, framed or sniffed, no referrer to other sites
#: (a form sent with "no-referrer" would say Origin: null, and the login refuses that)
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin"}

_LOGIN_SCRIPT = """<script>
if (location.hash.startsWith('#token=')) {  // a login link: the token never reaches a server log
  const form = document.getElementById('login');
  form.token.value = decodeURIComponent(location.hash.slice(7));
  history.replaceState(null, '', location.pathname + location.search);
  form.submit();
}
</script>"""


# -- pages -----------------------------------------------------------------------------------
def _page(title: str, body: str, refresh: bool, caller: Caller | None = None) -> bytes:
    meta = '<meta http-equiv="refresh" content="2">' if refresh else ""
    who = ""
    if caller is not None and caller.name != LOCAL:
        role = " (admin)" if caller.admin else ""
        who = (f"<div id='who'>{html.escape(caller.name)}{role} <form method='post' "
               "action='/logout'><button>log out</button></form></div>")
    return (f"<!doctype html><html><head><meta charset='utf-8'>{meta}"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>{who}{body}</body></html>").encode()


def _bar(done: int, total: int) -> str:
    share = 100 * done / total if total else 0
    return f"<span class='bar'><span style='width:{share:.0f}%'></span></span> {done}/{total}"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def jobs_page(service: Any, caller: Caller) -> bytes:
    """The list of the jobs ``caller`` may see."""
    rows = []
    for row in service.jobs_for(caller):
        j = service.public_job(row)
        rows.append(
            f"<tr class='job {html.escape(j['state'])}' data-job='{html.escape(j['job_id'])}'>"
            f"<td><a href='/job/{html.escape(j['job_id'])}'>{html.escape(j['job_id'])}</a></td>"
            f"<td>{html.escape(j['name'])}</td><td class='state'>{html.escape(j['state'])}</td>"
            f"<td>{j['priority']}</td><td>{_bar(j['tasks_done'], j['tasks_total'])}</td>"
            f"<td>{_bar(j['frames_done'], j['frames_total'])}</td>"
            f"<td>{_seconds(j['elapsed'])}</td>"
            f"<td class='failed'>{html.escape(j['error'] or '')}</td></tr>")
    body = ("<h1>renderfarm</h1><table id='jobs'><tr><th>job</th><th>name</th><th>state</th>"
            "<th>priority</th><th>tasks</th><th>frames</th><th>elapsed</th><th></th></tr>"
            + "".join(rows) + "</table>")
    return _page("renderfarm jobs", body, refresh=True, caller=caller)


def job_page(service: Any, caller: Caller, job_id: str) -> bytes:
    """One job: its state, its tasks per worker, its preview.

    Raises:
        ServiceError: ``not_found``: no such job, or another client's.
    """
    job = service.public_job(service.job_for(caller, job_id))
    workers: dict[str, dict[str, Any]] = {}
    for run in service.store.runs(job_id):
        entry = workers.setdefault(run["worker"] or "?", {"tasks": 0, "seconds": 0.0,
                                                          "tiles": 0})
        entry["tasks"] += 1
        entry["tiles"] += len(run["tiles"])
        entry["seconds"] += run["seconds"] or 0.0
    rows = "".join(
        f"<tr class='worker'><td>{html.escape(w)}</td><td>{e['tasks']}</td><td>{e['tiles']}</td>"
        f"<td>{e['seconds']:.2f} s</td></tr>" for w, e in sorted(workers.items()))
    outputs = "".join(f"<li>{html.escape(Path(name).name)}</li>"
                      for name in service.store.frames(job_id).values())
    escaped = html.escape(job_id)
    body = (f"<p><a href='/'>all jobs</a></p><h1>{html.escape(job['name'])} "
            f"<small>{escaped}</small></h1>"
            f"<p>state <b id='state'>{html.escape(job['state'])}</b>, priority "
            f"{job['priority']}, tasks {_bar(job['tasks_done'], job['tasks_total'])}, frames "
            f"{_bar(job['frames_done'], job['frames_total'])}, {_seconds(job['elapsed'])}</p>"
            f"<p class='failed'>{html.escape(job['error'] or '')}</p>"
            "<h2>Tasks per worker</h2><table id='workers'><tr><th>worker</th><th>tasks</th>"
            f"<th>tiles</th><th>render time</th></tr>{rows}</table>"
            f"<h2>Preview</h2><img id='preview' alt='no preview yet' "
            f"src='/preview/{escaped}.png' onload=\"document.body.dataset.preview="
            "this.naturalWidth+'x'+this.naturalHeight\">"
            f"<h2>Frames</h2><ul id='outputs'>{outputs}</ul>")
    return _page(f"renderfarm {job_id}", body,
                 refresh=job["state"] in ("queued", "running", "paused"), caller=caller)


def login_page(next_path: str, wrong: bool = False) -> bytes:
    """The login form (a login link ``/login#token=TOKEN`` fills and sends it by itself)."""
    note = "<p class='failed' id='wrong'>That token is not valid.</p>" if wrong else ""
    body = ("<h1>renderfarm</h1><p>This farm's status page needs a login. Get your token "
            "with <code>renderfarm web-token</code>.</p>" + note +
            "<form id='login' method='post' action='/login'>"
            f"<input type='hidden' name='next' value='{html.escape(next_path)}'>"
            "<label>Token <input name='token' type='password' size='70' autocomplete='off' "
            "autofocus></label> <button>Log in</button></form>" + _LOGIN_SCRIPT)
    return _page("renderfarm login", body, refresh=False)


def _known_path(path: str) -> bool:
    """Whether ``path`` is one of the page's: ``/``, ``/api/jobs``, or ``/job/ID``,
    ``/api/job/ID``, ``/preview/ID.png`` with a valid job id (never a dot name or a
    folder)."""
    if path in ("/", "/api/jobs"):
        return True
    for prefix, suffix in (("/job/", ""), ("/api/job/", ""), ("/preview/", ".png")):
        if path.startswith(prefix) and path.endswith(suffix):
            job = path[len(prefix):len(path) - len(suffix)]
            return bool(JOB_ID.match(job))
    return False


# -- who is asking ---------------------------------------------------------------------------
class Tokens:
    """Whose a status-page token is, among the keys the service allows now.

    Args:
        server_secret: the service's secret key (Z85).
        keyring: the service's :class:`~renderfarm.server.keyring.KeyRing`.
    """

    def __init__(self, server_secret: str, keyring: Any) -> None:
        self._secret = server_secret
        self._keyring = keyring

    def caller(self, token: str | None) -> Caller | None:
        """The caller whose token this is, or None (compared in constant time with every
        allowed key's token)."""
        if not token or len(token) > _MAX_TOKEN:
            return None
        given = token.encode("utf-8", "replace")
        found = None
        for caller in self._keyring.callers():
            if hmac.compare_digest(web_token(self._secret, caller.key).encode(), given):
                found = caller
        return found


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) names this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _answer(status: int, body: bytes, kind: str = "text/plain; charset=utf-8",
            headers: dict[str, str] | None = None) -> Response:
    return Response(body, status, headers={**_HEADERS, **(headers or {})}, media_type=kind)


_HTML = "text/html; charset=utf-8"
_JSON = "application/json"


class StatusApp:
    """The page's routes, with the login in front of every one.

    Args:
        service: the :class:`~renderfarm.server.service.FarmService`.
        tokens: who the tokens are; None without keys (no login, loopback only).
        cookie: the login cookie's name.
    """

    def __init__(self, service: Any, tokens: Tokens | None, cookie: str) -> None:
        self.service = service
        self.tokens = tokens
        self.cookie = cookie
        self._limiter: Any = None
        self.app = Starlette(routes=[
            Route("/", self._jobs, methods=["GET"]),
            Route("/job/{job_id}", self._job, methods=["GET"]),
            Route("/preview/{name}", self._preview, methods=["GET"]),
            Route("/api/jobs", self._api_jobs, methods=["GET"]),
            Route("/api/job/{job_id}", self._api_job, methods=["GET"]),
            Route("/login", self._login, methods=["GET", "POST"]),
            Route("/logout", self._logout, methods=["POST"]),
        ])
        self.app.router.redirect_slashes = False  # only the page's own paths, as they are

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on one of the page's few threads (the database blocks)."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(WORKER_THREADS)
        return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)

    # -- the login ---------------------------------------------------------------------------
    def _token_of(self, request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return request.cookies.get(self.cookie)

    async def _caller(self, request: Request) -> Caller | None:
        if self.tokens is None:
            return Caller(LOCAL, admin=True)
        return await self._run(self.tokens.caller, self._token_of(request))

    def _host_refused(self, request: Request) -> Response | None:
        """Without a login, a page that answers to any host name could be read by a web
        site whose name resolves to 127.0.0.1 (DNS rebinding): answer loopback names only."""
        if self.tokens is not None:
            return None
        try:
            host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
        except ValueError:  # not a host name at all
            host = ""
        if _is_loopback(host):
            return None
        return _answer(400, b"this page answers only to a loopback address "
                       b"(127.0.0.1, localhost, [::1])")

    def _login_needed(self, request: Request, api: bool) -> Response:
        if api:
            return _answer(401, b"login required: send Authorization: Bearer TOKEN "
                           b"(renderfarm web-token prints it)",
                           headers={"WWW-Authenticate": 'Bearer realm="renderfarm"'})
        return RedirectResponse("/login?next=" + quote(request.url.path, safe="/"), 303,
                                headers=_HEADERS)

    async def _guarded(self, request: Request, render: Callable[[Caller], Response],
                       api: bool = False) -> Response:
        """``render(caller)`` for a logged-in caller; a login otherwise; 404 for a job the
        caller may not see; never a traceback."""
        try:
            refused = self._host_refused(request)
            if refused is not None:
                return refused
            caller = await self._caller(request)
            if caller is None:
                return self._login_needed(request, api)
            return await self._run(render, caller)
        except ServiceError as exc:  # not_found: no such job, or another client's
            if api:
                return _answer(404, json.dumps({"error": exc.one_line()}).encode(), _JSON)
            return _answer(404, _page("renderfarm: not found", "<p><a href='/'>all jobs</a>"
                                      f"</p><p>{html.escape(exc.one_line())}</p>", False),
                           _HTML)
        except Exception:
            logger.exception("status page failed on %s", request.url.path)
            return _answer(500, b"internal error")

    async def _login(self, request: Request) -> Response:
        try:
            refused = self._host_refused(request)
            if refused is not None:
                return refused
            if self.tokens is None:  # no keys, no login
                return RedirectResponse("/", 303, headers=_HEADERS)
            if request.method == "GET":
                next_path = request.query_params.get("next") or "/"
                if not _known_path(next_path):
                    next_path = "/"
                return _answer(200, login_page(next_path), _HTML)
            return await self._log_in(request)
        except Exception:
            logger.exception("status page login failed")
            return _answer(500, b"internal error")

    async def _log_in(self, request: Request) -> Response:
        if not _same_origin(request):
            return _answer(403, b"a login must come from this page's own form")
        form = await _read_form(request)
        if form is None:
            return _answer(413, b"the login form is too big or came too slowly")
        next_path = form.get("next") or "/"
        if not _known_path(next_path):
            next_path = "/"
        token = form.get("token", "").strip()
        assert self.tokens is not None
        caller = await self._run(self.tokens.caller, token)
        if caller is None:
            logger.info("status page: a login with a wrong token")
            return _answer(401, login_page(next_path, wrong=True), _HTML)
        answer = RedirectResponse(next_path, 303, headers=_HEADERS)
        answer.set_cookie(self.cookie, token, max_age=COOKIE_AGE, path="/", httponly=True,
                          samesite="strict")
        logger.info("status page: %s logged in", caller.name)
        return answer

    async def _logout(self, request: Request) -> Response:
        if not _same_origin(request):
            return _answer(403, b"a logout must come from this page's own form")
        answer = RedirectResponse("/login", 303, headers=_HEADERS)
        answer.delete_cookie(self.cookie, path="/", httponly=True, samesite="strict")
        return answer

    # -- the pages ---------------------------------------------------------------------------
    async def _jobs(self, request: Request) -> Response:
        return await self._guarded(request, lambda caller: _answer(
            200, jobs_page(self.service, caller), _HTML))

    async def _job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if not JOB_ID.match(job_id):
            return _answer(404, b"not found")
        return await self._guarded(request, lambda caller: _answer(
            200, job_page(self.service, caller, job_id), _HTML))

    async def _preview(self, request: Request) -> Response:
        name = request.path_params["name"]
        job_id = name[:-4]
        if not name.endswith(".png") or not JOB_ID.match(job_id):
            return _answer(404, b"not found")

        def render(caller: Caller) -> Response:
            self.service.job_for(caller, job_id)
            image = self.service.preview_png(job_id)
            if image is None:
                return _answer(404, b"no preview yet")
            return _answer(200, image, "image/png")

        return await self._guarded(request, render, api=True)

    async def _api_jobs(self, request: Request) -> Response:
        def render(caller: Caller) -> Response:
            jobs = [self.service.public_job(row) for row in self.service.jobs_for(caller)]
            return _answer(200, json.dumps(jobs).encode(), _JSON)

        return await self._guarded(request, render, api=True)

    async def _api_job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if not JOB_ID.match(job_id):
            return _answer(404, b"not found")

        def render(caller: Caller) -> Response:
            job = self.service.public_job(self.service.job_for(caller, job_id))
            return _answer(200, json.dumps(job).encode(), _JSON)

        return await self._guarded(request, render, api=True)


def _same_origin(request: Request) -> bool:
    """Whether a form was sent from this page (a browser names the page it came from in
    ``Origin``; tools that send none are let through: they hold the token anyway)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    try:
        return urlsplit(origin).netloc == request.headers.get("host", "")
    except ValueError:  # not a URL at all
        return False


async def _read_form(request: Request) -> dict[str, str] | None:
    """The fields of a small urlencoded form, or None when it is over :data:`MAX_FORM`
    bytes or takes more than :data:`TIMEOUT` seconds to arrive."""
    length = request.headers.get("content-length", "0")
    if not length.isdigit() or int(length) > MAX_FORM:
        return None
    body = b""
    try:
        with anyio.fail_after(TIMEOUT):
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_FORM:
                    return None
    except TimeoutError:
        return None
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    return {name: values[0] for name, values in fields.items() if values}


# -- connections -----------------------------------------------------------------------------
class _Waiting:
    """Connections waiting for a request header, each closed :data:`TIMEOUT` seconds after
    it began to wait; at most ``limit`` of them (the oldest is closed when one more comes).
    Used on the server's event loop only."""

    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout
        self._timers: OrderedDict[Any, asyncio.TimerHandle] = OrderedDict()
        #: connections closed because they waited too long, or to make room
        self.timed_out = 0
        self.evicted = 0

    def __contains__(self, connection: Any) -> bool:
        return connection in self._timers

    def add(self, connection: Any) -> None:
        """``connection`` waits for a request header from now on."""
        self.discard(connection)
        self._timers[connection] = connection.loop.call_later(self.timeout, self._expire,
                                                              connection)
        while len(self._timers) > self.limit:
            oldest, timer = self._timers.popitem(last=False)
            timer.cancel()
            self.evicted += 1
            oldest.drop()

    def discard(self, connection: Any) -> None:
        """``connection`` waits no more (a header came, or it closed)."""
        timer = self._timers.pop(connection, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, connection: Any) -> None:
        if self._timers.pop(connection, None) is not None:
            self.timed_out += 1
            connection.drop()

    def close_all(self) -> None:
        """Close every waiting connection (the server stops)."""
        while self._timers:
            connection, timer = self._timers.popitem()
            timer.cancel()
            connection.drop()


class _GuardedH11(H11Protocol):
    """uvicorn's h11 connection, watched while it waits for a request header (see
    :class:`_Waiting`); it counts against ``limit_concurrency`` only while a request is in
    progress."""

    waiting: _Waiting  # set on the subclass made for each server

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.connections.discard(self)
        self.waiting.add(self)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle and self in self.waiting:  # a whole request header came
            self.waiting.discard(self)
            if not self.transport.is_closing():
                self.connections.add(self)

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():  # kept alive: it waits for the next header
            self.connections.discard(self)
            self.waiting.add(self)
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.waiting.discard(self)
        super().connection_lost(exc)

    def drop(self) -> None:
        """Close the connection (it waited too long for a header)."""
        if not self.transport.is_closing():
            self.transport.close()


class _Server(uvicorn.Server):
    """uvicorn's server, closing the connections that wait for a header when it stops."""

    def __init__(self, config: uvicorn.Config, waiting: _Waiting) -> None:
        super().__init__(config)
        self.waiting = waiting

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.waiting.close_all()
        await super().shutdown(sockets)


# -- the server ------------------------------------------------------------------------------
def parse_address(address: str, keyed: bool) -> tuple[str, int]:
    """``HOST:PORT`` of the page, checked: without keys only a loopback host.

    Raises:
        InputError: malformed, or not loopback without keys.
    """
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise InputError(f"--http wants HOST:PORT, not {address!r}")
    host = host.strip("[]") or "127.0.0.1"
    if keyed:
        return host, int(port)
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(host, int(port),
                                                                type=socket.SOCK_STREAM)}
    except OSError:
        resolved = set()
    if not resolved or not all(_is_loopback(a.split("%")[0]) for a in resolved):
        raise InputError(f"--http {address}: without keys (--insecure-loopback) the status "
                         "page has no login, so it serves loopback only: use "
                         "--http 127.0.0.1:PORT (and an SSH tunnel, ssh -L "
                         "PORT:127.0.0.1:PORT head, to see it from elsewhere), or give "
                         "--server-key and --clients, and the page asks for a login")
    return host, int(port)


def _listen(host: str, port: int, address: str) -> socket.socket:
    try:
        family, kind, proto, _name, where = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise InputError(f"cannot serve the status page on {address} "
                         f"({exc.strerror or exc})") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot serve the status page on {address} ({exc.strerror})") from exc
    return sock  # not inheritable: Ray's processes started later must not hold the port


class StatusPage:
    """The status page, served by uvicorn in a thread of the service.

    Attributes:
        url: where it is served (``http://host:port/``).
        waiting: its guard of connections that wait for a request header.
    """

    def __init__(self, server: _Server, thread: threading.Thread, url: str) -> None:
        self._server = server
        self._thread = thread
        self.url = url
        self.waiting = server.waiting

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving: no new connections, requests in progress end (5 s at most),
        waiting connections are closed."""
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)


def start_status_page(service: Any, address: str) -> StatusPage:
    """Serve the status page of ``service`` on ``HOST:PORT`` in a thread.

    With keys (``service.config.server_key``) every page needs a login and any address may
    be served (plain HTTP: keep it on a private network, or behind a TLS proxy); without
    keys only a loopback address.

    Raises:
        InputError: the address is malformed, not loopback without keys, or in use.
    """
    keyring = service.sockets.keyring
    server_key = service.config.server_key
    keyed = keyring is not None and server_key is not None
    host, port = parse_address(address, keyed)
    sock = _listen(host, port, address)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    if keyed and not _is_loopback(bound[0]):
        logger.warning("the status page on %s:%d is plain HTTP: tokens and pages cross the "
                       "network unencrypted; keep it on a private network or put a TLS "
                       "proxy in front", shown, bound[1])
    tokens = Tokens(server_key.secret, keyring) if keyed else None
    app = StatusApp(service, tokens, cookie=f"renderfarm_{bound[1]}")
    waiting = _Waiting(MAX_WAITING, TIMEOUT)
    protocol = type("GuardedH11", (_GuardedH11,), {"waiting": waiting})
    config = uvicorn.Config(
        app, loop="asyncio", http=protocol, ws="none", lifespan="off", log_config=None,
        access_log=False, server_header=False, limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=KEEP_ALIVE, timeout_graceful_shutdown=5,
        h11_max_incomplete_event_size=MAX_HEADER)
    config.load()
    server = _Server(config, waiting)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="renderfarm-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise InputError(f"the status page did not start on {address}")
        time.sleep(0.02)
    return StatusPage(server, thread, f"http://{shown}:{bound[1]}/")
