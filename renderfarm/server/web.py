"""The status page of ``renderfarm serve --http HOST:PORT``: a Starlette app served by uvicorn
in a thread of the service.

``/`` lists the jobs (filtered by ``?state=`` and ``?owner=``), ``/job/ID`` shows one job
(its frames with a thumbnail each, its tasks, the preview of its latest frame, its ETA) with
its actions: cancel, pause, resume, priority, requeue of failed or chosen frames;
``/workers`` lists the workers, where an admin takes one out or puts it back; ``/log/ID``
and ``/report/ID`` show a job's task logs and report. Actions go through the HTTP API
(:mod:`renderfarm.server.api`, ``/api/v1``), so through the same checks as the ZeroMQ
protocol; pages update themselves from its event stream (server-sent events).
``/api/jobs`` and ``/api/job/ID`` give the lists as JSON.

**Login.** A service with keys asks for a login on every page: a client's token is
:func:`~renderfarm.server.keyring.web_token` of its public key (``renderfarm web-token``
prints it), sent with each request as ``Authorization: Bearer TOKEN``, or once through the
login form (``POST /login``, from the page itself: the user presses its button; a login link
``/login#token=...`` only fills it in). The form's answer starts a session
(:class:`~renderfarm.server.admission.Sessions`): the HttpOnly, SameSite=Strict cookie holds
a random session id, never the token; it expires, ``POST /logout`` ends it. Tokens are
recomputed from the keys the service allows now, so a key removed from ``--clients`` stops
its token, its sessions and its event streams at once. A client sees its own jobs only (an
admin: all); to anyone else a job does not exist (404), as in the protocol. Without keys
(``--insecure-loopback``) there is no login, and the page serves loopback only.

**Shares.** Every request is counted against its client's share
(:class:`~renderfarm.server.admission.Admission`) before a byte of its body is read;
requests without a valid login have their own small budget. Bodies have a deadline and a
minimum rate (:func:`~renderfarm.server.api.read_body`); they are parsed, and pages made, on
at most :data:`WORKER_THREADS` threads, :data:`THREADS_PER_CLIENT` at most for one client.
Every answer, Starlette's and uvicorn's own included, has the security headers and the
Content-Security-Policy :data:`CSP` (the pages' scripts are ``/static/*.js``); refusals are
logged a few lines per kind per interval.

**Connections.** uvicorn itself never times out a connection that has not sent a whole
request header (its keep-alive timer starts only after a response, and any byte received
stops it). :class:`_Waiting` guards that: a connection waiting for a request header (a new
one, or a kept-alive one between requests) is closed :data:`TIMEOUT` seconds after it began
to wait, whatever it sends meanwhile; at most :data:`MAX_WAITING` wait at once (the oldest is
closed when one more comes). A header is at most :data:`MAX_HEADER` bytes (h11's incomplete
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import anyio
import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from renderfarm.errors import InputError, ServiceError
from renderfarm.report import call_cells, call_title
from renderfarm.server import protocol
from renderfarm.server.admission import Admission, Sessions
from renderfarm.server.api import EventStreams, openapi, read_body, reply_response
from renderfarm.server.keyring import LOCAL, Caller, web_token
from renderfarm.server.protocol import JOB_ID
from renderfarm.server.quiet import QuietFilter, QuietLog

logger = logging.getLogger(__name__)

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
WORKER_THREADS = 6
#: of those, the most one client's requests use at once (its other requests wait their turn)
THREADS_PER_CLIENT = 2
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
#flash.ok { color: #7d7; } #flash.failed { color: #f77; } .thumb { width: 96px; }
button { margin-right: .3em; } input { width: 7em; } .paused { color: #fc6; }
.suspect, .disabled, .bad { color: #f77; } pre { white-space: pre-wrap; }
button:disabled { opacity: .45; cursor: not-allowed; }
"""

#: the pages' script (``/static/app.js``): actions post to the HTTP API; the event stream
#: refreshes the page's content (never its forms); the kept buttons follow the job's state
_APP_JS = """'use strict';
const flash = (text, ok) => { const f = document.getElementById('flash');
  f.textContent = text; f.className = ok ? 'ok' : 'failed'; };
async function act(op, fields) {
  const answer = await fetch('/api/v1/' + op, {method: 'POST', credentials: 'same-origin',
    headers: {'Content-Type': 'application/json'}, body: JSON.stringify(fields)});
  const reply = await answer.json().catch(() => ({}));
  if (answer.ok) { flash(op + ': done', true); } else {
    flash(reply.error ? reply.error.message : ('HTTP ' + answer.status), false); }
  document.body.dataset.acted = (parseInt(document.body.dataset.acted || '0') + 1);
  refresh();
}
document.addEventListener('click', (e) => {
  const button = e.target.closest('button[data-op]');
  if (!button) return;
  e.preventDefault();
  if (button.disabled) return;
  const fields = JSON.parse(button.dataset.fields || '{}');
  let value = '';
  if (button.dataset.input) {
    value = document.getElementById(button.dataset.input).value.trim();
    fields[button.dataset.key] = button.dataset.int ? parseInt(value, 10) : value;
  }
  if (button.dataset.confirm && !confirm(button.dataset.confirm.replace('{value}', value))) {
    flash(button.textContent + ': not done', false);
    return;
  }
  act(button.dataset.op, fields);
});
function applyState() {  // the actions that cannot apply to the job as it is now
  const why = document.getElementById('why-not');
  if (!why) return;
  const reasons = JSON.parse(why.textContent);
  for (const button of document.querySelectorAll('button[data-action]')) {
    const reason = reasons[button.dataset.action];
    button.disabled = !!reason;
    if (reason) { button.title = reason; } else { button.removeAttribute('title'); }
  }
}
function watchPreview() {  // says the preview's size once it has loaded (tests read it)
  const image = document.getElementById('preview');
  if (!image) return;
  const seen = () => { if (image.naturalWidth) {
    document.body.dataset.preview = image.naturalWidth + 'x' + image.naturalHeight; } };
  image.addEventListener('load', seen);
  if (image.complete) seen();
}
let waiting = null;
function refresh() {
  if (waiting) return;
  waiting = setTimeout(async () => {
    waiting = null;
    const answer = await fetch(location.href, {credentials: 'same-origin',
                                               headers: {'X-Fragment': '1'}});
    if (answer.ok) {
      document.getElementById('content').innerHTML = await answer.text();
      applyState();
      watchPreview();
      document.body.dataset.updates = (parseInt(document.body.dataset.updates || '0') + 1);
    }
  }, 200);
}
applyState();
watchPreview();
const job = document.body.dataset.job;
const stream = new EventSource('/api/v1/events'
                               + (job ? '?job_id=' + encodeURIComponent(job) : ''));
stream.onopen = () => { document.body.dataset.live = '1'; };
stream.onmessage = () => refresh();
"""

#: the login page's script (``/static/login.js``): a login link ``/login#token=TOKEN`` fills
#: the form, and the user logs in by pressing its button (a link alone logs nobody in)
_LOGIN_JS = """'use strict';
if (location.hash.startsWith('#token=')) {  // the token never reaches a server log
  const form = document.getElementById('login');
  form.token.value = decodeURIComponent(location.hash.slice(7));
  history.replaceState(null, '', location.pathname + location.search);
  form.querySelector('button').focus();
  document.getElementById('filled').hidden = false;
}
"""

#: the scripts the pages load (the only scripts they may run: see the policy below)
_STATIC = {"app.js": _APP_JS, "login.js": _LOGIN_JS}

#: what a page may load and run: its own scripts and connections only, no frames, forms
#: sent to itself only (inline styles are allowed: progress bars, the report's look)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")

#: headers of every answer: nothing cached, framed or sniffed, no referrer to other sites
#: (a form sent with "no-referrer" would say Origin: null, and the login refuses that)
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
            "Content-Security-Policy": CSP}

# -- pages -----------------------------------------------------------------------------------
def _page(title: str, body: str, caller: Caller | None = None,
          live: str | None = None, actions: str = "") -> bytes:
    """A whole page; with ``live`` (``""`` for every job, or a job id) its ``body`` is the
    part the event stream refreshes, below the (kept) ``actions``."""
    top = _top(caller)
    if live is None:
        return (f"<!doctype html><html><head><meta charset='utf-8'>"
                f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
                f"<body>{top}{body}</body></html>").encode()
    return (f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body data-job='{html.escape(live)}'>{top}<p id='flash'></p>{actions}"
            f"<div id='content'>{body}</div><script src='/static/app.js'></script>"
            "</body></html>").encode()


def _top(caller: Caller | None) -> str:
    """The top of every page: who is logged in (and a log-out button), the navigation."""
    who = ""
    if caller is not None and caller.name != LOCAL:
        role = " (admin)" if caller.admin else ""
        who = (f"<div id='who'>{html.escape(caller.name)}{role} <form method='post' "
               "action='/logout'><button>log out</button></form></div>")
    nav = ("<p id='nav'><a href='/'>jobs</a> · <a href='/workers'>workers</a></p>"
           if caller is not None else "")
    return who + nav


def _button(op: str, label: str, fields: dict[str, Any], why_not: str | None = None,
            **more: str) -> str:
    """An action's button; ``why_not``: why it cannot apply now (it is then disabled and
    says why when pointed at)."""
    extra = "".join(f" data-{k}='{html.escape(v)}'" for k, v in more.items())
    off = f" disabled title='{html.escape(why_not)}'" if why_not else ""
    return (f"<button data-op='{op}' data-fields='{html.escape(json.dumps(fields))}'{extra}"
            f"{off}>{html.escape(label)}</button>")


#: the job page's actions: ``(id, what it does)``; :func:`job_actions` says which apply
#: frames a job page lists (the others are on its next pages)
FRAMES_PER_PAGE = 100
#: jobs the jobs page lists
JOBS_PER_PAGE = 200

ACTIONS = ("cancel", "pause", "resume", "priority", "requeue-failed", "requeue-frames")


def job_actions(job: dict[str, Any]) -> dict[str, str | None]:
    """Which of a job's :data:`ACTIONS` apply to it as it is: ``{action: None}`` when it
    applies, else ``{action: why not}`` in the user's words (pure: the job's fields only)."""
    state = job["state"]
    ended = state in protocol.FINAL_STATES
    is_now = f"the job is {state}"
    missing = int(job.get("frames_total") or 0) - int(job.get("frames_done") or 0)
    return {
        "cancel": f"{is_now}: it has ended" if ended else None,
        "pause": None if state in ("queued", "running") else
        f"{is_now}: only a queued or running job pauses",
        "resume": None if state == "paused" else f"{is_now}: only a paused job resumes",
        "priority": f"{is_now}: it has ended (requeue it first)" if ended else None,
        "requeue-failed": (f"{is_now}: only a job that has ended is requeued" if not ended
                           else "every frame is written: name frames to render again"
                           if missing <= 0 and job.get("frames_total") else None),
        "requeue-frames": None if ended else
        f"{is_now}: only a job that has ended is requeued",
    }


def _bar(done: int, total: int) -> str:
    share = 100 * done / total if total else 0
    return f"<span class='bar'><span style='width:{share:.0f}%'></span></span> {done}/{total}"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def _when(at: float | None) -> str:
    """A moment as the page shows it: the head's local time, to the second (the exact
    time, in UTC, is the element's ``datetime``)."""
    if not at:
        return ""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    return (f"<time datetime='{stamp}'>"
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))}</time>")


def jobs_page(service: Any, caller: Caller, state: str = "", owner: str = "",
              fragment: bool = False, page: int = 1) -> bytes:
    """The list of the jobs ``caller`` may see (of one state, of one owner),
    :data:`JOBS_PER_PAGE` a page (``page``)."""
    rows = []
    chosen = [row for row in service.jobs_for(caller)
              if not (state and row.state != state)
              and not (owner and (row.client or "") != owner)]
    page = max(1, page)
    for row in chosen[(page - 1) * JOBS_PER_PAGE:page * JOBS_PER_PAGE]:
        j = service.public_job(row)
        rows.append(
            f"<tr class='job {html.escape(j['state'])}' data-job='{html.escape(j['job_id'])}'>"
            f"<td><a href='/job/{html.escape(j['job_id'])}'>{html.escape(j['job_id'])}</a></td>"
            f"<td>{html.escape(j['name'])}</td>"
            f"<td class='owner'>{html.escape(j['owner'] or '')}</td>"
            f"<td class='submitted'>{_when(j['created'])}</td>"
            f"<td class='state'>{html.escape(j['state'])}</td>"
            f"<td>{j['priority']}</td><td>{_bar(j['tasks_done'], j['tasks_total'])}</td>"
            f"<td>{_bar(j['frames_done'], j['frames_total'])}</td>"
            f"<td>{_seconds(j['elapsed'])}</td>"
            f"<td class='failed'>{html.escape(j['error'] or '')}</td></tr>")
    body = ("<table id='jobs'><tr><th>job</th><th>name</th><th>owner</th><th>submitted</th>"
            "<th>state</th>"
            "<th>priority</th><th>tasks</th><th>frames</th><th>elapsed</th><th></th></tr>"
            + "".join(rows) + "</table>"
            + _pages(page, len(chosen), JOBS_PER_PAGE, "jobs", "page",
                     {k: v for k, v in (("state", state), ("owner", owner)) if v}))
    if fragment:
        return body.encode()
    states = "".join(f"<option{' selected' if s == state else ''}>{s}</option>"
                     for s in ("", "queued", "running", "paused", "done", "failed",
                               "cancelled"))
    filters = ("<h1>renderfarm</h1><form id='filter' method='get' action='/'>state <select "
               f"name='state'>{states}</select> owner <input name='owner' "
               f"value='{html.escape(owner)}'> <button>show</button></form>")
    return _page("renderfarm jobs", body, caller=caller, live="",
                 actions=filters)


def _pages(page: int, total: int, size: int, what: str, key: str,
           keep: dict[str, str] | None = None) -> str:
    """The line that says which ``what`` a page shows and links its neighbours (with the
    query's other values ``keep``)."""
    if total <= size:
        return ""
    last = (total - 1) // size + 1
    first = (page - 1) * size + 1
    links = [f"<a class='page' href='?{html.escape(urlencode({**(keep or {}), key: n}))}'>"
             f"{label}</a>"
             for n, label in ((page - 1, "previous"), (page + 1, "next")) if 1 <= n <= last]
    return (f"<p class='pages' id='{key}-pages'>{what} {first}–{min(total, page * size)} of "
            f"{total}: page {page} of {last} " + " · ".join(links) + "</p>")


def job_page(service: Any, caller: Caller, job_id: str, fragment: bool = False,
             page: int = 1) -> bytes:
    """One job: its state, ETA, frames (a thumbnail each, :data:`FRAMES_PER_PAGE` a page:
    ``page``), tasks per worker and the latest calls, its preview; and its actions. What it
    reads of the database does not grow with the job's length.

    Raises:
        ServiceError: ``not_found``: no such job, or another client's.
    """
    row = service.job_for(caller, job_id)
    job = service.public_job(row)
    e = html.escape
    escaped = e(job_id)
    rows = "".join(
        f"<tr class='worker'><td>{e(w)}</td><td>{calls}</td><td>{tiles}</td>"
        f"<td>{seconds:.2f} s</td></tr>"
        for w, calls, tiles, seconds in service.store.worker_totals(job_id))
    page = max(1, page)
    shown, total = service.store.frames_page(job_id, (page - 1) * FRAMES_PER_PAGE,
                                             FRAMES_PER_PAGE)
    hashes = service.store.hashes_of(job_id, shown)
    frames = "".join(
        f"<tr class='frame' data-frame='{f}'><td>{f}</td><td><img class='thumb' "
        f"loading='lazy' alt='frame {f}' src='/thumb/{escaped}/{f}.png'></td>"
        f"<td>{e(Path(name).name)}</td><td><code>{e(hashes.get(f, '')[:16])}</code></td></tr>"
        for f, name in shown.items())
    frames_nav = _pages(page, total, FRAMES_PER_PAGE, "frames", "frames")
    calls = "".join(
        f"<tr class='call {'done' if c['ok'] else 'failed'}'>"
        + "".join(f"<td>{e(cell)}</td>" for cell in call_cells(c))
        + f"<td>{c['attempt']}</td><td>{e(c['worker'] or '')}</td>"
        f"<td>{'ok' if c['ok'] else e(c['error'] or 'failed')}</td></tr>"
        for c in service.store.latest_logs(job_id, 100))
    eta = service.job_eta(job_id)
    waiting = service.job_waiting(row)
    body = (f"<h1>{e(job['name'])} <small>{escaped}</small></h1>"
            f"<p>state <b id='state' class='{e(job['state'])}'>{e(job['state'])}</b>, "
            f"priority <b id='priority'>{job['priority']}</b>, owner {e(job['owner'] or '')}, "
            f"tasks {_bar(job['tasks_done'], job['tasks_total'])}, frames "
            f"{_bar(job['frames_done'], job['frames_total'])}, {_seconds(job['elapsed'])}"
            + (f", ETA <span id='eta'>{_seconds(eta)}</span>" if eta is not None else
               ", ETA <span id='eta'>paused</span>" if job["state"] == "paused" else "")
            + "</p>"
            + (f"<p id='waiting'>{e(waiting)}</p>" if waiting else "")
            + f"<p class='failed' id='error'>{e(job['error'] or '')}</p>"
            + "".join(f"<p class='warning'>{e(w)}</p>" for w in job["warnings"])
            + f"<h2>Frames</h2>{frames_nav}<table id='frames'><tr><th>frame</th><th></th>"
            f"<th>file</th><th>SHA-256</th></tr>{frames}</table>"
            "<h2>Calls per worker</h2><table id='workers'><tr><th>worker</th><th>calls</th>"
            f"<th>tiles</th><th>render time</th></tr>{rows}</table>"
            "<h2>Latest calls</h2><table id='calls'><tr><th>frame</th><th>tile</th>"
            "<th>call</th><th>attempt</th><th>worker</th><th>result</th></tr>"
            f"{calls}</table>"
            f"<h2>Preview</h2><img id='preview' alt='no preview yet' "
            f"src='/preview/{escaped}.png?{job['tasks_done']}'>")
    why_not = job_actions(job)
    # what the script applies to the (kept) buttons after each refresh
    reasons = json.dumps(why_not).replace("<", "\\u003c")
    body += f"<script type='application/json' id='why-not'>{reasons}</script>"
    if fragment:
        return body.encode()
    target = {"job_id": job_id}
    name = f"{job['name']} ({job_id})" if job["name"] else job_id
    actions = ("<p id='actions'>"
               + _button("cancel", "Cancel", target, why_not["cancel"], action="cancel",
                         confirm=f"Cancel job {name}? Its running tasks stop; the frames it "
                         "wrote are kept.")
               + _button("pause", "Pause", target, why_not["pause"], action="pause")
               + _button("resume", "Resume", target, why_not["resume"], action="resume")
               + "<input id='new-priority' type='number' placeholder='priority'> "
               + _button("priority", "Set priority", target, why_not["priority"],
                         action="priority", input="new-priority", key="priority", int="1")
               + _button("requeue", "Requeue failed frames", {**target, "failed": True},
                         why_not["requeue-failed"], action="requeue-failed",
                         confirm=f"Render the frames job {name} did not write again?")
               + "<input id='requeue-frames' placeholder='frames, e.g. 2,5-7'> "
               + _button("requeue", "Requeue frames", target, why_not["requeue-frames"],
                         action="requeue-frames", input="requeue-frames", key="frames",
                         confirm=f"Render frames {{value}} of job {name} again? Their files "
                         "are written over.")
               + f" <a href='/log/{escaped}'>task logs</a> · "
               f"<a href='/report/{escaped}'>report</a></p>")
    return _page(f"renderfarm {job_id}", body, caller=caller, live=job_id,
                 actions=actions)


def workers_page(service: Any, caller: Caller, fragment: bool = False) -> bytes:
    """The farm's workers; an admin has buttons to take one out or put it back."""
    e = html.escape
    rows = []
    for w in service.workers_for(caller):
        buttons = ""
        if caller.admin:
            buttons = (_button("worker", "Enable", {"worker_id": w["worker"], "enabled": True})
                       if w["state"] in ("disabled", "suspect") else
                       _button("worker", "Disable", {"worker_id": w["worker"],
                                                     "enabled": False}))
        rows.append(f"<tr class='worker {e(w['state'])}' data-worker='{e(w['worker'])}'>"
                    f"<td>{e(w['worker'])}</td><td class='state'>{e(w['state'])}</td>"
                    f"<td>{e(w['device'] or '')}</td><td>{e(str(w['node'])[:12])}</td>"
                    f"<td class='current'>{e(w.get('current') or '')}</td>"
                    f"<td class='tasks'>{w['tasks_done']}</td>"
                    f"<td class='calls'>{w.get('calls', w['tasks_done'])}</td>"
                    f"<td>{w['failures']}</td>"
                    f"<td class='blenders'>{e(', '.join(w.get('blenders') or []))}</td>"
                    f"<td>{e(w['reason'] or '')}</td><td>{buttons}</td></tr>")
    body = ("<h1>Workers</h1><table id='farm-workers'><tr><th>worker</th><th>state</th>"
            "<th>device</th><th>node</th><th>current task</th>"
            "<th title='tiles or frames it finished, as progress counts them'>tasks</th>"
            "<th title='worker calls: one call may render several grouped tiles'>calls</th>"
            "<th>failures</th>"
            "<th title='the Blenders its machine has'>Blenders</th>"
            "<th>why</th><th></th>"
            "</tr>" + "".join(rows) + "</table>")
    if fragment:
        return body.encode()
    return _page("renderfarm workers", body, caller=caller, live="")


def log_page(service: Any, caller: Caller, job_id: str, frame: int | None) -> bytes:
    """What Blender printed for a job's tasks."""
    row = service.job_for(caller, job_id)
    e = html.escape
    parts = [f"<h1>Task logs of {e(row.name)} <small>{e(job_id)}</small></h1>"]
    for entry in service.store.logs(job_id, frame):
        status = "ok" if entry["ok"] else f"failed: {entry['error'] or ''}"
        parts.append(f"<h3 class='{'done' if entry['ok'] else 'failed'}'>"
                     f"{e(call_title(entry))} attempt {entry['attempt']} "
                     f"on {e(entry['worker'] or '')}: {e(status)}</h3>"
                     f"<pre>{e(service.scrub(entry['log']))}</pre>")
    return _page(f"renderfarm log {job_id}", "".join(parts), caller=caller)


def report_page(service: Any, caller: Caller, job_id: str) -> bytes:
    """A job's report in the web app's look, with its navigation and a link back to the
    job's page.

    Raises:
        ServiceError: ``not_found``: no such job, or another client's.
    """
    escaped = html.escape(job_id)
    header = (_top(caller) + f"<p id='back'><a href='/job/{escaped}'>&larr; back to job "
              f"{escaped}</a> · <a href='/log/{escaped}'>task logs</a></p>")
    return service.report_page(caller, job_id, style=_STYLE, header=header)


def login_page(next_path: str, wrong: bool = False) -> bytes:
    """The login form (a login link ``/login#token=TOKEN`` fills it; the user sends it)."""
    note = "<p class='failed' id='wrong'>That token is not valid.</p>" if wrong else ""
    body = ("<h1>renderfarm</h1><p>This farm's status page needs a login. Get your token "
            "with <code>renderfarm web-token</code>.</p>" + note +
            "<p id='filled' hidden>The link filled in a token: press <b>Log in</b> to log in "
            "with it.</p>"
            "<form id='login' method='post' action='/login'>"
            f"<input type='hidden' name='next' value='{html.escape(next_path)}'>"
            "<label>Token <input name='token' type='password' size='70' autocomplete='off' "
            "autofocus></label> <button>Log in</button></form>"
            "<script src='/static/login.js'></script>")
    return _page("renderfarm login", body)


def _known_path(path: str) -> bool:
    """Whether ``path`` is one of the page's: ``/``, ``/api/jobs``, or ``/job/ID``,
    ``/api/job/ID``, ``/preview/ID.png`` with a valid job id (never a dot name or a
    folder)."""
    if path in ("/", "/api/jobs", "/workers"):
        return True
    for prefix, suffix in (("/job/", ""), ("/api/job/", ""), ("/preview/", ".png"),
                           ("/log/", ""), ("/report/", "")):
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
        self._keys: tuple[str, ...] = ()
        self._table: list[tuple[bytes, Caller]] = []

    def _callers(self) -> list[tuple[bytes, Caller]]:
        """Every allowed caller with its token (tokens made again when the keys change)."""
        callers = self._keyring.callers()
        keys = tuple(sorted(f"{c.name} {c.key} {c.admin}" for c in callers))
        if keys != self._keys:
            self._table = [(web_token(self._secret, c.key).encode(), c) for c in callers]
            self._keys = keys
        return self._table

    def caller(self, token: str | None) -> Caller | None:
        """The caller whose token this is, or None (compared in constant time with every
        allowed key's token)."""
        if not token or len(token) > _MAX_TOKEN:
            return None
        given = token.encode("utf-8", "replace")
        found = None
        for expected, caller in self._callers():
            if hmac.compare_digest(expected, given):
                found = caller
        return found

    def by_key(self, key: str) -> Caller | None:
        """The caller of this public key (Z85) if it is still allowed, else None."""
        for _token, caller in self._callers():
            if caller.key == key:
                return caller
        return None

    def allowed_keys(self) -> set[str]:
        """The public keys allowed now."""
        return {caller.key for _token, caller in self._callers()}


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
#: where a request's caller is kept in its ASGI scope
_CALLER = "renderfarm.caller"
#: where the session a request came with is kept in its ASGI scope
_SESSION = "renderfarm.session"


def _secured(send: Callable[[dict[str, Any]], Awaitable[None]]
             ) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """``send`` adding the security headers to every answer that lacks them (Starlette's
    own 404, 405 and 500 included)."""
    extra = [(k.lower().encode(), v.encode()) for k, v in _HEADERS.items()]

    async def secured(message: dict[str, Any]) -> None:
        if message.get("type") == "http.response.start":
            have = {name.lower() for name, _value in message.get("headers", [])}
            message = {**message, "headers": [*message.get("headers", []),
                                              *((k, v) for k, v in extra if k not in have)]}
        await send(message)

    return secured


class StatusApp:
    """The page's routes, with the login and admission in front of every one.

    Every request is counted against its client's share (:mod:`~renderfarm.server.admission`)
    before anything of its body is read; the work it asks for runs on the page's threads, at
    most :data:`THREADS_PER_CLIENT` of them per client.

    Args:
        service: the :class:`~renderfarm.server.service.FarmService`.
        tokens: who the tokens are; None without keys (no login, loopback only).
        cookie: the login cookie's name.
    """

    def __init__(self, service: Any, tokens: Tokens | None, cookie: str) -> None:
        self.service = service
        self.tokens = tokens
        self.cookie = cookie
        self.admission = Admission()
        self.sessions = Sessions(age=COOKIE_AGE)
        #: refusals, logged a few lines per kind at most
        self.quiet = QuietLog(logger)
        self._limiter: Any = None
        self._gates: dict[str, Any] = {}
        self._removals = -1
        self.app = Starlette(routes=[
            Route("/", self._jobs, methods=["GET"]),
            Route("/job/{job_id}", self._job, methods=["GET"]),
            Route("/preview/{name}", self._preview, methods=["GET"]),
            Route("/api/jobs", self._api_jobs, methods=["GET"]),
            Route("/api/job/{job_id}", self._api_job, methods=["GET"]),
            Route("/login", self._login, methods=["GET", "POST"]),
            Route("/logout", self._logout, methods=["POST"]),
            Route("/workers", self._workers, methods=["GET"]),
            Route("/log/{job_id}", self._log, methods=["GET"]),
            Route("/report/{job_id}", self._report, methods=["GET"]),
            Route("/thumb/{job_id}/{name}", self._thumb, methods=["GET"]),
            Route("/static/{name}", self._static, methods=["GET"]),
            Route("/api/v1/openapi.json", self._openapi, methods=["GET"]),
            Route("/api/v1/events", self._events, methods=["GET"]),
            Route("/api/v1/upload", self._api_upload, methods=["PUT"]),
            Route("/api/v1/{op}", self._api_call, methods=["POST"]),
        ])
        self.streams = EventStreams(service, self.admission)
        self.app.router.redirect_slashes = False  # only the page's own paths, as they are

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _secured(send)
        request = Request(scope)
        caller, session = self._identify(request)
        scope[_CALLER], scope[_SESSION] = caller, session
        if scope.get("path") == "/api/v1/events":  # long-lived: counted as streams
            await self.app(scope, receive, send)
            return
        name = caller.name if caller is not None else None
        address = str((scope.get("client") or ("?",))[0])
        refused = self.admission.enter(name, address)
        if refused is not None:
            self.quiet.note("refused", "status page: %s refused: %s", name or address, refused)
            busy = refused.startswith("the farm's page is busy")
            await _answer(503 if busy else 429, refused.encode(),
                          headers={"Retry-After": "2"})(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.leave(name, address)

    def _identify(self, request: Request) -> tuple[Caller | None, str | None]:
        """Who sent a request (None: no valid login) and the session it came with: a
        ``Bearer`` token, else the login cookie's session; a session whose key is no longer
        allowed has ended."""
        if self.tokens is None:
            return Caller(LOCAL, admin=True), None
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return self.tokens.caller(auth[7:].strip()), None
        session_id = request.cookies.get(self.cookie)
        if not session_id:
            return None, None
        now = time.time()
        removals = self.service.sockets.keyring.removals
        if removals != self._removals:  # a key went away: its sessions end now
            self._removals = removals
            self.sessions.end_unless(self.tokens.allowed_keys())
        session = self.sessions.get(session_id, now)
        if session is None:
            return None, None
        caller = self.tokens.by_key(session.key)
        if caller is None or caller.name != session.name:
            self.sessions.end(session_id)
            return None, None
        return caller, session_id

    def still_allowed(self, caller: Caller, session: str | None) -> bool:
        """Whether what ``caller`` opened may go on: its key is still allowed (as the same
        client) and the session it came with has not ended."""
        if self.tokens is None:
            return True
        now = self.tokens.by_key(caller.key)
        if now is None or now.name != caller.name or now.admin != caller.admin:
            return False
        return session is None or self.sessions.get(session, time.time()) is not None

    async def _run(self, who: str, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on one of the page's few threads (the database blocks), at
        most :data:`THREADS_PER_CLIENT` at once for one client (``who``): the others wait
        their turn, other clients do not."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(WORKER_THREADS)
        gate = self._gates.get(who)
        if gate is None:
            gate = self._gates[who] = anyio.Semaphore(THREADS_PER_CLIENT)
        async with gate:
            return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)

    # -- the login ---------------------------------------------------------------------------
    @staticmethod
    def _caller(request: Request) -> Caller | None:
        return request.scope.get(_CALLER)

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
            caller = self._caller(request)
            if caller is None:
                return self._login_needed(request, api)
            return await self._run(caller.name, render, caller)
        except ServiceError as exc:  # not_found: no such job, or another client's
            if api:
                return _answer(404, json.dumps({"error": exc.one_line()}).encode(), _JSON)
            return _answer(404, _page("renderfarm: not found", "<p><a href='/'>all jobs</a>"
                                      f"</p><p>{html.escape(exc.one_line())}</p>"),
                           _HTML)
        except Exception:
            logger.exception("status page failed on %s", request.url.path[:200])
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
            return _answer(413, b"the login form is too big, has too many fields or came too "
                           b"slowly")
        next_path = form.get("next") or "/"
        if not _known_path(next_path):
            next_path = "/"
        token = form.get("token", "").strip()
        assert self.tokens is not None
        caller = self.tokens.caller(token)
        if caller is None:
            self.quiet.note("login", "status page: a login with a wrong token")
            return _answer(401, login_page(next_path, wrong=True), _HTML)
        old = request.cookies.get(self.cookie)
        if old:
            self.sessions.end(old)  # a new login never keeps an old session's id
        session_id = self.sessions.start(caller.name, caller.key, time.time())
        answer = RedirectResponse(next_path, 303, headers=_HEADERS)
        answer.set_cookie(self.cookie, session_id, max_age=COOKIE_AGE, path="/",
                          httponly=True, samesite="strict")
        logger.info("status page: %s logged in", caller.name)
        return answer

    async def _logout(self, request: Request) -> Response:
        if not _same_origin(request):
            return _answer(403, b"a logout must come from this page's own form")
        ended = self.sessions.end(request.cookies.get(self.cookie))
        if ended:
            logger.info("status page: %s logged out", getattr(self._caller(request), "name",
                                                               "someone"))
        answer = RedirectResponse("/login", 303, headers=_HEADERS)
        answer.delete_cookie(self.cookie, path="/", httponly=True, samesite="strict")
        return answer

    async def _static(self, request: Request) -> Response:
        script = _STATIC.get(request.path_params["name"])
        if script is None:
            return _answer(404, b"not found")
        return _answer(200, script.encode(), "text/javascript; charset=utf-8")

    # -- the pages ---------------------------------------------------------------------------
    async def _jobs(self, request: Request) -> Response:
        state = request.query_params.get("state", "")[:16]
        owner = request.query_params.get("owner", "")[:64]
        fragment = request.headers.get("x-fragment") == "1"
        page = request.query_params.get("page", "1")[:9]
        number = int(page) if page.isdigit() else 1
        return await self._guarded(request, lambda caller: _answer(
            200, jobs_page(self.service, caller, state, owner, fragment, number), _HTML))

    async def _job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if not JOB_ID.match(job_id):
            return _answer(404, b"not found")
        fragment = request.headers.get("x-fragment") == "1"
        page = request.query_params.get("frames", "1")[:9]
        number = int(page) if page.isdigit() else 1
        return await self._guarded(request, lambda caller: _answer(
            200, job_page(self.service, caller, job_id, fragment, number), _HTML))

    async def _workers(self, request: Request) -> Response:
        fragment = request.headers.get("x-fragment") == "1"
        return await self._guarded(request, lambda caller: _answer(
            200, workers_page(self.service, caller, fragment), _HTML))

    async def _log(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        frame = _small_int(request.query_params.get("frame"))
        if not JOB_ID.match(job_id) or frame is False:
            return _answer(404, b"not found")
        return await self._guarded(request, lambda caller: _answer(
            200, log_page(self.service, caller, job_id, frame), _HTML))

    async def _report(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if not JOB_ID.match(job_id):
            return _answer(404, b"not found")

        def render(caller: Caller) -> Response:
            return _answer(200, report_page(self.service, caller, job_id), _HTML)

        return await self._guarded(request, render)

    async def _thumb(self, request: Request) -> Response:
        job_id, name = request.path_params["job_id"], request.path_params["name"]
        frame = _small_int(name[:-4]) if name.endswith(".png") else False
        if not JOB_ID.match(job_id) or frame is None or frame is False:
            return _answer(404, b"not found")

        def render(caller: Caller) -> Response:
            image = self.service.frame_thumbnail(caller, job_id, frame)
            if image is None:
                return _answer(404, b"no such frame written")
            return _answer(200, image, "image/png")

        return await self._guarded(request, render, api=True)

    # -- the HTTP API ------------------------------------------------------------------------
    async def _openapi(self, request: Request) -> Response:
        refused = self._host_refused(request)
        if refused is not None:
            return refused
        return _answer(200, json.dumps(openapi(), indent=1).encode(), _JSON)

    async def _api_caller(self, request: Request) -> Caller | Response:
        """The caller of an API request, or the answer refusing it (before its body is
        read: a login, the page's origin for a cookie, the client's rate)."""
        refused = self._host_refused(request)
        if refused is not None:
            return refused
        caller = self._caller(request)
        if caller is None:
            return self._login_needed(request, api=True)
        cookie_only = not request.headers.get("authorization")
        if cookie_only and self.tokens is not None and not _same_origin(request):
            return _answer(403, b"an action with the page's login must come from the page")
        too_fast = self.service.rate_refusal(caller)
        if too_fast is not None:
            return _api_error(429, "rate_limited", too_fast)
        return caller

    async def _api_call(self, request: Request) -> Response:
        op = request.path_params["op"]
        if op not in protocol.REQUESTS or op in protocol.WITH_DATA:
            return _api_error(404, "not_found", f"no operation {op[:40]!r}; see "
                              "/api/v1/openapi.json")
        caller = await self._api_caller(request)
        if isinstance(caller, Response):
            return caller
        body = await read_body(request, self.service.config.max_message)
        if isinstance(body, str):
            return _api_error(408 if "slowly" in body else 413, "too_big", body)
        fields = await self._run(caller.name, _json_object, body)
        if isinstance(fields, str):
            return _api_error(400, "bad_request", f"{op}: {fields}")
        reply, data = await self._run(caller.name, self.service.call, caller, op, fields)
        return reply_response(op, reply, data, _HEADERS)

    async def _api_upload(self, request: Request) -> Response:
        caller = await self._api_caller(request)
        if isinstance(caller, Response):
            return caller
        fields: dict[str, Any] = {}
        for name in ("sha256", "offset", "total"):
            value = request.query_params.get(name)
            if value is None:
                continue
            if name == "sha256":
                fields[name] = value
                continue
            number = _small_int(value)
            if number is None or number is False:
                return _api_error(400, "bad_request", f"upload: {name} must be a whole "
                                  "number of bytes, 0 or more")
            fields[name] = number
        body = await read_body(request, self.service.config.max_message)
        if isinstance(body, str):
            return _api_error(408 if "slowly" in body else 413, "too_big", body)
        reply, data = await self._run(caller.name, self.service.call, caller, "upload",
                                      fields, body)
        return reply_response("upload", reply, data, _HEADERS)

    async def _events(self, request: Request) -> Response:
        caller = await self._api_caller(request)
        if isinstance(caller, Response):
            return caller
        if request.method != "GET":  # HEAD: the headers only (a stream would never end)
            return _answer(200, b"", "text/event-stream")
        job_id = request.query_params.get("job_id") or None
        if job_id is not None and not JOB_ID.match(job_id):
            return _answer(404, b"not found")
        session = request.scope.get(_SESSION)
        return self.streams.stream(caller, job_id, _HEADERS,
                                   lambda: self.still_allowed(caller, session))

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


def _api_error(status: int, kind: str, message: str) -> Response:
    """An API refusal: its status and ``{"ok": false, "error": {"type", "message"}}``."""
    return _answer(status, json.dumps({"ok": False, "error": {
        "type": kind, "message": message}}).encode(), _JSON)


def _small_int(text: str | None) -> int | None | bool:
    """A query or path number: None when absent, False when it is not a number of at most
    15 ASCII digits (an optional leading '-')."""
    if text is None:
        return None
    digits = text[1:] if text.startswith("-") else text
    if not 0 < len(digits) <= 15 or not all("0" <= c <= "9" for c in digits):
        return False
    return int(text)


def _json_object(body: bytes) -> dict[str, Any] | str:
    """A request body's JSON object, or why it is not one (parsed on a page thread)."""
    try:
        fields = json.loads(body or b"{}")
    except RecursionError:
        return f"the body nests deeper than {protocol.MAX_DEPTH} levels"
    except ValueError as exc:  # not JSON, not UTF-8, a number of thousands of digits
        return f"the body must be a JSON object of the request's fields ({str(exc)[:80]})"
    if not isinstance(fields, dict):
        return "the body must be a JSON object of the request's fields"
    return fields


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
    bytes, has more than a few fields, or takes more than :data:`TIMEOUT` seconds to
    arrive."""
    body = await read_body(request, MAX_FORM, TIMEOUT)
    if isinstance(body, str):
        return None
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    except ValueError:  # more fields than that
        return None
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

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot read, with the page's security headers."""
        import h11

        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close"),
                   *((k.lower().encode(), v.encode()) for k, v in _HEADERS.items())]
        try:
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=msg.encode("ascii", "replace")), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # a response had begun already: just close
            pass
        self.transport.close()

    def drop(self) -> None:
        """Close the connection (it waited too long for a header)."""
        if not self.transport.is_closing():
            self.transport.close()


#: the filter on uvicorn's log (one for every page this process serves)
_QUIETER = QuietFilter(QuietLog(logger))


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
        access_log=False, server_header=False, limit_concurrency=None,
        timeout_keep_alive=KEEP_ALIVE, timeout_graceful_shutdown=5,
        h11_max_incomplete_event_size=MAX_HEADER)
    config.load()
    for name in ("uvicorn", "uvicorn.error"):
        if _QUIETER not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_QUIETER)
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
