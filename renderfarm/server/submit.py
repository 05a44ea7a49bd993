"""The ``submit`` operation: what a client may ask of a job, checked before it is queued
(its files uploaded, its spec, the jobs it comes after, the workers it requires, the farm's
limits and the client's share of them); nothing of a refused job is left behind."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from renderfarm.errors import (
    InputError,
    LimitError,
    ProtocolError,
    RenderFarmError,
    ServiceError,
    missing_error,
)
from renderfarm.events import Event
from renderfarm.job import JobSpec
from renderfarm.server import protocol
from renderfarm.server.access import own
from renderfarm.server.config import ServiceConfig
from renderfarm.server.health import FarmHealth
from renderfarm.server.keyring import Caller
from renderfarm.server.paths import FarmPaths
from renderfarm.server.publisher import Publisher
from renderfarm.server.store import Store
from renderfarm.server.uploads import Uploads

logger = logging.getLogger(__name__)

#: spec fields a client may set (the service chooses the file and the output folder)
CLIENT_SPEC_FIELDS = ("frames", "tiles", "samples", "percentage", "device", "output",
                      "retries", "task_timeout", "allow_scripts", "overscan", "scene", "name",
                      "group_tiles", "denoise", "chunks", "allow_missing", "verify",
                      "estimate", "budget", "notify", "after", "after_frames", "require",
                      "origin", "keep_frames", "blender", "max_workers")


class Submissions:
    """Checks and queues submitted jobs.

    Args:
        config: how the service runs (its limits, the webhooks clients may name).
        store: the service's database.
        paths: the jobs' folders.
        uploads: the files clients uploaded.
        health: the farm (its limits, its workers' tags).
        publisher: where a queued job's first event goes.
    """

    def __init__(self, config: ServiceConfig, store: Store, paths: FarmPaths, uploads: Uploads,
                 health: FarmHealth, publisher: Publisher) -> None:
        self._config = config
        self._store = store
        self._paths = paths
        self._uploads = uploads
        self._health = health
        self._publisher = publisher

    def submit(self, request: protocol.Request, caller: Caller) -> dict[str, Any]:
        """The ``submit`` operation: a job queued from uploaded files.

        Raises:
            ProtocolError: the spec has fields a client may not set, or is not valid.
            ServiceError: files are missing (``missing_files``, ``not_found``).
            RenderFarmError: the spec asks what the farm does not allow (``LimitError``:
                over a limit).
        """
        from renderfarm.farm import check_spec
        from renderfarm.job import new_job_id

        fields = request.fields
        raw = dict(fields["spec"])
        unknown = sorted(set(raw) - set(CLIENT_SPEC_FIELDS) - {"blend_file"})
        if unknown:
            raise ProtocolError(f"submit: spec has unknown field(s) {', '.join(unknown)}",
                                request_id=request.id)
        manifest = self._uploads.manifest(request, caller)
        if manifest.missing and raw.get("allow_missing") is not True:
            raise ServiceError(missing_error(manifest.missing, fields["filename"]).one_line(),
                               kind="missing_files")
        job_id = new_job_id()
        workdir, outputs = self._paths.job_dir(job_id), self._paths.output_dir(job_id)
        try:  # nothing of a refused job is left behind
            output = raw.get("output")
            if output is not None and (not isinstance(output, str) or not Path(output).name):
                raise InputError(f"output must be a file name like shot_####.png, not "
                                 f"{output!r}")
            workdir.mkdir(parents=True)
            # the farm's folder for the job; the scene's own file names when none is given
            raw.update(blend_file=str(workdir / Path(manifest.root).name),
                       output=str(outputs / Path(output).name) if output is not None
                       else str(outputs) + os.sep, files="bundle",
                       bundle=manifest.to_dict())
            spec = JobSpec.from_dict(raw)
            self._check_after(caller, job_id, spec)
            self._check_require(spec)
            if spec.notify is not None:
                from renderfarm.notify import check_url

                check_url(spec.notify, self._config.notify_allow)
            check_spec(spec, self._health.farm_config())
            self._check_client_tasks(caller, spec)
            name = spec.name or Path(fields["filename"]).stem
            if not isinstance(name, str):
                raise InputError(f"name must be text, not {name!r}")
        except BaseException as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(outputs, ignore_errors=True)
            if isinstance(exc, RenderFarmError) or not isinstance(exc, Exception):
                raise
            raise ProtocolError(f"submit: the spec is not valid ({exc})",
                                request_id=request.id) from exc
        row = self._store.add_job(job_id, name, spec.to_dict(), fields.get("priority", 0),
                                  caller.name)
        logger.info("job %s queued: %s, priority %d", job_id, name, row.priority)
        self._publisher.event(Event("job_queued", job_id, message=f"{name} queued"), row)
        return {"job_id": job_id, "job": row.to_dict()}

    def _check_after(self, caller: Caller, job_id: str, spec: JobSpec) -> None:
        """A job may wait only for jobs its client sees, and never, through them, for
        itself."""
        seen: set[str] = set()
        todo = list(spec.after)
        while todo:
            other = todo.pop()
            if other == job_id:
                raise InputError(f"--after makes job {job_id} wait for itself (a cycle): "
                                 "name jobs that do not wait for it")
            if other in seen:
                continue
            seen.add(other)
            row = own(self._store, caller, other) if other in spec.after else \
                self._store.job(other)
            todo += list(row.spec.get("after") or [])

    def _check_require(self, spec: JobSpec) -> None:
        """Refuse at once a job no worker of the running farm can take (``--require``)."""
        from renderfarm.tags import WorkerTags, check_offers

        workers = [w for w in self._health.workers() if w["state"] != "starting"]
        if workers:  # no farm yet: the job says so when it starts
            check_offers(spec.require, [(w["worker"], WorkerTags(frozenset(w["tags"]),
                                                                  w["props"]))
                                        for w in workers])

    def _check_client_tasks(self, caller: Caller, spec: JobSpec) -> None:
        """Refuse a job that would take the client's unfinished jobs over its task limit."""
        from renderfarm.farm import estimate_tasks

        limit = self._config.max_tasks_per_client
        held = 0
        for row in self._store.jobs(["queued", "running", "paused"]):
            if row.client == caller.name:
                try:
                    held += row.tasks_total or estimate_tasks(JobSpec.from_dict(row.spec)) or 0
                except RenderFarmError:
                    continue
        new = estimate_tasks(spec) or 0
        if held + new > limit:
            raise LimitError(f"{caller.name}'s unfinished jobs hold {held} tasks and this one "
                             f"plans {new}; the farm allows {limit} per client (serve "
                             "--max-tasks-per-client): wait for jobs to finish or cancel some",
                             limit="tasks_per_client")
