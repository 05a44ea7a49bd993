"""The read-only status page of ``renderfarm serve --http HOST:PORT``.

``/`` lists the jobs, ``/job/ID`` shows one job's tasks per worker and the preview of its
latest frame (``/preview/ID.png``), ``/api/jobs`` and ``/api/job/ID`` give the same as JSON.
Nothing on it changes the farm: requests go through the ZeroMQ protocol, with keys.
"""

from __future__ import annotations

import html
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from renderfarm.errors import InputError, ServiceError
from renderfarm.server.protocol import JOB_ID

#: connections served at once (more are closed); seconds a silent connection is kept
MAX_CONNECTIONS = 64
TIMEOUT = 10.0

logger = logging.getLogger(__name__)

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; background: #222; color: #ddd; }
table { border-collapse: collapse; } td, th { padding: .3em .8em; border-bottom: 1px solid #444; }
a { color: #8cf; } .bar { width: 10em; height: .8em; background: #444; display: inline-block; }
.bar span { display: block; height: 100%; background: #6c6; }
.failed { color: #f77; } .done { color: #7d7; } img { image-rendering: pixelated; }
"""


def _page(title: str, body: str, refresh: bool) -> bytes:
    meta = '<meta http-equiv="refresh" content="2">' if refresh else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'>{meta}"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>{body}</body></html>").encode()


def _bar(done: int, total: int) -> str:
    share = 100 * done / total if total else 0
    return f"<span class='bar'><span style='width:{share:.0f}%'></span></span> {done}/{total}"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def jobs_page(service: Any) -> bytes:
    """The job list."""
    rows = []
    for job in service.store.jobs():
        j = job.to_dict()
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
    return _page("renderfarm jobs", body, refresh=True)


def job_page(service: Any, job_id: str) -> bytes:
    """One job: its state, its tasks per worker, its preview."""
    job = service.store.job(job_id).to_dict()
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
                 refresh=job["state"] in ("queued", "running", "paused"))


class _Handler(BaseHTTPRequestHandler):
    service: Any = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        logger.debug("http: " + format, *args)

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        path = self.path.split("?", 1)[0]
        service = self.service
        if not _known_path(path):  # the page's own paths, with a job id, and nothing else
            self._send(404, b"not found", "text/plain")
            return
        try:
            if path == "/":
                self._send(200, jobs_page(service), "text/html; charset=utf-8")
            elif path.startswith("/job/"):
                self._send(200, job_page(service, path[5:]), "text/html; charset=utf-8")
            elif path == "/api/jobs":
                body = json.dumps([j.to_dict() for j in service.store.jobs()]).encode()
                self._send(200, body, "application/json")
            elif path.startswith("/api/job/"):
                job = service.store.job(path[9:]).to_dict()
                self._send(200, json.dumps(job).encode(), "application/json")
            elif path.startswith("/preview/") and path.endswith(".png"):
                image = service.preview_png(path[9:-4])
                if image is None:
                    self._send(404, b"no preview yet", "text/plain")
                else:
                    self._send(200, image, "image/png")
            else:
                self._send(404, b"not found", "text/plain")
        except ServiceError as exc:
            self._send(404, exc.one_line().encode(), "text/plain; charset=utf-8")
        except Exception:
            logger.exception("status page failed on %s", path)
            self._send(500, b"internal error", "text/plain")


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


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most :data:`MAX_CONNECTIONS` at once (more are closed at
    once); each connection times out after :data:`TIMEOUT` seconds of silence."""

    daemon_threads = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def start_status_page(service: Any, address: str) -> ThreadingHTTPServer:
    """Serve the status page of ``service`` on ``host:port`` in a thread.

    The page has no login yet, so it serves loopback addresses only (reach it from another
    machine through an SSH tunnel).

    Raises:
        InputError: the address is malformed, not loopback, or in use.
    """
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise InputError(f"--http wants HOST:PORT, not {address!r}")
    host = host.strip("[]") or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise InputError(f"--http {address}: the status page shows every job and has no login "
                         "yet, so it serves loopback only: use 127.0.0.1:PORT and an SSH "
                         "tunnel (ssh -L PORT:127.0.0.1:PORT head) to see it from elsewhere")
    handler = type("Handler", (_Handler,), {"service": service, "timeout": TIMEOUT})
    try:
        server = _BoundedServer((host, int(port)), handler)
    except OSError as exc:
        raise InputError(f"cannot serve the status page on {address} ({exc.strerror})") from exc
    threading.Thread(target=server.serve_forever, name="renderfarm-http", daemon=True).start()
    return server
