"""What a running job says, recorded so a restart resumes it: its plan, its pieces (once
their check agreed), its frames and other files, its warnings, its accounting and its end;
each event is then published. One thread per running job."""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from renderfarm.errors import ServiceError
from renderfarm.events import Event
from renderfarm.job import Rect, Tile
from renderfarm.server import protocol
from renderfarm.server.health import FarmHealth
from renderfarm.server.live import Accounts, Live, LiveJobs
from renderfarm.server.paths import FarmPaths
from renderfarm.server.publisher import Publisher
from renderfarm.server.reports import Reports
from renderfarm.server.store import Store

logger = logging.getLogger(__name__)

#: what the database says of a job that ended, by its last event
END_ACTIONS = {"job_done": "done", "job_failed": "fail", "job_cancelled": "cancelled"}
#: what a run whose farm was lost still says that is true (a piece it stored, a frame it
#: wrote): recorded, so the job's next run does not do it again
FACTS = frozenset({"task_done", "task_checked", "frame_merged", "output_written"})
#: a job's events waiting to be recorded beyond which its tiles get no live preview (a
#: preview costs the head about 20 ms; at thousands of workers they would hold back the
#: records a restart needs and the job's end)
PREVIEW_BACKLOG = 16


#: a job's events recorded in one transaction at most (while more wait)
BATCH_EVENTS = 64
#: the events whose records may wait in a batch (a frame's, a warning, the job's end go
#: at once)
BATCHED = frozenset({"task_started", "task_done", "task_checking", "task_checked",
                     "task_retry", "info"})


def previews_keep_up(backlog: int) -> bool:
    """Whether a finished tile gets its live preview with ``backlog`` of its job's events
    still waiting to be recorded."""
    return backlog <= PREVIEW_BACKLOG


class Recorder:
    """Records running jobs' events (a thread per job).

    Args:
        store: the service's database.
        paths: the jobs' folders and storage keys.
        live: the running jobs.
        accounts: what each job's runs have cost.
        health: the farm (a job that failed because Ray did is left to its watchdog).
        publisher: where each recorded event goes.
        reports: tells a job's webhooks it ended.
        stop: set when the service stops (a job's end is then not recorded: it resumes).
    """

    def __init__(self, store: Store, paths: FarmPaths, live: LiveJobs, accounts: Accounts,
                 health: FarmHealth, publisher: Publisher, reports: Reports,
                 stop: threading.Event) -> None:
        self._store = store
        self._paths = paths
        self._live = live
        self._accounts = accounts
        self._health = health
        self._publisher = publisher
        self._reports = reports
        self._stop = stop

    def follow(self, job_id: str, live: Live) -> None:
        """Record the events of job ``job_id``'s run (``live``) on a thread of its own until
        it ends."""
        threading.Thread(target=self._watch, args=(job_id, live), daemon=True,
                         name=f"renderfarm-watch-{job_id}").start()

    def keep_log(self, job_id: str) -> Callable[[Any], None]:
        """A job's ``on_result`` hook: each call's log goes in the database."""
        def keep(result: Any) -> None:
            self._store.add_log(job_id, result.to_dict())

        return keep

    def _watch(self, job_id: str, live: Live) -> None:
        try:
            self._watch_run(job_id, live)
        finally:
            live.watched.set()

    def _watch_run(self, job_id: str, live: Live) -> None:
        handle = live.handle
        batch: contextlib.ExitStack | None = None
        batched = 0
        try:
            for event in handle.events():
                if live.abandoned or (live.stale and event.kind not in FACTS):
                    continue  # its farm was lost: the job runs again from the database
                if batch is None and handle.backlog() > 0:  # events wait: written together
                    batch = contextlib.ExitStack()
                    batch.enter_context(self._store.batch())
                try:
                    self._record(job_id, live, event)
                except Exception:  # a bookkeeping error must not stop the job's events
                    logger.exception("job %s: cannot record %s", job_id, event.kind)
                batched += 1
                if batch is not None and (handle.backlog() == 0 or batched >= BATCH_EVENTS
                                          or event.kind not in BATCHED):
                    batch.close()  # a fact a restart reads (a frame, the end) goes at once
                    batch, batched = None, 0
        finally:
            if batch is not None:
                try:
                    batch.close()
                except Exception:  # the service closed its database meanwhile
                    logger.exception("job %s: its last events were not recorded", job_id)
        self._accounts.save(job_id, live, final=True)
        self._publisher.forget_held(job_id)
        if live.stale:
            return
        self._publisher.keep_last_preview(job_id, live)
        self._live.forget(job_id, live)
        job_dir = self._paths.job_dir(job_id)
        shutil.rmtree(job_dir / "previews", ignore_errors=True)
        row = self._store.job(job_id)
        if row.state in protocol.FINAL_STATES:
            shutil.rmtree(job_dir / "pieces", ignore_errors=True)

    def _record(self, job_id: str, live: Live, event: Event) -> None:
        self._accounts.save(job_id, live)
        store = self._store
        if self._stop.is_set() and event.kind in ("job_cancelled", "job_failed"):
            return  # the service is stopping: the job resumes on restart
        if event.kind == "job_failed" and event.data.get("error") == "ClusterLostError" \
                and self._health.lost_under(live, event.message or "Ray failed"):
            return  # Ray failed under it: the watchdog requeues it, it resumes
        if event.tasks_total:
            store.set_progress(job_id, event.tasks_done, event.tasks_total, event.frames_done,
                               event.frames_total)
        data = event.data
        if event.kind == "job_started":
            self._started(job_id, live, data)
        elif event.kind == "task_done":
            self._task_done(job_id, live, event)
        elif event.kind == "task_checked":
            self._task_checked(job_id, live, event)
        elif event.kind == "frame_merged":
            path = Path(data["path"])
            key = self._paths.output_key(job_id, path.name)
            if not data.get("intermediate") and self._paths.storage.local_path(key) != path:
                self._paths.storage.put_file(key, path)
            store.add_frame(job_id, event.frame or 0, str(path))
            if data.get("sha256"):
                store.set_hash(job_id, event.frame or 0, data["sha256"])
            for extra, digest in (data.get("extras") or {}).items():
                self._keep_output(job_id, event.frame or 0, Path(extra), digest)
        elif event.kind == "output_written":  # a video
            self._keep_output(job_id, event.frame or 0, Path(data["path"]), data["sha256"])
        elif event.kind == "warning":
            store.add_warning(job_id, event.message)
        elif event.kind in END_ACTIONS:
            try:
                store.act(job_id, END_ACTIONS[event.kind], error=event.message or None)
            except ServiceError:
                pass  # already cancelled by a request
            self._accounts.save(job_id, live, final=True)
            self._reports.notify(job_id)
        if self._publisher.passes(event):
            self._publisher.event(event, store.job(job_id))

    def _started(self, job_id: str, live: Live, data: dict[str, Any]) -> None:
        """The job's plan, kept for a restart (and its canvas, for previews)."""
        canvas = data.get("canvas")
        live.canvas = Rect(*canvas) if canvas else None
        live.display = dict(data.get("display") or {})
        before = self._store.job(job_id).plan or {}
        self._store.set_plan(job_id, {**{k: data.get(k) for k in
                                         ("tiles", "chunks", "size", "canvas", "device",
                                          "workers", "overscan", "frames")},
                                      "only": before.get("only")})

    def _task_done(self, job_id: str, live: Live, event: Event) -> None:
        """A piece, recorded for a restart (a checked one once its check agrees), and its
        preview published."""
        data = event.data
        piece = data["piece"]
        path = Path(piece["path"] or piece["name"])
        task_id = Path(piece["name"]).stem
        record = (job_id, task_id, event.frame or 0, piece["chunk"], data["tiles"],
                  piece["tile"], str(path), data.get("worker"), data.get("render_seconds"),
                  piece.get("sha256"))
        if piece["path"] is None:  # kept on its node, not stored: a restart renders it again
            self._store.add_run(job_id, task_id, event.frame or 0, data["tiles"],
                                data.get("worker"), data.get("render_seconds"))
        elif data.get("checked"):  # kept for a restart only once its check has agreed
            live.held[(event.frame or 0, piece["chunk"], tuple(data["tiles"]))] = (
                data.get("worker"), record)
        else:
            self._store.add_piece(*record)
        name = piece["name"]  # the piece's name (a stored one's file has its attempt's)
        if not previews_keep_up(live.handle.backlog()):
            self._publisher.skip_preview(job_id, name)
            return
        self._publisher.preview(job_id, live, event.frame or 0, Tile.from_dict(piece["tile"]),
                                name)

    def _task_checked(self, job_id: str, live: Live, event: Event) -> None:
        """A checked piece recorded when its check agreed; nothing of a suspect worker
        survives a restart."""
        data = event.data
        held = live.held.pop((event.frame or 0, data.get("chunk", 0),
                              tuple(data.get("tiles") or ())), None)
        if held is not None and data.get("outcome") in ("agreed", "settled", "unchecked") \
                and held[0] not in (data.get("suspects") or []):
            self._store.add_piece(*held[1])
        for worker in data.get("suspects") or []:  # nothing of it survives a restart
            self._store.drop_worker(job_id, worker, data.get("reopened") or [])
            live.held = {k: v for k, v in live.held.items() if v[0] != worker}
            logger.info("job %s: worker %s is suspect; frames %s are merged again",
                        job_id, worker, data.get("reopened"))

    def _keep_output(self, job_id: str, frame: int, path: Path, digest: str) -> None:
        """A file written for a job beside its frames (a File Output node's, a view's, its
        video), kept in the storage under its path in the job's output folder."""
        try:  # the farm's path
            name = path.relative_to(self._paths.output_dir(job_id)).as_posix()
        except ValueError:  # never a file outside the job's folder
            logger.error("job %s: %s is outside the job's output folder; not kept", job_id,
                         path)
            return
        key = self._paths.output_key(job_id, name)
        if self._paths.storage.local_path(key) != path:
            self._paths.storage.put_file(key, path)
        self._store.add_extra(job_id, frame, name, digest)
