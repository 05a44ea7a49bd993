"""A job's last stage: its finished pieces become its output files.

:class:`Assembler` keeps each frame's pieces until the frame is complete, then (on the farm's
merge threads) places tiles, combines sample ranges, lets a worker denoise, composite or
convert the merged frame where the plan says, and writes the output atomically. It never
merges a frame twice, writes nothing once its job has ended, and reports a failure to its job
(which then stops) instead of raising into a thread nobody watches.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path

from renderfarm import faults
from renderfarm.errors import MergeError, RenderFarmError
from renderfarm.job import PIECE_FORMAT, WRITE_EXTENSIONS, SceneInfo, Task, output_path
from renderfarm.merge import (
    Piece,
    combine_samples,
    drop_parts,
    exr_encoding,
    merge_pieces,
    recode_exr,
    write_atomically,
)
from renderfarm.planner import Plan, added_colour_passes

logger = logging.getLogger(__name__)

def piece_format(plan: Plan, final_format: str) -> str:
    """The format a job's workers write their pieces in."""
    if plan.tiled or plan.post_denoise or plan.chunks > 1:
        return PIECE_FORMAT
    return final_format


class Assembler:
    """Merges and finishes a job's frames.

    Args:
        job_id: the job (for messages and fault points).
        output: the job's output pattern (``shot_####.exr``).
        plan: the job's plan (tiles, sample ranges, post-processing).
        info: what the worker found in the scene (passes added only to combine light).
        scratch: where pieces wait and frames are merged.
        final_format: the format of the output files.
        executor: the threads merges run on.
        finish: lets a worker denoise / composite / convert a merged frame's bytes
            (``finish(payload, frame) -> bytes``).
        on_merged: told of each frame written (``on_merged(frame, path)``).
        on_error: told of a merge that failed (the job stops with it).
        ended: whether the job has ended (cancelled): nothing more is written then.
        keep_pieces: keep every piece until the job ends (a verified job: a worker found
            suspect later has its pieces replaced and their frames merged again).
    """

    def __init__(self, *, job_id: str, output: str, plan: Plan, info: SceneInfo,
                 scratch: Path, final_format: str, executor: Executor,
                 finish: Callable[[bytes, int], bytes],
                 on_merged: Callable[[int, Path], None],
                 on_error: Callable[[RenderFarmError], None],
                 ended: Callable[[], bool], keep_pieces: bool = False) -> None:
        self.job_id = job_id
        self.output = output
        self.plan = plan
        self.info = info
        self.scratch = scratch
        self.final_format = final_format
        self.piece_format = piece_format(plan, final_format)
        self._executor = executor
        self._finish_remote = finish
        self._on_merged = on_merged
        self._on_error = on_error
        self._ended = ended
        self.keep_pieces = keep_pieces
        self._lock = threading.Lock()
        self._pieces: dict[int, list[tuple[int, Piece, tuple[int, ...]]]] = {}
        self._merged: set[int] = set()
        self._generation: dict[int, int] = {}  # a reopened frame's older merges are void
        self._frame_locks: dict[int, threading.Lock] = {}
        self._futures: list[Future[None]] = []
        #: frame -> its output file, for every frame written (or kept from an earlier run)
        self.outputs: dict[int, Path] = {}
        #: frame -> the SHA-256 of its output file as written
        self.hashes: dict[int, str] = {}
        #: merges refused because the frame was merged already (0 unless something is wrong)
        self.merged_twice = 0

    @property
    def frames_done(self) -> int:
        """Frames written so far."""
        with self._lock:
            return len(self.outputs)

    def piece_path(self, task: Task) -> Path:
        """Where a task's piece waits until its frame is merged."""
        return self.scratch / f"{task.task_id}{WRITE_EXTENSIONS[self.piece_format]}"

    def add(self, frame: int, chunk: int, piece: Piece, members: tuple[int, ...] = ()) -> None:
        """Keep a finished piece of ``frame`` (sample range ``chunk``) that tasks ``members``
        rendered."""
        with self._lock:
            self._pieces.setdefault(frame, []).append((chunk, piece, tuple(members)))

    def drop(self, members: set[int] | list[int]) -> None:
        """Forget the pieces tasks ``members`` rendered (a suspect worker's): their frames
        wait for new ones. The files stay until the job ends (a merge may be reading them;
        their replacements are written in their place atomically)."""
        gone = set(members)
        with self._lock:
            for frame, found in self._pieces.items():
                self._pieces[frame] = [f for f in found if not gone.intersection(f[2])]

    def reopen(self, frame: int) -> None:
        """A merged frame is merged again once its replaced pieces are in (a merge of it
        still waiting is void)."""
        with self._lock:
            self._merged.discard(frame)
            self._generation[frame] = self._generation.get(frame, 0) + 1

    def kept(self, frame: int, path: Path) -> None:
        """A frame an earlier run of the job wrote already (resume): not merged again."""
        from renderfarm.bundle import file_sha256

        with self._lock:
            self.outputs[frame] = path
            self._merged.add(frame)
        self.hashes[frame] = file_sha256(path)

    def schedule(self, frame: int) -> None:
        """Merge ``frame`` (every piece of it is in) on a merge thread."""
        with self._lock:
            generation = self._generation.get(frame, 0)
            lock = self._frame_locks.setdefault(frame, threading.Lock())
        self._futures.append(self._executor.submit(self._merge, frame, generation, lock))

    def wait(self) -> None:
        """Wait for every merge scheduled so far (failures went to ``on_error``)."""
        for future in list(self._futures):
            future.exception()

    # -- merge threads -----------------------------------------------------------------------
    def _merge(self, frame: int, generation: int, lock: threading.Lock) -> None:
        try:
            faults.fire("driver.merge", job_id=self.job_id, frame=frame)
            if self._ended():  # nothing more is written for a job that has ended
                return
            with lock:  # one merge of a frame at a time: a newer one writes last
                self._merge_now(frame, generation)
        except RenderFarmError as exc:
            exc.frame = frame
            self._on_error(exc)
        except Exception as exc:
            self._on_error(MergeError(f"{type(exc).__name__}: {exc}", frame=frame))

    def _merge_now(self, frame: int, generation: int) -> None:
        from renderfarm.bundle import file_sha256

        with self._lock:
            if generation != self._generation.get(frame, 0):
                return  # reopened since: a newer merge follows once its pieces are in
            if frame in self._merged:  # never two merges of one frame
                self.merged_twice += 1
                logger.error("job %s: frame %d was to be merged twice; refused",
                             self.job_id, frame)
                return
            self._merged.add(frame)
            found = [(chunk, piece) for chunk, piece, _m in
                     (self._pieces.get(frame, []) if self.keep_pieces
                      else self._pieces.pop(frame))]
        target = output_path(self.output, frame)
        self._write(found, frame, target)
        if not self.keep_pieces:
            for _chunk, piece in found:
                piece.path.unlink(missing_ok=True)
        digest = file_sha256(target)
        with self._lock:
            self.outputs[frame] = target
            self.hashes[frame] = digest
        self._on_merged(frame, target)

    def _write(self, found: list[tuple[int, Piece]], frame: int, target: Path) -> None:
        plan = self.plan
        split = plan.tiled or plan.chunks > 1
        if not split and not plan.post_denoise:  # the piece is the output file
            source = found[0][1].path
            keep = shutil.copyfile if self.keep_pieces else shutil.move
            write_atomically(target, lambda tmp: keep(source, tmp))
            return
        merged = self._merge_frame(found, frame)
        if plan.post_denoise or plan.post_composite or self.final_format != "OPEN_EXR_MULTILAYER":
            data = self._finish_remote(merged.read_bytes(), frame)
            write_atomically(target, lambda tmp: tmp.write_bytes(data))
            merged.unlink(missing_ok=True)
        else:  # the scene's own depth and codec (pieces are lossless 32-bit float)
            encoding = exr_encoding(self.info.file_format, self.info.output)
            write_atomically(target, lambda tmp: recode_exr(merged, tmp, encoding))
            merged.unlink(missing_ok=True)

    def _merge_frame(self, found: list[tuple[int, Piece]], frame: int) -> Path:
        """One multilayer EXR of the frame from its pieces: tiles placed, sample ranges
        combined."""
        chunks: dict[int, list[Piece]] = {}
        for chunk, piece in found:
            chunks.setdefault(chunk, []).append(piece)
        frames = []
        for chunk in sorted(chunks):
            path = self.scratch / f"frame-{frame}-c{chunk}.exr"
            if self.plan.tiled:
                merge_pieces(chunks[chunk], self.plan.canvas, path)
            elif self.keep_pieces:
                shutil.copyfile(chunks[chunk][0].path, path)
            else:
                shutil.move(chunks[chunk][0].path, path)
            frames.append(path)
        if len(frames) == 1:
            return frames[0]
        merged = self.scratch / f"frame-{frame}.exr"
        lengths = [r[1] for r in self.plan.sample_ranges if r is not None]
        combine_samples(frames, lengths, merged)
        for path in frames:
            path.unlink(missing_ok=True)
        added = added_colour_passes(self.info)
        if added:  # colour passes rendered only to combine light passes exactly
            trimmed = self.scratch / f"frame-{frame}-trimmed.exr"
            drop_parts(merged, trimmed, added)
            merged.unlink()
            return trimmed
        return merged
