"""One-off calls of a job on its workers, outside its tasks: opening its file to read the
scene, finishing a merged frame, encoding its video. Each goes to the worker that has the
job's file loaded (else an idle one), moves on when a worker dies, sends the job's files when
a worker cannot reach them, and bills its time to the job."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from renderfarm.assemble import Assembler
from renderfarm.errors import BlendFileError, RenderError, RenderFarmError
from renderfarm.executor import WorkerPool
from renderfarm.job import JobSpec, RenderSettings, SceneInfo, scene_info_from
from renderfarm.jobfiles import JobFiles
from renderfarm.merge import write_atomically

logger = logging.getLogger(__name__)


def busy_span(reply: Any, sent: float) -> tuple[float, float]:
    """When a worker began and ended a call, as its reply says (the call may have waited
    behind the worker's renders: that wait is not the job's busy time); a reply that does
    not say is counted from ``sent`` to now."""
    now = time.time()
    if isinstance(reply, dict) and isinstance(reply.get("started"), (int, float)) \
            and isinstance(reply.get("finished"), (int, float)):
        return float(reply["started"]), float(reply["finished"])
    return sent, now


class WorkerCalls:
    """A job's one-off calls on its pool.

    Args:
        spec: the job's spec (its file, retries, scene).
        pool: the workers.
        files: how the job's files reach them.
        account: ``account(kind, handle, started, finished, frame)`` bills a call's time.
        loaded: ``loaded(worker_id, blend_hash)`` says a call left the job's file loaded on a
            worker (its dispatcher then prefers it for the job's tasks).
    """

    def __init__(self, spec: JobSpec, pool: WorkerPool, files: JobFiles,
                 account: Callable[..., None],
                 loaded: Callable[[str, str], None] = lambda worker, key: None) -> None:
        self.spec = spec
        self.loaded = loaded
        self.pool = pool
        self.files = files
        self.account = account
        #: the job's render settings, once planned (finishing and encoding send them)
        self.settings: RenderSettings | None = None

    def inspect(self, blend_hash: str, blender: str = "") -> SceneInfo:
        """Open the job's file on a worker (one that has it loaded, else an idle one) and
        read its scene with Blender ``blender`` (its version; empty: the worker's own);
        another worker when one dies.

        Raises:
            BlendFileError: every worker that opened the file crashed.
        """
        import ray

        spec, pool = self.spec, self.pool
        path = os.path.abspath(spec.blend_file)
        for attempt in range(spec.retries + 2):
            handle = pool.preferred(blend_hash, blender)
            started = time.time()
            try:
                with pool.leased(handle):
                    reply = ray.get(handle.actor.inspect.remote(
                        path, blend_hash, spec.allow_scripts, spec.scene, self.files.ref,
                        blender))
            except ray.exceptions.RayActorError:
                logger.warning("worker %s died while opening %s (attempt %d)",
                               handle.worker_id, path, attempt + 1)
                pool.replace(handle.worker_id)  # the next try prefers a started worker
                self.wait_for_worker(pool)
                continue
            if reply.get("need_blob"):
                self.files.send_bytes()
                continue
            if (reply.get("error") or {}).get("type") == "WorkerDiedError":
                logger.warning("Blender crashed on worker %s while opening %s (attempt %d)",
                               handle.worker_id, path, attempt + 1)
                continue  # the worker starts a new Blender for the next try
            info = scene_info_from(reply)
            self.loaded(handle.worker_id, blend_hash)
            self.account("inspect", handle, *busy_span(reply, started))
            return info
        raise BlendFileError("every worker that opened this file crashed; the file may be "
                             "damaged: open and save it again in Blender",
                             path=spec.blend_file, retryable=False)

    def blenders(self) -> list[dict[str, Any]]:
        """The Blenders a worker's machine has now (registered or prepared since the workers
        started too)."""
        import ray

        handle = self.pool.preferred("")
        with self.pool.leased(handle):
            return list(ray.get(handle.actor.blenders.remote(), timeout=120))

    def prepare_blender(self, version: str) -> dict[str, Any]:
        """Let a worker find or prepare Blender ``version`` on its machine (its other
        workers then find it ready; another machine's prepare it on their first task).

        Raises:
            ResourceError: the worker could not (pip failed, another Python needed, ...).
        """
        import ray

        handle = self.pool.preferred("")
        try:
            with self.pool.leased(handle):
                return dict(ray.get(handle.actor.prepare_blender.remote(version)))
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, RenderFarmError):
                raise exc.cause from exc
            raise

    @staticmethod
    def wait_for_worker(pool: WorkerPool, seconds: float = 30.0) -> None:
        """After a worker died (its node may be gone with it): let the pool drop workers
        that cannot be placed and wait a little for one to start, so the next attempt does
        not go to a worker that dies the same way."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pool.follow_cluster(every=0.0)
            pool.poll_started()
            if pool.ready:
                return
            time.sleep(0.2)

    def on_a_worker(self, method: str, frame: int,
                     failed: Callable[[BaseException], RenderFarmError],
                     all_died: Callable[[], RenderFarmError], *args: Any) -> Any:
        """Call ``method`` of the job's preferred worker with the job's settings and
        ``args``, and count its time for the job: another worker when one dies, the job's
        files sent when the worker cannot reach them.

        Raises:
            RenderFarmError: the worker's own error, else ``failed(error)``; ``all_died()``
                when every try lost its worker.
        """
        import ray

        assert self.settings is not None
        for _attempt in range(self.spec.retries + 2):
            handle = self.pool.preferred(self.settings.blend_hash, self.settings.blender)
            started = time.time()
            try:
                with self.pool.leased(handle):
                    reply = ray.get(getattr(handle.actor, method).remote(
                        self.settings.to_dict(), *args))
            except ray.exceptions.RayActorError:
                self.pool.replace(handle.worker_id)
                continue
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, RenderFarmError) else None
                raise cause or failed(exc) from exc
            if reply is None:  # the worker cannot reach the job's files: send them
                self.files.send_bytes()
                continue
            self.account(method, handle, *busy_span(reply, started), frame)
            self.loaded(handle.worker_id, self.settings.blend_hash)
            return reply
        raise all_died()

    def encode(self, video: str, container: str | None, assembler: Assembler,
               emit: Callable[..., None]) -> None:
        """Let one worker encode the job's video from its frames with Blender's FFmpeg
        writer; the frames go unless the job keeps them."""
        import ray

        frames = sorted(assembler.outputs)
        if not frames:
            return
        emit("info", message=f"encoding the video of {len(frames)} frame(s)")
        refs = [(frame, ray.put(assembler.outputs[frame].read_bytes()))
                for frame in frames]
        step = frames[1] - frames[0] if len(frames) > 1 else 1
        folder, name = os.path.split(video)  # name "": a folder (Blender's range only)
        reply = self.on_a_worker(
            "encode", frames[0], lambda exc: RenderError(f"encoding the video failed: {exc}"),
            lambda: RenderError("every worker died while encoding the video"),
            refs, step, name, container, self.files.ref)
        written = str(reply.get("name") or "")
        if (not written or written != os.path.basename(written) or written.startswith(".")
                or "\\" in written):
            raise RenderError(f"the worker named the video {written[:80]!r}, not a file name; "
                              "nothing was written")
        target = Path(folder) / written
        data = reply["data"]
        write_atomically(target, lambda tmp: tmp.write_bytes(data))
        assembler.add_output(frames[0], target)
        if not self.spec.keep_frames:
            assembler.forget_outputs(frames)
        emit("output_written", frame=frames[0],
                  data={"path": str(target),
                        "sha256": assembler.extra_outputs[frames[0]][str(target)]})
