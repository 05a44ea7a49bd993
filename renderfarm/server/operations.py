"""The service's operations: one handler per request of the protocol, in one table
(:attr:`Operations.handlers`), checked complete when the service starts. Uploads and
submissions have their own modules; the rest (status, control, workers, files, reports,
logs) is here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from renderfarm import __version__
from renderfarm.errors import InputError, ServiceError
from renderfarm.events import Event
from renderfarm.server import protocol
from renderfarm.server.access import own, visible
from renderfarm.server.config import ServiceConfig
from renderfarm.server.health import FarmHealth
from renderfarm.server.keyring import Caller
from renderfarm.server.live import LiveJobs
from renderfarm.server.loop import Handler
from renderfarm.server.paths import FarmPaths
from renderfarm.server.publisher import Publisher
from renderfarm.server.reports import Reports
from renderfarm.server.scheduling import Scheduler
from renderfarm.server.store import JobRow, Store
from renderfarm.server.submit import Submissions
from renderfarm.server.uploads import Uploads

logger = logging.getLogger(__name__)

class Operations:
    """The handler of each operation of the protocol (any lane thread).

    Args:
        config: how the service runs.
        publish_address: the event socket's address (``hello`` says its port).
        store: the service's database.
        paths: the jobs' folders, and the farm's paths to scrub.
        live: the running jobs.
        health: the farm.
        uploads: the ``upload`` and ``have`` operations.
        submissions: the ``submit`` operation.
        scheduler: why a job waits.
        publisher: where jobs' events go.
        reports: jobs' reports and end notifications.

    Attributes:
        handlers: the handler of each operation (one per :data:`protocol.REQUESTS`).
        http_address: the web app's address once it serves (``hello`` says it).
    """

    def __init__(self, config: ServiceConfig, publish_address: str, store: Store,
                 paths: FarmPaths, live: LiveJobs, health: FarmHealth, uploads: Uploads,
                 submissions: Submissions, scheduler: Scheduler, publisher: Publisher,
                 reports: Reports) -> None:
        self._config = config
        self._publish_address = publish_address
        self._store = store
        self._paths = paths
        self._live = live
        self._health = health
        self._scheduler = scheduler
        self._publisher = publisher
        self._reports = reports
        self.http_address: str | None = None
        self.handlers: dict[str, Handler] = {
            "hello": self._hello, "web_token": self._web_token,
            "upload": uploads.upload, "have": uploads.have, "submit": submissions.submit,
            "status": self._status, "list": self._list, "cancel": self._cancel,
            "pause": self._pause, "resume": self._resume,
            "priority": self._priority, "requeue": self._requeue,
            "workers": self._workers, "worker": self._worker, "fetch": self._fetch,
            "report": self._report, "log": self._log}
        odd = set(protocol.REQUESTS) ^ set(self.handlers)
        if odd:
            raise ServiceError(f"operations without a handler, or handlers without one: "
                               f"{sorted(odd)}", kind="internal")

    # -- the farm ----------------------------------------------------------------------------
    def _hello(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        port = self._publish_address.rsplit(":", 1)[-1]
        return {"server": __version__, "protocol": protocol.VERSION,
                "publish_port": int(port) if port.isdigit() else None,
                "max_message": self._config.max_message, "chunk": protocol.CHUNK,
                "permit_scripts": self._config.permit_scripts, "http": self.http_address,
                "you": caller.name, "admin": caller.admin, **self._health.status()}

    def _web_token(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        from renderfarm.server.keyring import web_token

        server_key = self._config.server_key
        if server_key is None or not caller.key:
            raise ServiceError("this farm runs without keys (--insecure-loopback): its status "
                               "page needs no login and serves this machine only",
                               kind="not_found")
        return {"token": web_token(server_key.secret, caller.key), "http": self.http_address}

    def _workers(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        return {"workers": self.workers_for(caller)}

    def workers_for(self, caller: Caller) -> list[dict[str, Any]]:
        """The farm's workers as ``caller`` may see them: what a worker renders for another
        client's job is "busy", without the job (an admin sees everything)."""
        workers = self._health.workers()
        if caller.admin:
            return workers
        mine = {row.id for row in visible(self._store, caller)}
        shown = []
        for worker in workers:
            current = worker.get("current")
            worker = {**worker, "loaded": None}
            if current and current.split(" ", 1)[0] not in mine:
                worker["current"] = "another client's job"
            shown.append(worker)
        return shown

    def _worker(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        if not caller.admin:
            raise ServiceError("only the farm's administrators (keys in --admins) take workers "
                               "out or put them back", kind="refused")
        fields = request.fields
        reason = fields.get("reason") or f"disabled by {caller.name}"
        worker = self._health.farm.set_worker(fields["worker_id"], fields["enabled"], reason)
        logger.info("worker %s %s by %s", worker["worker"],
                    "enabled" if fields["enabled"] else "disabled", caller.name)
        return {"worker": worker}

    # -- jobs --------------------------------------------------------------------------------
    def _status(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        row = own(self._store, caller, request.fields["job_id"])
        return {"job": self._paths.public({
            **row.to_dict(), "outputs": self._outputs(row),
            "extra_outputs": {name: frame for name, (frame, _sha)
                              in self._store.extras(row.id).items()},
            "eta": self._live.eta(row.id), "waiting": self._scheduler.job_waiting(row),
            **self._health.status()})}

    def _outputs(self, row: JobRow) -> dict[str, str]:
        """The frames a client fetches: those written in the job's output folder (a video's
        frames, unless kept, are not)."""
        folder = self._paths.output_dir(row.id)
        return {str(frame): Path(path).name
                for frame, path in self._store.frames(row.id).items()
                if Path(path).parent == folder}

    def _list(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        farm = self._health.status()
        return {"jobs": [self._paths.public({**j.to_dict(), "eta": self._live.eta(j.id),
                                             "waiting": self._scheduler.job_waiting(j),
                                             **farm})
                         for j in self._store.jobs(request.fields.get("states"))
                         if caller.may_see(j.client or "")]}

    def _cancel(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        job_id = own(self._store, caller, request.fields["job_id"]).id
        row = self._store.act(job_id, "cancel", error="cancelled by a client")
        handle = self._live.handle(job_id)
        if handle is not None:
            handle.cancel()
        else:  # it never ran (or is paused): nothing else will say it ended
            self._reports.notify(job_id)
        self._publisher.event(Event("job_cancelled", job_id, message="cancelled by a client"),
                              row)
        return {"job": row.to_dict()}

    def _pause(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        job_id = own(self._store, caller, request.fields["job_id"]).id
        row = self._store.act(job_id, "pause")
        handle = self._live.handle(job_id)
        if handle is not None:
            handle.pause()
        self._publisher.event(Event("job_paused", job_id), row)
        return {"job": row.to_dict()}

    def _resume(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        job_id = own(self._store, caller, request.fields["job_id"]).id
        handle = self._live.handle(job_id)
        if handle is not None:  # its run goes on: straight to running, never queued
            row = self._store.act(job_id, "continue")
            handle.resume()
        else:
            row = self._store.act(job_id, "resume")
        self._publisher.event(Event("job_resumed", job_id), row)
        return {"job": row.to_dict()}

    def _priority(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        job_id = own(self._store, caller, request.fields["job_id"]).id
        priority = request.fields["priority"]
        row = self._store.set_priority(job_id, priority)
        handle = self._live.handle(job_id)
        if handle is not None:
            handle.set_priority(priority)
        return {"job": row.to_dict()}

    def _requeue(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        from renderfarm.frames import format_frames, parse_frames

        row = own(self._store, caller, request.fields["job_id"])
        if row.state not in protocol.FINAL_STATES:
            raise ServiceError(f"job {row.id} is {row.state}: only a job that has ended can be "
                               "requeued", kind="conflict")
        written = set(self._store.frames(row.id))
        planned = set((row.plan or {}).get("frames") or [])
        if request.fields.get("frames"):
            if not planned:  # it never started: no frame of it exists to render again
                raise InputError(f"job {row.id} never started, so it has no frames to render "
                                 "again: requeue it without frames, and it renders them all")
            wanted = set(parse_frames(request.fields["frames"],
                                      max_count=self._config.max_frames_per_job))
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
        self._store.forget_frames(row.id, again)
        if row.plan is not None:  # chosen frames: only those render; else all not written
            self._store.set_plan(row.id, {**row.plan, "only": sorted(again) if
                                          request.fields.get("frames") else None})
        row = self._store.act(row.id, "again")
        self._reports.renotify(row.id)
        message = (f"requeued: frame(s) {format_frames(again)} render again"
                   if again else "requeued")
        self._publisher.event(Event("job_queued", row.id, message=message), row)
        return {"job": self._paths.public(row.to_dict()), "frames": sorted(again)}

    # -- what a job made ---------------------------------------------------------------------
    def _fetch(self, request: protocol.Request,
               caller: Caller) -> tuple[dict[str, Any], bytes]:
        job_id, frame = request.fields["job_id"], request.fields["frame"]
        row = own(self._store, caller, job_id)
        extra = request.fields.get("name")
        if extra is not None:  # a file a File Output node wrote
            extras = self._store.extras(job_id)
            if extra not in extras or extras[extra][0] != frame:
                raise ServiceError(f"job {job_id} has no file {extra!r} of frame {frame} "
                                   f"(its File Output files: {len(extras)})", kind="not_found")
            name, digest = extra, extras[extra][1]
        else:
            frames = self._store.frames(job_id)
            if frame not in frames:
                raise ServiceError(f"job {job_id} has no finished frame {frame} (finished: "
                                   f"{sorted(frames) or 'none'})", kind="not_found")
            name, digest = Path(frames[frame]).name, self._store.hashes(job_id).get(frame)
        key = self._paths.output_key(job_id, name)
        storage = self._paths.storage
        size = storage.size(key)
        limit = self._config.max_message - 4096
        length = min(request.fields["length"] or limit, limit)
        data = storage.read(key, request.fields["offset"], length)
        return ({"job_id": row.id, "frame": frame, "name": name,
                 "size": size, "offset": request.fields["offset"], "sha256": digest}, data)

    def _report(self, request: protocol.Request,
                caller: Caller) -> dict[str, Any] | tuple[dict[str, Any], bytes]:
        row = own(self._store, caller, request.fields["job_id"])
        report = self._reports.job_report(row)
        if not request.fields.get("html"):
            return {"report": report}
        from renderfarm.report import render_html

        page = render_html(report, self._reports.thumbnails(row)).encode()
        return {"report": report}, page

    def _log(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        row = own(self._store, caller, request.fields["job_id"])
        logs = self._store.logs(row.id, request.fields.get("frame"),
                                bool(request.fields.get("failed")))
        budget = self._config.max_message // 2  # the newest logs that fit in one reply
        kept: list[dict[str, Any]] = []
        for entry in reversed(logs):
            entry["log"] = self._paths.scrub(entry["log"])
            budget -= len(entry["log"]) + 256
            if budget < 0:
                break
            kept.append(entry)
        return {"logs": kept[::-1], "left_out": len(logs) - len(kept)}
