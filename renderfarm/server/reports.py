"""A job's report (every run's calls, its outputs, its cost), its frames' thumbnails, and the
summary its webhooks get when it ends."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from renderfarm.server.access import own
from renderfarm.server.config import ServiceConfig
from renderfarm.server.keyring import Caller
from renderfarm.server.live import Accounts, LiveJobs
from renderfarm.server.paths import FarmPaths
from renderfarm.server.store import JobRow, Store

logger = logging.getLogger(__name__)


class Reports:
    """Jobs' reports, thumbnails and end notifications (any thread).

    Args:
        config: how the service runs (its prices, its webhook).
        store: the service's database.
        paths: the jobs' folders, and the farm's paths to scrub.
        live: the running jobs (a running job's report counts its run up to now).
        accounts: what each job's runs have cost.
    """

    def __init__(self, config: ServiceConfig, store: Store, paths: FarmPaths, live: LiveJobs,
                 accounts: Accounts) -> None:
        self._config = config
        self._store = store
        self._paths = paths
        self._live = live
        self._accounts = accounts
        #: jobs whose end was notified (a webhook hears of a job once)
        self._notified: set[str] = set()
        self._lock = threading.Lock()

    def job_report(self, row: JobRow) -> dict[str, Any]:
        """A job's report: every run's calls (a resumed job has several), its outputs and
        their SHA-256 as recorded when written, its estimate, priced by this farm."""
        from renderfarm.report import build_report

        runs = self._accounts.runs(row.id, self._live.get(row.id))
        merged: dict[str, Any] = {"job_id": row.id, "tasks": [], "checks": [], "suspects": [],
                                  "wall_seconds": 0.0, "warnings": list(row.warnings)}
        for run in runs:
            merged["tasks"] += run.get("tasks") or []
            merged["checks"] += run.get("checks") or []
            merged["suspects"] = sorted(set(merged["suspects"]) | set(run.get("suspects")
                                                                     or []))
            merged["wall_seconds"] += float(run.get("wall_seconds") or 0.0)
            for key in ("device", "worker_cpus", "frames", "tiles", "verify", "workers",
                        "estimate"):
                if run.get(key):
                    merged[key] = run[key]
            kept = run.get("pieces")
            if isinstance(kept, dict):  # where each run kept its pieces, summed
                before = merged.get("pieces") or {}
                merged["pieces"] = {
                    "kept_on": kept.get("kept_on"),
                    "merged_on": sorted(set(before.get("merged_on") or [])
                                        | set(kept.get("merged_on") or [])),
                    **{k: int(before.get(k) or 0) + int(kept.get(k) or 0)
                       for k in ("lost", "stored", "restored")}}
        frames = self._store.frames(row.id)
        merged["outputs"] = {str(f): p for f, p in frames.items()}
        merged["hashes"] = {str(f): h for f, h in self._store.hashes(row.id).items()}
        report = build_report(merged, client=row.client or "", name=row.name,
                              state=row.state, prices=self._config.prices,
                              output_names={f: Path(p).name for f, p in frames.items()})
        report["warnings"] = [self._paths.scrub(w) for w in report["warnings"]]
        return report

    def report_html(self, row: JobRow, style: str | None = None, header: str = "") -> bytes:
        """A job's report as an HTML page in the look ``style`` (None: the report's own),
        with ``header`` above it (see :func:`renderfarm.report.render_html`)."""
        from renderfarm.report import render_html

        return render_html(self.job_report(row), self.thumbnails(row), style=style,
                           header=header).encode()

    def report_page(self, caller: Caller, job_id: str, style: str | None = None,
                    header: str = "") -> bytes:
        """A job ``caller`` may see: its report as an HTML page (:meth:`report_html`).

        Raises:
            ServiceError: ``not_found``: no such job, or another client's.
        """
        return self.report_html(own(self._store, caller, job_id), style, header)

    def thumbnails(self, row: JobRow, most: int = 500) -> dict[int, bytes]:
        """Small PNGs of a job's frames for the report's contact sheet."""
        out: dict[int, bytes] = {}
        for frame, path in list(self._store.frames(row.id).items())[:most]:
            try:
                image = self.thumbnail(row.id, frame, Path(path))
            except Exception as exc:  # a frame that cannot be read is shown without image
                logger.info("no thumbnail of %s: %s", path, exc)
                continue
            if image is not None:
                out[frame] = image
        return out

    def frame_thumbnail(self, caller: Caller, job_id: str, frame: int) -> bytes | None:
        """A small PNG of a written frame of a job ``caller`` may see (kept once made).

        Raises:
            ServiceError: ``not_found``: no such job, or another client's.
        """
        own(self._store, caller, job_id)
        path = self._store.frames(job_id).get(frame)
        return self.thumbnail(job_id, frame, Path(path)) if path is not None else None

    def thumbnail(self, job_id: str, frame: int, path: Path) -> bytes | None:
        """A frame's thumbnail, made once per content of its file (None: no file)."""
        from renderfarm.merge import thumbnail

        if not path.is_file():
            return None
        digest = self._store.hashes(job_id).get(frame, "")[:16]
        cached = self._paths.job_dir(job_id) / "thumbs" / f"{frame}-{digest}.png"
        if cached.is_file():
            return cached.read_bytes()
        image = thumbnail(Path(path))
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(image)
        return image

    # -- webhooks ----------------------------------------------------------------------------
    def notify(self, job_id: str) -> None:
        """Send an ended job's summary to its webhook and the farm's (once each, on a
        thread: a slow webhook holds nothing up)."""
        from renderfarm.notify import send_later, summary

        with self._lock:
            if job_id in self._notified:
                return
            self._notified.add(job_id)
        row = self._store.job(job_id)
        urls = [u for u in dict.fromkeys([row.spec.get("notify"), self._config.notify]) if u]
        if not urls:
            return
        try:
            report = self.job_report(row)
        except Exception:  # the summary goes out even without its report
            logger.exception("job %s: no report for its notification", job_id)
            report = None
        payload = summary(self._paths.public(row.to_dict()), report)
        for url in urls:
            send_later(url, payload)

    def renotify(self, job_id: str) -> None:
        """Job ``job_id`` runs again (requeued): its webhooks hear of its next end."""
        with self._lock:
            self._notified.discard(job_id)
