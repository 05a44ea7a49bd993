"""One job's run on a farm (a :class:`JobHost`, as :class:`~renderfarm.farm.Farm` is): its
files, inspection, plan and resume (:class:`JobRun`), the entry points its dispatcher calls
(:class:`Entries`, each guarded, every decision left to the pure
:class:`~renderfarm.state.JobState`), and its last stage, the
:class:`~renderfarm.assemble.Assembler` that writes its frames."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from renderfarm import faults
from renderfarm.assemble import Assembler
from renderfarm.dispatch_state import WorkerLoaded, WorkerStarted
from renderfarm.dispatcher import PoolRunner
from renderfarm.errors import (
    CancelledError,
    JobFailedError,
    LimitError,
    MergeError,
    OutputError,
    RenderFarmError,
    ResourceError,
    VerificationError,
    error_from,
)
from renderfarm.events import Event
from renderfarm.executor import WorkerHandle, WorkerPool
from renderfarm.frames import format_frames, parse_frames
from renderfarm.handle import JobHandle, Resume
from renderfarm.job import (
    PIECE_FORMAT,
    VIDEO_CONTAINERS,
    VIDEO_FRAME_FORMAT,
    WRITE_EXTENSIONS,
    JobResult,
    RenderSettings,
    SceneInfo,
    Task,
    TaskResult,
    Tile,
    check_templates,
    is_output_folder,
    output_path,
    resolve_output,
)
from renderfarm.job_blender import check_blender, choose_blender, saved_with
from renderfarm.jobfiles import JobFiles, check_output_folder
from renderfarm.merge import Piece, compare_images, write_atomically
from renderfarm.pieces import (
    SLOTS,
    NodePiece,
    PiecesLost,
    SharedMarker,
    Written,
    assemble_on_node,
    biggest_node,
    compare_on_node,
    warm,
)
from renderfarm.planner import Plan, plan_job, render_size
from renderfarm.probe import Probe
from renderfarm.state import (
    BLOCK_AFTER,
    Check,
    Failure,
    JobState,
    Settled,
    TaskStatus,
    Verdict,
)
from renderfarm.tags import Requirement, executable_requirement, satisfies
from renderfarm.worker_calls import WorkerCalls

if TYPE_CHECKING:
    from renderfarm.storage import Storage

logger = logging.getLogger(__name__)

#: results of a job that may wait to be stored before it gets no more tasks
INBOX_LIMIT = 8


class HostSettings(Protocol):
    """The farm's settings a job's run reads (:class:`~renderfarm.farm.FarmConfig`)."""

    max_bundle_bytes: int
    max_tasks: int
    max_frames: int
    max_pixels: int
    default_task_timeout: float | None
    prices: dict[str, float]
    verify: float
    verify_tolerance: float
    wait_for_workers: float


class JobHost(Protocol):
    """What a job's run asks of the farm it runs on (:class:`~renderfarm.farm.Farm`)."""

    lost: RenderFarmError | None

    @property
    def config(self) -> HostSettings:
        """The farm's settings."""

    @property
    def storage(self) -> Storage:
        """Where the farm keeps job files by hash."""

    @property
    def merger(self) -> Executor:
        """The threads that merge and finish frames."""

    @property
    def node_merger(self) -> Executor:
        """The threads that wait for frames merged on the nodes."""

    def pieces_on_nodes(self) -> bool:
        """Whether a job starting now keeps its pieces on the nodes."""

    def resolve_device(self, device: str) -> str:
        """``auto`` made concrete."""

    def runner(self, device: str) -> PoolRunner:
        """The pool of ``device`` workers with its dispatcher."""

    def forget(self, handle: JobHandle) -> None:
        """The job has ended: the farm drops it."""

    def submit(self, spec: Any, priority: int = 0) -> JobHandle:
        """Start another job (the estimate's probe)."""


class JobRun:
    """Runs one job: files, inspection, plan, resume; then waits while the dispatcher feeds
    its tasks (through :class:`Entries`) and the :class:`~renderfarm.assemble.Assembler`
    writes its frames; builds the result."""

    def __init__(self, farm: JobHost, handle: JobHandle, priority: int,
                 workdir: Path | None = None, resume: Resume | None = None,
                 on_piece: Callable[[Task, Path], None] | None = None,
                 on_result: Callable[[TaskResult], None] | None = None,
                 frame_gate: Callable[[int], bool] | None = None,
                 outputs_folder: Path | None = None) -> None:
        self.farm = farm
        self.outputs_folder = outputs_folder
        self.frame_gate = frame_gate
        self.on_piece = on_piece
        self.on_result = on_result
        self.workdir = workdir
        self.resume = resume
        self.handle = handle
        self.spec = handle.spec
        self.priority = priority
        #: guards :attr:`state` and the counters (dispatcher and merge threads)
        self.lock = threading.Lock()
        #: the job's own thread that stores its pieces and hands them on, in order
        self.inbox = ThreadPoolExecutor(1, thread_name_prefix=f"renderfarm-keep-{handle.job_id}")
        #: results waiting on :attr:`inbox`
        self.backlog = 0
        self.results: list[TaskResult] = []
        handle.attach(self)
        self.fatal: RenderFarmError | None = None
        #: what ended the job from outside its tasks: its own code failed (storing a piece,
        #: a hook), or its dispatcher stopped it; the job fails with it
        self.fault: BaseException | None = None
        #: the dispatcher serving the job, once it is dispatched
        self.runner: PoolRunner | None = None
        self.ended = threading.Event()
        #: results that arrived after the job ended (dropped without touching its files)
        self.late_results = 0
        #: results of a task another copy had finished already (stragglers' backups)
        self.duplicates = 0
        self.warnings: list[str] = []
        self.state: JobState | None = None
        self.plan: Plan | None = None
        self.info: SceneInfo | None = None
        self.files: JobFiles | None = None
        self.assembler: Assembler | None = None
        self.pool: WorkerPool | None = None
        self.settings: RenderSettings | None = None
        #: the job's one-off calls on its workers (opening, finishing, encoding)
        self.calls: WorkerCalls | None = None
        #: the version of the Blender the job renders with (empty: the workers' own)
        self.blender = ""
        self.started = time.monotonic()
        self.finished_at: float | None = None
        self.started_at = time.time()
        self.verify = 0.0
        self.estimate: dict[str, Any] | None = None
        self.elastic: dict[str, Any] | None = None
        #: since when an autoscaled job's tasks have waited with no worker (None: they have one)
        self.workerless_since: float | None = None
        #: what a worker must offer to take the job's tasks
        self.require: tuple[Requirement, ...] = ()
        #: a video job's output (the scene's path, or -o shot.mp4) and the container -o
        #: asks for (None: the scene's)
        self.video: str | None = None
        self.video_container: str | None = None
        #: pieces on the nodes that rendered them (:mod:`renderfarm.pieces`): then the file
        #: that tells a node it sees the job's output folder, pieces lost with their node,
        #: the nodes frames were merged on, the reference of the assembler's blueprint
        self.on_nodes = False
        self.marker: SharedMarker | None = None
        #: the file that tells a node it sees where the job's pieces are kept for a restart
        #: (pieces on nodes, a job kept for a restart: the node writes its pieces there too)
        self.store_marker: SharedMarker | None = None
        self.pieces_stored = 0
        self.pieces_lost = 0
        self.merged_on: set[str] = set()
        self.blueprint: Any = None

    @property
    def prices(self) -> dict[str, float]:
        """The farm's prices per device-hour (its report's)."""
        return self.farm.config.prices

    @property
    def merged_twice(self) -> int:
        """Frames a second merge was asked for (refused)."""
        return self.assembler.merged_twice if self.assembler is not None else 0

    # -- helpers -----------------------------------------------------------------------------
    def emit(self, kind: str, **kwargs: Any) -> None:
        state, plan, assembler = self.state, self.plan, self.assembler
        self.handle.emit(Event(
            kind=kind, job_id=self.handle.job_id,
            tasks_done=state.count(TaskStatus.DONE) if state else 0,
            tasks_total=state.total if state else 0,
            frames_done=assembler.frames_done if assembler else 0,
            frames_total=len(plan.frames) if plan else 0,
            **kwargs))

    def warn(self, message: str, data: dict[str, Any] | None = None) -> None:
        """Report a warning (kept in the job's result)."""
        logger.info("%s", message)
        self.warnings.append(message)
        self.emit("warning", message=message, **({"data": data} if data else {}))

    def end(self, reason: str) -> None:
        """Nothing more of the job starts; results still arriving are dropped."""
        with self.lock:
            if self.state is not None:
                self.state.end(reason)
        self.ended.set()

    def abort(self, error: RenderFarmError) -> None:
        """End the job now with ``error`` (a merge or a write failed): nothing more starts,
        running tasks are stopped, frames merged so far are kept."""
        self.emit("task_failed", frame=error.frame, message=error.one_line())
        with self.lock:
            self.fatal = self.fatal or error
        self.end(error.one_line())

    def stop_with(self, error: BaseException) -> None:
        """The job's own code failed (or its dispatcher ended it): it stops with ``error``
        (the first one)."""
        with self.lock:
            if self.fault is None:
                self.fault = error

    def check_end(self) -> None:
        with self.lock:
            finished = self.state.finished
        if finished:
            self.ended.set()

    # -- the job -----------------------------------------------------------------------------
    def run(self) -> None:
        start = self.started = time.monotonic()
        self.started_at = time.time()
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.scratch = self.workdir
            for stale in self.workdir.glob(".renderfarm-shared-*"):  # a killed run's
                stale.unlink(missing_ok=True)
        else:
            self.scratch = Path(tempfile.mkdtemp(prefix=f"renderfarm-{self.handle.job_id}-"))
        try:
            try:
                result = self._run(start)
            finally:
                self.finished_at = time.monotonic()
                self.inbox.shutdown(wait=True)  # its pieces and hooks are in before it ends
                self.release()
                self.elastic = self.pool.elastic_cost(self.snapshot()["tasks"], self.started_at) \
                    if self.pool is not None and self.pool.autoscale else None
            if self.elastic is not None:
                result = dataclasses.replace(result, elastic=self.elastic)
        except RenderFarmError as exc:
            self.emit("job_cancelled" if isinstance(exc, CancelledError) else "job_failed",
                      message=exc.one_line(), data={"error": type(exc).__name__})
            self.farm.forget(self.handle)  # before anyone sees it end
            self.handle.end(None, exc)
        except Exception as exc:  # never leave a handle hanging
            logger.exception("job %s crashed", self.handle.job_id)
            error = JobFailedError(f"internal error: {type(exc).__name__}: {exc}")
            self.emit("job_failed", message=error.one_line())
            self.farm.forget(self.handle)  # before anyone sees it end
            self.handle.end(None, error)
        else:
            self.emit("job_done", data={"outputs": {str(k): str(v)
                                                    for k, v in result.outputs.items()}})
            self.farm.forget(self.handle)  # before anyone sees it end
            self.handle.end(result, None)
        finally:
            self.inbox.shutdown(wait=True)  # nothing writes into the scratch folder after
            self.release()
            if self.workdir is None:
                shutil.rmtree(self.scratch, ignore_errors=True)
            self.farm.forget(self.handle)  # in case ending itself failed

    def release(self) -> None:
        """Let go of what the job kept on the nodes: its markers, its pieces (before anyone
        sees it end)."""
        for kept in (self.marker, self.store_marker, self.assembler):
            if kept is not None:
                kept.release()

    def _run(self, start: float) -> JobResult:
        spec = self.spec
        self.emit("job_queued")
        self.files = JobFiles(spec, lambda: self.farm.storage, self.farm.config.max_bundle_bytes,
                              self.scratch, self.warn,
                              lambda message, data: self.emit("info", message=message,
                                                              data=data))
        blend_hash = self.files.prepare(self.handle.transfer)
        device = self.farm.resolve_device(spec.device)
        runner = self.farm.runner(device)
        if self.handle.cancelled:
            raise CancelledError("the job was cancelled")
        runner.wait_for_workers(self.handle.job_id, self.farm.config.wait_for_workers,
                                lambda: self.handle.cancelled, lambda line, waited: self.emit(
                                    "info", message=line, data={"waiting_for_workers": waited}))
        require = self._requirements(runner.pool)
        # a worker's loaded scene is of one file in one Blender
        self.calls = WorkerCalls(spec, runner.pool, self.files, self.account,
                                 lambda worker, _file: runner.post(WorkerLoaded(worker, key)))
        saved = saved_with(self.files)
        self.blender, warned = choose_blender(self.spec, saved, runner.pool, self.calls,
                                              self.emit, self.warn, self.handle.job_id)
        require += executable_requirement(self.blender)  # only machines that have it
        self.require = require
        if require and not any(satisfies(h.tags, require) for h in runner.pool.trusted
                               if h.tags is not None):  # registered since they started?
            runner.post(*(WorkerStarted(h.worker_id, h.tags)
                          for h in runner.pool.refresh_offers()), wait=5.0)
        key = blend_hash if not self.blender else f"{blend_hash}@{self.blender}"
        self.info = info = self.calls.inspect(blend_hash, self.blender)
        # what Blender itself reports missing after opening the file on a worker
        self.files.check_missing(info.missing_files, seen=self.files.known_missing)
        if not warned:
            check_blender(saved, info, self.warn)
        self._check_size(info)
        output, final_format = self._output(info)
        self.plan = plan = plan_job(spec, info, self.handle.job_id,
                                    workers=runner.pool.size,
                                    max_tasks=self.farm.config.max_tasks,
                                    final_format=final_format)
        if len(plan.frames) > self.farm.config.max_frames:  # the scene's own range
            raise LimitError(f"the job renders {len(plan.frames)} frames (the scene's range); "
                             f"this farm allows at most {self.farm.config.max_frames} per "
                             "job: give --frames", limit="frames_per_job", path=spec.blend_file)
        for note in plan.notes:
            logger.info("%s", note)
            self.emit("info", message=note)
        for warning in plan.warnings:
            self.warn(warning)
        self.verify = self._verify_share(runner.pool)
        self.state = JobState(plan.tasks, spec.retries, verify=self.verify,
                              gate=self.frame_gate)
        self.pool = runner.pool
        self.on_nodes = self.farm.pieces_on_nodes()
        if self.on_nodes:  # a node that sees the job's folder writes its frames there
            warm()  # its first merges, checks and previews start at once
            self.marker = SharedMarker(output_path(output, plan.frames[0]).parent)
            if self.workdir is not None and self.farm.config.store_node_pieces:
                self.store_marker = SharedMarker(self.scratch)
        self.assembler = Assembler(
            job_id=self.handle.job_id, output=output, plan=plan, info=info,
            scratch=self.scratch, final_format=final_format,
            executor=self.farm.node_merger if self.on_nodes else self.farm.merger,
            finish=self._finish_on_worker,
            on_nodes=partial(assemble_on_node_for, self) if self.on_nodes else None,
            on_lost=self._pieces_lost,
            on_merged=self._merged, on_error=self.abort,
            ended=lambda: self.handle.cancelled, keep_pieces=self.verify > 0,
            project=Path(os.path.abspath(spec.blend_file)).parent,
            folder=self.outputs_folder or (Path(spec.output) if spec.output
                                           and is_output_folder(spec.output) else None),
            origin=spec.origin or os.path.abspath(spec.blend_file))
        self.settings = RenderSettings(
            blend_path=os.path.abspath(spec.blend_file), blend_hash=blend_hash,
            scene=spec.scene if spec.scene is not None else info.scene,
            samples=spec.samples, percentage=spec.percentage, device=device,
            allow_scripts=spec.allow_scripts, compositing=plan.compositing,
            threads=runner.pool.shape.threads, post_denoise=plan.post_denoise,
            sample_chunks=plan.chunks > 1, post_composite=plan.post_composite,
            allow_missing=spec.allow_missing, files=spec.files, blender=self.blender)
        self.calls.settings = self.settings
        self.emit("job_started", data={"device": device, "workers": runner.pool.size,
                                       "tiles": list(plan.tiles), "overscan": plan.overscan,
                                       "chunks": plan.chunks, "frames": list(plan.frames),
                                       "size": list(plan.size),
                                       "canvas": [plan.canvas.x0, plan.canvas.y0,
                                                  plan.canvas.x1, plan.canvas.y1],
                                       "display": dict(info.display),
                                       "blender": info.blender})
        if spec.estimate is not None:  # a probe first: its prediction, maybe a budget
            Probe(spec=spec, plan=plan, info=info, verify=self.verify,
                  job_id=self.handle.job_id, priority=self.priority, scratch=self.scratch,
                  prices=self.farm.config.prices, submit=self.farm.submit,
                  cancelled=lambda: self.handle.cancelled, emit=self.emit,
                  record=self.record, results=lambda: list(self.results),
                  keep=self._keep_estimate).run(runner.pool, device)
            if spec.estimate == "only":
                return JobResult.from_dict({**self.snapshot(), "scene": info.to_dict(),
                                            "frames": [], "outputs": {}})
        entries = Entries(self)
        if self.resume is not None:
            take_resume(self, self.resume)
        self.runner = runner
        timeout = spec.task_timeout or self.farm.config.default_task_timeout
        # with what its caller set meanwhile; then cancel, pause and priority go there
        self.handle.follow(lambda priority, paused, cancelled: runner.add(
            self.handle.job_id, key, entries,
            priority=self.priority if priority is None else priority, timeout=timeout,
            require=require, paused=paused, cancelled=cancelled,
            max_workers=spec.max_workers))
        try:
            while True:
                self._wait(entries, runner)
                entries.follow_up()  # what choosing its last tasks decided
                if not self.on_nodes or self.handle.cancelled or self.fatal is not None:
                    break
                self.assembler.wait()  # a merge that finds pieces lost renders them again
                with self.lock:
                    if self.state.finished or self.fatal is not None:
                        break
                    self.ended.clear()
        finally:  # a failed merge ended it: its running calls stop
            runner.remove(self.handle.job_id, error=self.fault or self.fatal)
        self.assembler.wait()  # errors are recorded in self.fatal
        if self.handle.cancelled:
            raise CancelledError("the job was cancelled; frames finished before that are kept")
        if self.fatal is not None:
            raise self.fatal
        if self.video is not None:
            assert self.calls is not None
            self.calls.encode(self.video, self.video_container, self.assembler, self.emit)
        return JobResult.from_dict({**self.snapshot(), "scene": info.to_dict()})

    def eta(self) -> float | None:
        """Seconds the job still needs at the pace of its own tasks (None before the first
        has finished; see :func:`renderfarm.progress.eta_seconds`)."""
        from renderfarm.progress import eta_seconds

        with self.lock:
            state = self.state
            if state is None:
                return None
            remaining = state.total - state.count(TaskStatus.DONE) - state.count(
                TaskStatus.FAILED)
            calls = [r for r in self.results if r.kind in ("render", "check") and r.ok]
        if not calls:
            return None if remaining else 0.0
        finished = sorted(r.finished for r in calls)
        per_call = sum(len(r.members) for r in calls) / len(calls)  # grouped tiles count
        return eta_seconds(finished, min(r.started for r in calls),
                           math.ceil(remaining / max(per_call, 1.0)), time.time())

    def snapshot(self) -> dict[str, Any]:
        """What the job has recorded so far, in :class:`JobResult`'s shape without the
        scene (also for a job that failed or still runs): every call's timing, checks,
        suspects, outputs and their hashes — what its report is built from."""
        with self.lock:
            state, plan, assembler = self.state, self.plan, self.assembler
            checks = [c.to_dict() for c in state.checks] if state is not None else []
            suspects = sorted(state.suspects) if state is not None else []
            tasks = [t.to_dict() for t in self.results]
        pool, settings = self.pool, self.settings
        return {
            "job_id": self.handle.job_id, "spec": self.spec.to_dict(),
            "frames": list(plan.frames) if plan is not None else [],
            "outputs": {str(k): str(v) for k, v in
                        sorted((assembler.outputs if assembler else {}).items())},
            "hashes": {str(k): v for k, v in
                       sorted((assembler.hashes if assembler else {}).items())},
            "extra_outputs": {str(k): dict(v) for k, v in
                              sorted((assembler.extra_outputs if assembler else {}).items())},
            "tasks": tasks, "checks": checks, "suspects": suspects,
            "wall_seconds": (self.finished_at or time.monotonic()) - self.started,
            "device": settings.device if settings is not None else "cpu",
            "workers": pool.size if pool is not None else 0,
            "worker_cpus": pool.shape.num_cpus if pool is not None and pool.shape.num_cpus
            else 1.0,
            "warnings": list(self.warnings), "tiles": list(plan.tiles) if plan else [1, 1],
            "verify": self.verify, "started_at": self.started_at,
            "estimate": self.estimate, "elastic": self.elastic,
            "pieces": {"kept_on": "nodes" if self.on_nodes else "head",
                       "merged_on": sorted(self.merged_on), "lost": self.pieces_lost,
                       "stored": self.pieces_stored,
                       "restored": self.assembler.restored if self.assembler else 0}}

    def _keep_estimate(self, estimate: dict[str, Any]) -> None:
        self.estimate = estimate

    def _verify_share(self, pool: WorkerPool) -> float:
        """The share of pieces this job checks: the job's, else the farm's default; none
        (with a warning) when the pool has one worker, who cannot check itself."""
        share = self.spec.verify if self.spec.verify is not None else self.farm.config.verify
        if share > 0 and max(pool.size, len(pool.trusted)) < 2:
            self.warn(f"verification (--verify {share:g}) needs two workers or more and this "
                      "farm has one: pieces are not checked")
            return 0.0
        return float(share)

    def _merged(self, frame: int, path: Path) -> None:
        assert self.assembler is not None
        self.emit("frame_merged", frame=frame,
                  data={"path": str(path), "sha256": self.assembler.hashes.get(frame),
                        "extras": dict(self.assembler.extra_outputs.get(frame, {})),
                        # a video's frame, gone once the video is encoded
                        "intermediate": self.video is not None and not self.spec.keep_frames})

    def _output(self, info: SceneInfo) -> tuple[str, str]:
        """The job's output pattern and format (the scene's own unless the job names them),
        refusing what the farm cannot write as Blender would."""
        output, final_format = resolve_output(self.spec.output, info,
                                              os.path.dirname(os.path.abspath(
                                                  self.spec.blend_file)))
        if final_format != "FFMPEG":
            # the scene's path names the files (inside -o DIR/, its file name does)
            named = (info.output_path if self.spec.output is None
                     else os.path.basename(info.output_path)
                     if is_output_folder(self.spec.output) else "")
            check_templates(named, info)
            check_output_folder(output_path(output, 0).parent)
            return output, final_format
        # a video: frames first, then one worker encodes them
        if info.views:
            raise OutputError(
                f"the scene renders {len(info.views)} views (Output properties > "
                "Stereoscopy) into a video, which the farm encodes one view of: turn "
                "Stereoscopy off, or render the views as images (-o shot_####.png)",
                path=self.spec.blend_file)
        check_templates("", info)
        if self.spec.frames is not None:
            self._check_video_frames(tuple(parse_frames(self.spec.frames)))
        folder, stem = os.path.split(output)  # a folder path: Blender's range alone
        check_output_folder(Path(folder or "."))
        self.video = output
        if self.spec.output is not None and not is_output_folder(self.spec.output):
            self.video_container = VIDEO_CONTAINERS.get(os.path.splitext(output)[1].lower())
        if os.path.splitext(stem)[1].lower() in VIDEO_CONTAINERS:
            stem = os.path.splitext(stem)[0]
        if "#" not in stem:
            stem += "####"
        frames = Path(folder) if self.spec.keep_frames else self.scratch / "frames"
        return str(frames / f"{stem}.exr"), VIDEO_FRAME_FORMAT

    def _check_video_frames(self, frames: tuple[int, ...]) -> None:
        """A video is one run of frames at one step, from frame 0 or later (as Render
        Animation writes it).

        Raises:
            OutputError: the frames are not.
        """
        steps = {b - a for a, b in zip(frames, frames[1:], strict=False)}
        if len(steps) > 1 or min(frames) < 0:
            raise OutputError(
                f"a video is one range of frames from 0 or later at one step (Render Animation "
                f"writes it so); frames {format_frames(frames)} are not: give --frames "
                "FIRST-LAST[xSTEP], or an image output (-o shot_####.png)",
                path=self.spec.blend_file)

    def account(self, kind: str, handle: WorkerHandle, started: float, finished: float,
                frame: int = 0) -> None:
        """Record time a worker spent on the job outside its tasks (opening the file,
        finishing a frame), so the job's report counts every device-second."""
        result = TaskResult(task_index=-1, frame=frame, tile=-1, ok=True,
                            worker=handle.worker_id, node=handle.node,
                            device=self.results[-1].device if self.results else "",
                            task_seconds=finished - started, started=started,
                            finished=finished, kind=kind)
        self.record(result)

    def record(self, result: TaskResult) -> None:
        """Keep what a worker call did for the job (its timing, its log) and hand it to
        the ``on_result`` hook (the farm service keeps logs in its database)."""
        with self.lock:
            self.results.append(result)
        if self.on_result is None:
            return
        try:  # on the job's own thread, never the dispatcher's (the hook writes a database)
            self.inbox.submit(self._hand_on, result)
        except RuntimeError:  # the job has ended (a late result): hand it on here
            self._hand_on(result)

    def _hand_on(self, result: TaskResult) -> None:
        assert self.on_result is not None
        try:
            self.on_result(result)
        except Exception:  # bookkeeping must not stop the job
            logger.exception("job %s: the result hook failed", self.handle.job_id)

    def _check_size(self, info: SceneInfo) -> None:
        """Refuse a frame larger than the farm allows, before anything renders."""
        percentage = self.spec.percentage if self.spec.percentage is not None \
            else info.percentage
        width, height = render_size(info.resolution, percentage)
        limit = self.farm.config.max_pixels
        if width * height > limit:
            raise LimitError(f"the job renders {width}x{height} px frames; this farm allows "
                             f"at most {limit} pixels per frame: lower the resolution "
                             "percentage", limit="pixels", path=self.spec.blend_file)

    def _wait(self, entries: Entries, runner: PoolRunner) -> None:
        """Wait until the job's tasks have ended, it is cancelled, or something stops it;
        meanwhile carry out what choosing its tasks decided (frames a check completed, a
        disagreement nobody is left to settle)."""
        while not self.ended.wait(0.1):
            entries.follow_up()
            if self.handle.cancelled:
                self.end("the job was cancelled")
                return
            if self.fault is not None:
                fault = self.fault
                if isinstance(fault, RenderFarmError):
                    raise fault
                raise JobFailedError(f"the job failed in its own code and was stopped "
                                     f"(other jobs go on): {type(fault).__name__}: {fault}")
            if self.farm.lost is not None:
                raise self.farm.lost
            self._check_trusted(runner.pool)
            if runner.error is not None:
                if isinstance(runner.error, RenderFarmError):
                    raise runner.error
                raise JobFailedError(f"the dispatcher stopped: {runner.error}")

    def _requirements(self, pool: WorkerPool) -> tuple[Requirement, ...]:
        """What a worker must offer to take the job (its ``require``; empty: any worker); a
        job no worker of the farm can take stops here, naming what it asks and what the
        workers offer; on an autoscaled farm such workers are asked for instead (the job
        fails after ``wait_for_workers`` when none comes)."""
        from renderfarm.tags import WorkerTags, check_offers, parse_requirements

        if pool.autoscale:
            return parse_requirements(self.spec.require)
        return check_offers(self.spec.require, [(h.worker_id, h.tags or WorkerTags())
                                                for h in pool.ready],
                            path=self.spec.blend_file)

    def _check_trusted(self, pool: WorkerPool) -> None:
        """Stop a job whose work waits while every started worker of the farm is suspect
        (nobody trusted is left to render it); disabled workers are an operator's choice,
        so a job waits for them."""
        ready = pool.ready
        if pool.autoscale:  # all its workers went (their nodes too): they may not come back
            self._check_workers_come(pool)
        if not ready or any(h.suspect is None for h in ready):
            return
        with self.lock:
            waiting = self.state is not None and self.state.has_pending()
        if waiting:
            raise VerificationError(
                "every worker of the farm is suspect ("
                + ", ".join(sorted(h.worker_id for h in ready))
                + "): no trusted worker is left to render the job; check those machines, then "
                "enable them (renderfarm worker enable ID) or add workers")

    def _check_workers_come(self, pool: WorkerPool) -> None:
        """On an autoscaled farm: stop a job whose tasks have waited the farm's
        ``wait_for_workers`` with no worker that may take them, naming what was asked (a
        paused job asks for nothing and waits for nothing)."""

        with self.lock:
            waiting = self.state is not None and self.state.has_pending()
        if not waiting or self.handle.paused or any(
                satisfies(h.tags, self.require) for h in pool.trusted if h.tags is not None):
            self.workerless_since = None
            return
        now = time.monotonic()
        self.workerless_since = self.workerless_since or now
        if now - self.workerless_since >= self.farm.config.wait_for_workers:
            which = f" that meets --require {self.spec.require}" if self.spec.require else ""
            raise ResourceError(
                f"the job has had no worker{which} for {now - self.workerless_since:.0f} s: "
                "the farm's ask of Ray's autoscaler "
                f"({pool.describe_ask()}) brought none (see `ray status`; a tag is asked for "
                "as the resource tag:NAME, a GPU model as accelerator_type:MODEL, other terms "
                "as node labels); finished frames are kept, submit it again to render the rest")

    def _pieces_lost(self, frame: int, members: tuple[int, ...]) -> None:
        """Pieces of ``frame`` were lost with their node: their tasks render again."""
        assert self.state is not None
        with self.lock:
            self.state.redo(members)
            self.pieces_lost += len(members)
            if not self.state.finished:  # its tasks are dispatched again at once
                self.ended.clear()
        self.emit("info", frame=frame, message=f"{len(members)} piece(s) of frame {frame} "
                  "were lost with their node; they are rendered again",
                  data={"pieces_lost": len(members)})

    def _finish_on_worker(self, payload: bytes, frame: int) -> tuple[bytes, dict[str, bytes]]:
        """Let a worker denoise, composite and/or convert a merged frame (merge threads)."""
        assert self.files is not None and self.assembler is not None and self.calls is not None
        final = self.assembler.final_format
        data = self.calls.on_a_worker(
            "finish", frame, lambda exc: MergeError(str(exc), frame=frame),
            lambda: MergeError("every worker died while finishing the frame", frame=frame),
            payload, final, WRITE_EXTENSIONS[final], self.files.ref, frame)
        return data["data"], dict(data.get("extras") or {})


def take_resume(job: JobRun, resume: Resume) -> None:
    """Mark what an earlier run of ``job`` finished as done; merge frames it left complete."""
    from renderfarm.bundle import file_sha256

    assert job.state is not None and job.assembler is not None
    index = {(e.task.frame, e.task.tile.index, e.task.chunk): i
             for i, e in job.state.entries.items()}
    complete: set[int] = set()
    for frame, path in resume.frames.items():
        found = [i for (f, _t, _c), i in index.items() if f == frame]
        if not found or not Path(path).is_file():
            continue
        for i in found:
            job.state.succeeded(i)
        job.assembler.kept(frame, Path(path))
    for (frame, _t, _c), i in index.items():  # left alone by this run (no output)
        if frame in resume.skip and frame not in resume.frames:
            job.state.succeeded(i)
    # a whole frame's render brought its File Output nodes' files along, and an earlier
    # run's are gone: such frames render again
    pieces = resume.pieces if not (job.info and job.info.file_outputs
                                   and job.assembler.piece_format != PIECE_FORMAT) else ()
    for piece in pieces:
        members = [index.get((piece.frame, t, piece.chunk)) for t in piece.tiles]
        if (piece.frame in job.assembler.outputs or None in members
                or not Path(piece.path).is_file()):
            continue
        if piece.sha256 and file_sha256(Path(piece.path)) != piece.sha256:
            logger.warning("job %s: the stored piece %s is not the one its worker described; "
                           "it renders again", job.handle.job_id, piece.path)
            continue
        if any(job.state.entries[i].status is TaskStatus.DONE for i in members):
            continue
        if job.state.complete(members):
            complete.add(piece.frame)
        job.assembler.add(piece.frame, piece.chunk,
                          Piece(Tile.from_dict(piece.tile), Path(piece.path)),
                          tuple(i for i in members if i is not None))
    if resume.frames or resume.pieces:
        job.emit("info", message=f"resumed: {job.assembler.frames_done} frame(s) and "
                 f"{job.state.count(TaskStatus.DONE)} task(s) already done")
    for frame in sorted(complete):
        job.assembler.schedule(frame)
    job.check_end()


def assemble_on_node_for(job: JobRun, entries: list[tuple[int, Piece, tuple[int, ...]]],
                         frame: int) -> tuple[list[Written], dict[str, bytes]]:
    """Merge, finish and write ``frame`` of ``job`` on a node that holds its pieces (merge
    threads): only the files' hashes come back, or their bytes when that node does not
    see the job's output folder."""
    import ray

    assert (job.files is not None and job.assembler is not None
            and job.settings is not None and job.pool is not None)
    here = ray.get_runtime_context().get_node_id()
    held = []
    for chunk, piece, members in entries:  # a piece an earlier run stored: from this node
        kept = piece.held or NodePiece(ray.put(piece.path.read_bytes()), here, 0, "")
        held.append((chunk, piece.tile, kept, members))
    node = biggest_node([h[2] for h in held])
    assembler = job.assembler
    final = assembler.final_format
    finishing = assembler.finishing
    if finishing and not [h for h in job.pool.trusted if h.ready]:  # released, or gone
        WorkerCalls.wait_for_worker(job.pool, job.farm.config.wait_for_workers)
    # finishing (denoise, composite, convert) by a worker, of that node's first
    workers = sorted([h for h in job.pool.trusted if h.ready], key=lambda h: h.node != node)
    handles = {h.worker_id: h for h in workers[:4]} if finishing else {}
    files = job.files

    def finish_args() -> tuple[Any, ...]:
        assert job.settings is not None
        return (job.settings.to_dict(), final, WRITE_EXTENSIONS[final], files.ref)

    def send_files() -> tuple[Any, ...]:
        files.send_bytes()
        return finish_args()

    with job.lock:
        if job.blueprint is None:  # once per job: every frame's merge reads it
            job.blueprint = ray.put(assembler.blueprint())
        blueprint = job.blueprint
    with SLOTS.slot(node), contextlib.ExitStack() as leases:
        for handle in handles.values():  # not released while they may finish it
            leases.enter_context(job.pool.leased(handle))
        written, extras, ran_on, finished = assemble_on_node(
            node, blueprint, frame, held, [(w, h.actor) for w, h in handles.items()],
            finish_args(), job.marker.pair() if job.marker is not None else None, send_files)
    for worker, started, ended in finished:  # its device time counts
        if worker in handles:
            job.account("finish", handles[worker], started, ended, frame)
    for name in extras:  # a name no File Output node writes: refused
        assembler.extra_target(name)
    logger.debug("job %s: frame %d merged on node %s", job.handle.job_id, frame, ran_on)
    job.merged_on.add(ran_on)
    return written, extras


class Entries:
    """One job as its dispatcher serves it (a :class:`~renderfarm.dispatcher.JobPort`,
    called on the dispatcher thread): it answers the dispatch state's questions and takes
    its calls' outcomes. Every decision (is a result late, a duplicate, does a failure retry
    or stop the job) is the pure :class:`~renderfarm.state.JobState`'s; storing a piece runs
    on the job's own thread. An exception here ends this job only (the dispatcher catches
    it, once).
    """

    def __init__(self, job: JobRun) -> None:
        self.job = job
        assert job.state is not None and job.assembler is not None
        self.state = job.state
        self.assembler = job.assembler
        #: the device class each worker rendered this job's pieces on (checks compare
        #: renders of one class only)
        self.devices: dict[str, str] = {}
        #: pieces kept on the nodes that checks compare, by task index
        self.held = job.assembler.held

    def next_task(self, worker: str, live: frozenset[str], checks_only: bool) -> Task | None:
        """The job's next task for a free worker (``live``: the workers taking tasks), or
        None; a paused job (``checks_only``) gives checks of pieces already rendered only
        (pause stops rendering, not the finishing of frames whose pieces are in)."""
        job = self.job
        faults.fire("driver.next_task", job_id=job.handle.job_id)
        if job.ended.is_set() or job.backlog >= INBOX_LIMIT:  # its results wait to be kept
            return None
        with job.lock:
            return self.state.next_for(worker, live, group=job.spec.group_tiles,
                                       devices=self.devices, checks_only=checks_only)

    def follow_up(self) -> None:
        """Carry out what choosing tasks decided (on the job's thread): a disagreement
        nobody is left to settle stops the job, frames a check completed are merged."""
        job = self.job
        with job.lock:
            problems = self.state.take_problems()
            ready = self.state.take_ready()
        for problem in problems:
            job.abort(problem)
        self.merge(ready)

    def stop(self, error: BaseException) -> None:
        """The dispatcher ended the job (its code failed, or the cluster did)."""
        self.job.stop_with(error)

    def merge(self, frames: list[int]) -> None:
        """Merge frames the job state found complete (after checks, or redone pieces)."""
        for frame in frames:
            self.assembler.schedule(frame)
        if frames:
            self.job.check_end()

    def call(self, handle: WorkerHandle, tasks: tuple[Task, ...]) -> Any:
        """Start a task on a worker (a job's calls carry one task each); returns the
        reference of its result."""
        job = self.job
        (task,) = tasks
        assert job.files is not None
        faults.fire("driver.call", job_id=job.handle.job_id, frame=task.frame)
        attempt = self.state.entries[task.index].attempts
        job.emit("task_started", frame=task.frame, tile=task.tile.index,
                 data={"worker": handle.worker_id, "attempt": attempt,
                       "tiles": self.tiles(task)})
        args = (job.settings.to_dict(), self.assembler.piece_format, task.to_dict(), attempt,
                job.files.ref)
        if job.on_nodes:  # the piece stays on the worker's node: a second return value
            store = (str(self.assembler.stored_path(task, attempt, handle.worker_id)),
                     *job.store_marker.pair()) \
                if job.store_marker is not None and self.state.check_of(task.index) is None \
                else None  # and is written where pieces are kept for a restart, if it can
            return handle.actor.render.options(num_returns=2).remote(*args, keep=True,
                                                                     store=store)
        return handle.actor.render.remote(*args)

    def done(self, handle: WorkerHandle, task: Task, value: Any) -> None:
        """A worker's reply for ``task``: keep the piece (or hand a failure on)."""
        job = self.job
        faults.fire("driver.done", job_id=job.handle.job_id, frame=task.frame)
        with job.lock:
            if job.handle.cancelled:
                self.state.end("the job was cancelled")
            verdict = self.state.on_result(task.members, handle.worker_id)
            if verdict is Verdict.LATE:  # its files may be gone: drop, count
                job.late_results += 1
            elif verdict is Verdict.DUPLICATE:  # a straggler's backup finished first
                job.duplicates += 1
            elif verdict is Verdict.REJECT:  # a suspect's: it runs again elsewhere
                self.state.reject(task.members, handle.worker_id)
        if verdict is Verdict.LATE:
            logger.info("job %s: result of %s arrived after the job ended; dropped",
                        job.handle.job_id, task.task_id)
        extras = (value[0].pop("extras", None) if isinstance(value, tuple) and value
                  and isinstance(value[0], dict) else None) or {}
        if verdict is not Verdict.ACCEPT:
            reply = value[0] if isinstance(value, tuple) and value else None
            if isinstance(reply, dict) and reply.get("piece_stored"):  # never used
                self.assembler.stored_path(task, int(reply.get("attempt") or 0),
                                           handle.worker_id).unlink(missing_ok=True)
            if isinstance(reply, dict) and "ok" in reply:  # its time counts all the same
                job.record(self.result_of(task, reply, ok=False, error={
                    "type": "Dropped", "message": f"result not used ({verdict.value}"
                    + (": its worker is suspect" if verdict is Verdict.REJECT else "") + ")"}))
            return
        reply, data = value
        if not reply.get("ok"):
            error = reply.get("error") or {}
            if error.get("need_blob"):  # its files go through Ray (read on the job's thread)
                assert job.files is not None
                files = job.files
                self.take_later(lambda: (files.send_bytes(), self.requeue(task)))
                return
            self.failed(handle, task, error_from(error), reply)
            return
        self.take_later(self.keep, handle, task, reply, data, extras)

    def take_later(self, work: Callable[..., Any], *args: Any) -> None:
        """Run ``work(*args)`` on the job's own thread, after the results before it: a job
        slow to store its pieces slows only itself, never the dispatcher or other jobs (it
        gets no more tasks while :data:`INBOX_LIMIT` results wait). An exception there stops
        this job, as in an entry point."""
        job = self.job
        with job.lock:
            job.backlog += 1

        def take() -> None:
            try:
                if not job.ended.is_set():  # an ended job's files may be gone: dropped
                    work(*args)
            except Exception as exc:
                logger.warning("job %s: keeping a result failed: %s", job.handle.job_id, exc)
                job.stop_with(exc)
                if job.runner is not None:  # its running calls stop
                    job.runner.remove(job.handle.job_id, error=exc)
            finally:
                with job.lock:
                    job.backlog -= 1

        job.inbox.submit(take)

    def keep(self, handle: WorkerHandle, task: Task, reply: dict[str, Any], data: bytes,
             extras: dict[str, Any]) -> None:
        """Store an accepted piece, record its call, and hand it on: to its check, or to
        its frame's merge (on the job's own thread: :meth:`take_later`)."""
        job = self.job
        try:  # a name no File Output node writes: a broken or lying worker's
            for name in extras:
                self.assembler.extra_target(name)
        except MergeError as exc:
            self.failed(handle, task, exc, reply)
            return
        check = self.state.check_of(task.index)
        path = (self.check_path(task.index) if check is not None
                else self.assembler.piece_path(task))
        held: NodePiece | None = None
        stored = False  # a piece on its node written where pieces are kept for a restart
        if job.on_nodes:  # on the worker's node: only its size and hash came
            stored = check is None and bool(reply.get("piece_stored"))
            held = NodePiece(data, str(reply.get("node") or ""),
                             int(reply.get("piece_bytes") or 0),
                             str(reply.get("piece_sha256") or ""), stored=stored)
            if stored:  # that attempt's own file
                path = self.assembler.stored_path(task, int(reply.get("attempt") or 0),
                                                  handle.worker_id)
                with job.lock:
                    job.pieces_stored += 1
            if self.assembler.keep_pieces:  # a verified job's: for its checks
                with job.lock:
                    self.held[task.index] = held
        else:
            try:
                faults.fire("driver.store_piece", job_id=job.handle.job_id, frame=task.frame)
                write_atomically(path, lambda tmp: tmp.write_bytes(data))
            except OSError as exc:
                raise OutputError(f"cannot store a finished piece where the farm keeps "
                                  f"pieces ({exc.strerror}); free space there (pieces stored "
                                  "so far are kept)", path=str(path), frame=task.frame) from exc
        samples = (task.samples[1] if task.samples else
                   job.spec.samples or (job.info.samples if job.info else None) or 0)
        result = self.result_of(task, reply, samples=samples,
                                pixels=task.tile.render.width * task.tile.render.height)
        job.record(result)
        if result.device:
            handle.device = result.device
            with job.lock:
                self.devices[handle.worker_id] = result.device
        if check is not None:  # compared off the dispatcher thread
            job.farm.merger.submit(self.settle, task, path)
            job.emit("task_checking", frame=task.frame, tile=task.tile.index,
                     data={"worker": handle.worker_id, "of": check.original})
            return
        if job.on_piece is not None:  # the piece is on disk (or its node): a failing hook
            job.on_piece(task, held if held is not None else path)  # fails the job
        if extras:  # what the frame's File Output nodes wrote (a whole frame's render)
            self.assembler.add_extras(task.frame, extras)
        self.assembler.add(task.frame, task.chunk, Piece(task.tile, path, held), task.members)
        with job.lock:
            checked = self.state.start_check(task, handle.worker_id, result.device)
            frame_complete = self.state.complete(task.members)
        job.emit("task_done", frame=task.frame, tile=task.tile.index,
                 data={**{k: reply.get(k) for k in ("worker", "render_seconds", "device")},
                       "tiles": self.tiles(task), "checked": checked is not None,
                       "piece": {"path": None if held is not None and not stored
                                 else str(path),
                                 "name": self.assembler.piece_path(task).name,
                                 "chunk": task.chunk,
                                 "tile": task.tile.to_dict(), "size": list(task.size),
                                 **({"node": held.node, "bytes": held.size,
                                     "sha256": held.sha256} if held is not None else {})}})
        if frame_complete:
            self.assembler.schedule(task.frame)
        job.check_end()

    def failed(self, handle: WorkerHandle, task: Task, error: RenderFarmError,
               reply: dict[str, Any] | None = None) -> None:
        """An attempt of ``task`` failed: retry it, or fail it (and maybe the job).
        ``reply`` is what is known of the attempt (its worker's reply, or the dispatcher's
        account of a worker that gave none); it is kept for the job's report."""
        job = self.job
        faults.fire("driver.failed", job_id=job.handle.job_id, frame=task.frame)
        if error.frame is None:
            error.frame = task.frame
        with job.lock:
            outcome = self.state.on_failure(task.members, error.one_line(), error.retryable,
                                            cancelled=isinstance(error, CancelledError))
            ready = self.state.take_ready()  # a check given up no longer holds its frame
            blocked = self.state.take_blocked()
        for worker in blocked:
            job.warn(f"worker {worker} failed {BLOCK_AFTER} tasks of this job in a row: it "
                     "gets no more of them (other jobs still use it)", data={"blocked": worker})
        self.merge(ready)
        if reply is not None:  # the time it took counts, whatever became of it
            handle.failures += not isinstance(error, CancelledError)
            job.record(self.result_of(task, reply, ok=False, error=error.to_dict()))
        if outcome is Failure.IGNORED:  # the job ended, or another copy finished
            return
        if outcome is Failure.RETRY:
            job.emit("task_retry", frame=task.frame, tile=task.tile.index,
                     message=error.one_line())
        else:
            job.emit("task_failed", frame=task.frame, tile=task.tile.index,
                     message=error.one_line())
            if job.fatal is None and not isinstance(error, CancelledError):
                job.fatal = error
        job.check_end()

    def requeue(self, task: Task) -> None:
        """Put ``task`` back without counting the attempt (its worker could not start it)."""
        faults.fire("driver.requeue", job_id=self.job.handle.job_id, frame=task.frame)
        with self.job.lock:
            for index in task.members:
                self.state.requeue(index)

    def may_backup(self, task: Task) -> bool:
        """Whether a lagging task may get a backup copy (once; not once the job ended)."""
        if self.job.ended.is_set():
            return False
        with self.job.lock:
            return self.state.may_backup(task.members)

    def exclusive(self, worker: str, others: frozenset[str]) -> bool:
        """Whether a pending task of the job may run on ``worker`` and on none of
        ``others``."""
        with self.job.lock:
            return self.state.exclusive(worker, others)

    def pending(self) -> int:
        """Tasks of the job waiting for a worker."""
        with self.job.lock:
            return self.state.count(TaskStatus.PENDING)

    def tiles(self, task: Task) -> list[int]:
        """The grid tiles a task renders (several when neighbouring tiles were grouped)."""
        return [self.state.entries[i].task.tile.index for i in task.members]

    def result_of(self, task: Task, reply: dict[str, Any], **fields: Any) -> TaskResult:
        """What a worker's ``reply`` for ``task`` records: its kind (render or check) and,
        for a call of grouped tiles, the grid tiles it rendered; ``fields`` override the
        reply's."""
        tiles = tuple(self.tiles(task)) if task.covers else ()
        return TaskResult.from_dict({**reply, "kind": self.kind(task), "tiles": tiles,
                                     **fields})

    def kind(self, task: Task) -> str:
        """What a call of ``task`` is for the job's report: ``check`` or ``render``."""
        return "check" if self.state.check_of(task.index) is not None else "render"

    def check_path(self, index: int) -> Path:
        """Where the piece of check ``index`` waits to be compared."""
        return self.job.scratch / f"check-{index}.exr"

    def render_path(self, check: Check, index: int) -> Path:
        """The piece of one render of ``check``: the original's, or a check's."""
        if index == check.members[0]:
            return self.assembler.piece_path(check.task)
        return self.check_path(index)

    def settle(self, task: Task, path: Path) -> None:
        """Compare a check's piece with the piece's earlier renders and carry out what the
        job state decides (merge threads; a failure here fails the job)."""
        job = self.job
        try:
            with job.lock:
                check = self.state.check_of(task.index)
                earlier = list(check.renders) if check is not None else []
            assert check is not None
            equal: set[int] = set()
            for index, _worker in earlier:
                try:
                    same, why = self._compare(task, check, index, path)
                except PiecesLost as lost:  # no verdict: the check is an attempt that
                    self.failed(WorkerHandle("?", None), task, lost)  # failed, retried
                    return
                if same:
                    equal.add(index)
                else:
                    logger.info("job %s: check of frame %d tile %d differs from render %d: %s",
                                job.handle.job_id, task.frame, task.tile.index, index, why)
            with job.lock:
                settled = self.state.settle(task.index, equal)
                self.assembler.drop(settled.redo)  # a suspect's pieces are replaced
                for frame in settled.reopened:
                    self.assembler.reopen(frame)
                ready = self.state.take_ready()
            self.carry_out(settled)
            self.merge(ready)
        except Exception as exc:
            job.abort(exc if isinstance(exc, RenderFarmError) else MergeError(
                f"verification failed: {type(exc).__name__}: {exc}", frame=task.frame))

    def _compare(self, task: Task, check: Check, index: int, path: Path) -> tuple[bool, str]:
        """Whether check ``task``'s piece agrees with render ``index`` of ``check`` (on
        the node of the check's piece when pieces stay on the nodes)."""
        tolerance = self.job.farm.config.verify_tolerance
        if not self.job.on_nodes:
            return compare_images(path, self.render_path(check, index), tolerance)
        with self.job.lock:
            mine = self.held.get(task.index)
            other = self.held.get(check.task.index if index == check.members[0] else index)
        if mine is None or other is None:  # a render of it was replaced meanwhile
            raise PiecesLost((), frame=task.frame)
        return compare_on_node(mine, other, tolerance,
                               WRITE_EXTENSIONS[self.assembler.piece_format])

    def carry_out(self, settled: Settled) -> None:
        """Suspects get no more tasks (on the whole farm), the job says what it found,
        pieces no longer needed go."""
        job = self.job
        check = settled.check
        assert job.pool is not None
        for worker in settled.suspects:
            handle = job.pool.workers.get(worker)
            node = handle.node if handle is not None else "?"
            assert job.runner is not None
            job.runner.suspect(worker, f"its pixels of job {job.handle.job_id} frame "
                             f"{check.task.frame} tile {check.task.tile.index} disagree with "
                             "other workers'")
            job.warn(f"verification: worker {worker} (node {node}) rendered frame "
                     f"{check.task.frame} tile {check.task.tile.index} unlike the others "
                     f"({', '.join(w for _i, w in check.renders)}): it is suspect and gets "
                     f"no more tasks; its {len(settled.redo)} piece(s) of this job are "
                     "rendered again", data={"suspect": worker, "node": node})
        for decided in [check, *settled.resolved]:
            job.emit("task_checked", frame=decided.task.frame, tile=decided.task.tile.index,
                     data={"outcome": decided.outcome or "undecided",
                           "workers": [w for _i, w in decided.renders],
                           "suspects": list(decided.suspects),
                           "tiles": self.tiles(decided.task), "chunk": decided.task.chunk,
                           "reopened": settled.reopened if decided is check else []})
        for index in settled.discard:
            self.check_path(index).unlink(missing_ok=True)
            with job.lock:
                self.held.pop(index, None)
        if settled.failed:
            job.abort(VerificationError(settled.failed, frame=check.task.frame,
                                        tile=check.task.tile.index))
