"""A job's last stage: its finished pieces become its output files.

:class:`Assembler` keeps each frame's pieces until the frame is complete, then (on the farm's
merge threads) places tiles, combines sample ranges, lets a worker denoise, composite or
convert the merged frame where the plan says, and writes the output atomically. It never
merges a frame twice, writes nothing once its job has ended, and reports a failure to its job
(which then stops) instead of raising into a thread nobody watches.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from pathlib import Path, PurePosixPath
from typing import Any

from renderfarm import faults
from renderfarm.errors import MergeError, RenderFarmError
from renderfarm.job import (
    PIECE_FORMAT,
    WRITE_EXTENSIONS,
    SceneInfo,
    Task,
    output_path,
    view_path,
)
from renderfarm.merge import (
    Piece,
    combine_samples,
    drop_parts,
    exr_encoding,
    merge_pieces,
    piece_stats,
    recode_exr,
    unpack_view,
    write_atomically,
)
from renderfarm.pieces import PiecesLost, Written
from renderfarm.planner import Plan, added_colour_passes
from renderfarm.stamp import combine_stats

logger = logging.getLogger(__name__)

def piece_format(plan: Plan, final_format: str, views: bool = False) -> str:
    """The format a job's workers write their pieces in (``views``: the scene writes a file
    per view: each piece holds every view, and the frame is written view by view)."""
    if plan.tiled or plan.post_denoise or plan.chunks > 1 or views:
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
            (``finish(payload, frame) -> (bytes, {extra file: bytes})``).
        on_merged: told of each frame written (``on_merged(frame, path)``).
        on_error: told of a merge that failed (the job stops with it).
        ended: whether the job has ended (cancelled): nothing more is written then.
        keep_pieces: keep every piece until the job ends (a verified job: a worker found
            suspect later has its pieces replaced and their frames merged again).
        project: the artist's project folder (of the ``.blend``): File Output nodes' ``//``
            paths are relative to it.
        folder: the job's output folder when it names one (``-o DIR/``, the service's
            folder of a job): File Output nodes' files go inside it instead.
        origin: the ``.blend`` as the artist has it: the ``File`` Blender writes into the
            files' metadata names it (a worker's names its own copy).
        place: where a file the frame writes goes instead of its path (a merge on a node
            that does not see the job's output folder writes in its own; None: in place).
        on_nodes: merges, finishes and writes a frame whose pieces are kept on the nodes
            (:mod:`renderfarm.pieces`), there; returns the files written and the File Output
            files finishing wrote.
        on_lost: told of a frame's pieces lost with their node (``on_lost(frame, task
            indices)``): their tasks render again, and the frame merges once they are in.
    """

    def __init__(self, *, job_id: str, output: str, plan: Plan, info: SceneInfo,
                 scratch: Path, final_format: str, executor: Executor,
                 finish: Callable[[bytes, int], tuple[bytes, Mapping[str, bytes]]],
                 on_merged: Callable[[int, Path], None],
                 on_error: Callable[[RenderFarmError], None],
                 ended: Callable[[], bool], keep_pieces: bool = False,
                 project: Path | None = None, folder: Path | None = None,
                 origin: str | None = None,
                 place: Callable[[Path], Path] | None = None,
                 on_nodes: Callable[[list[tuple[int, Piece, tuple[int, ...]]], int],
                                    tuple[list[Written], Mapping[str, bytes]]] | None = None,
                 on_lost: Callable[[int, tuple[int, ...]], None] | None = None) -> None:
        self.job_id = job_id
        self.output = output
        self.plan = plan
        self.info = info
        self.scratch = scratch
        self.final_format = final_format
        #: (name, file suffix) of each view written as a file of its own (stereoscopy)
        self.views = (list(zip(info.views, info.view_suffixes, strict=True))
                      if info.views and info.views_format == "INDIVIDUAL" else [])
        self.piece_format = piece_format(plan, final_format, bool(self.views))
        self._executor = executor
        self._finish_remote = finish
        self._on_merged = on_merged
        self._on_error = on_error
        self._ended = ended
        self.keep_pieces = keep_pieces
        self.project = project or Path.cwd()
        self.folder = folder
        #: the metadata entries every file gets the artist's values of
        self.restamp = {"File": origin} if origin else {}
        self.origin = origin
        #: pieces kept on the nodes that checks compare, by task index
        self.held: dict[int, Any] = {}
        self._place = place or (lambda path: path)
        self._on_nodes = on_nodes
        self._on_lost = on_lost
        self._lock = threading.Lock()
        #: frame -> {File Output file (as the worker named it): where it waits}
        self._extras: dict[int, dict[str, Path]] = {}
        #: frame -> {file a File Output node wrote for it: its SHA-256}
        self.extra_outputs: dict[int, dict[str, str]] = {}
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
        #: pieces lost with their node and merged from the copies their node stored
        self.restored = 0

    def release(self) -> None:
        """The job ended: let go of the pieces still kept (pieces kept on the nodes leave
        their object stores; a verified job kept them all)."""
        with self._lock:
            self._pieces.clear()
            self.held.clear()

    @property
    def finishing(self) -> bool:
        """Whether a worker finishes each merged frame (denoise, composite, or convert it
        to a format other than multilayer EXR)."""
        plan = self.plan
        return plan.post_denoise or plan.post_composite or \
            self.final_format != "OPEN_EXR_MULTILAYER"

    def blueprint(self) -> dict[str, Any]:
        """What an :class:`Assembler` on a node needs to write this job's frames
        (:func:`renderfarm.pieces.assemble_on_node`): its arguments, and the pieces' file
        suffix."""
        import dataclasses

        return {"job_id": self.job_id, "output": self.output,
                "plan": dataclasses.replace(self.plan, tasks=()),
                "info": self.info, "final_format": self.final_format, "project": self.project,
                "folder": self.folder, "origin": self.origin,
                "suffix": WRITE_EXTENSIONS[self.piece_format]}

    @property
    def frames_done(self) -> int:
        """Frames written so far."""
        with self._lock:
            return len(self.outputs)

    def piece_path(self, task: Task) -> Path:
        """Where a task's piece waits until its frame is merged."""
        return self.scratch / f"{task.task_id}{WRITE_EXTENSIONS[self.piece_format]}"

    def stored_path(self, task: Task, attempt: int, worker: str) -> Path:
        """Where the node of ``worker`` stores its piece of ``task`` (attempt ``attempt``)
        for a restart (pieces on the nodes): each attempt its own file, so that only the
        accepted one is used."""
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in worker)
        return self.scratch / (f"{task.task_id}-a{attempt}-{name}"
                               f"{WRITE_EXTENSIONS[self.piece_format]}")

    def add(self, frame: int, chunk: int, piece: Piece, members: tuple[int, ...] = ()) -> None:
        """Keep a finished piece of ``frame`` (sample range ``chunk``) that tasks ``members``
        rendered."""
        with self._lock:
            self._pieces.setdefault(frame, []).append((chunk, piece, tuple(members)))

    def extra_target(self, name: str) -> Path:
        """Where a file a File Output node wrote goes, from the name a worker gave it
        (``<node index>/<file name Blender gave it>``): inside the node's folder as saved
        (``//`` is the project; inside the job's output folder when it has one).

        Raises:
            MergeError: the name is not one of a File Output node of the scene (a worker
                that lies or is broken): nothing is written outside the node's folder.
        """
        index, _, rel = name.partition("/")
        dirs = self.info.file_output_dirs
        parts = rel.split("/")
        if (not index.isdigit() or int(index) >= len(dirs) or "\\" in rel
                or any(p in ("..", ".", "") for p in parts)):
            raise MergeError(f"a worker sent a file {name!r} that no File Output node of the "
                             "scene writes; it was not written")
        folder = dirs[int(index)]
        relative = folder.startswith("//") or not os.path.isabs(os.path.expanduser(folder))
        inner = folder[2:] if folder.startswith("//") else folder
        if self.folder is not None:  # kept inside it, whatever the node's path climbs
            inner = os.path.normpath(inner.replace("\\", "/")) if relative else Path(folder).name
            base = self.folder.joinpath(*[p for p in PurePosixPath(inner).parts
                                          if p not in ("..", ".", "/")])
        elif relative:
            base = self.project / inner
        else:
            base = Path(os.path.expanduser(folder))
        return base.joinpath(*parts)

    def add_extras(self, frame: int, extras: Mapping[str, bytes]) -> None:
        """Keep the files the File Output nodes wrote while a whole ``frame`` rendered
        until the frame is written (a later render of it replaces them).

        Raises:
            MergeError: a name no File Output node writes (see :meth:`extra_target`).
        """
        for name in extras:  # all refused before anything is kept
            self.extra_target(name)
        kept: dict[str, Path] = {}
        for name, data in extras.items():
            digest = hashlib.sha256(name.encode()).hexdigest()[:16]
            path = self.scratch / f"extra-{frame}-{digest}"
            write_atomically(path, lambda tmp, data=data: tmp.write_bytes(data))
            kept[name] = path
        with self._lock:
            self._extras.setdefault(frame, {}).update(kept)

    def _deliver(self, frame: int, extras: Mapping[str, bytes | Path]) -> None:
        """Write a frame's File Output files where the scene has them written."""
        for name, data in extras.items():
            target = self.extra_target(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = data if isinstance(data, Path) else None
            if source is not None:
                data = source.read_bytes()
            write_atomically(target, lambda tmp, data=data, target=target: tmp.write_bytes(
                self._stamped(data, target)))
            if source is not None and not self.keep_pieces:
                source.unlink(missing_ok=True)
            self.add_output(frame, target)

    def add_output(self, frame: int, path: Path, digest: str | None = None) -> None:
        """A file written for ``frame`` beside its output (a File Output node's, a view's,
        the job's video), listed with its SHA-256 (``digest``, or read from the file) among
        the frame's other files."""
        from renderfarm.bundle import file_sha256

        digest = digest or file_sha256(path)
        with self._lock:
            self.extra_outputs.setdefault(frame, {})[str(path)] = digest

    def forget_outputs(self, frames: list[int]) -> None:
        """Remove frames' files that served their purpose (a video's frames, encoded)."""
        with self._lock:
            gone = [self.outputs.pop(frame) for frame in frames if frame in self.outputs]
            for frame in frames:
                self.hashes.pop(frame, None)
        for path in gone:
            path.unlink(missing_ok=True)

    def _write_view(self, found: list[tuple[int, Piece]], frame: int, view: str,
                    target: Path) -> Mapping[str, bytes]:
        """Write one view of a frame from pieces that hold every view."""
        alone = []
        try:
            for number, (chunk, piece) in enumerate(found):
                path = self.scratch / f"view-{frame}-{number}-{view}.exr"
                unpack_view(piece.path, view, path)
                alone.append((chunk, Piece(piece.tile, path)))
            return self._write(alone, frame, target, tag=view)
        finally:
            for _chunk, piece in alone:
                piece.path.unlink(missing_ok=True)

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
        """Wait for every merge scheduled so far, and those they schedule (failures went
        to ``on_error``)."""
        waited = 0
        while waited < len(self._futures):
            for future in list(self._futures[waited:]):
                future.exception()
                waited += 1

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
            entries = list(self._pieces.get(frame, []) if self.keep_pieces
                           else self._pieces.pop(frame))
        found = [(chunk, piece) for chunk, piece, _m in entries]
        if self._on_nodes is not None and any(p.held is not None for _c, p in found):
            try:
                files, extras = self._on_nodes(entries, frame)
            except PiecesLost as exc:
                self._lost(frame, generation, entries, exc.members)
                return
            for written in files:
                if written.data is not None:  # the node could not see the job's folder
                    data = written.data
                    write_atomically(written.path, lambda tmp, d=data: tmp.write_bytes(d))
            target, digest = files[0].path, files[0].sha256
            for written in files[1:]:
                self.add_output(frame, written.path, written.sha256)
        else:
            written_paths, extras = self.write_frame(found, frame)
            target, digest = written_paths[0], ""
            for path in written_paths[1:]:
                self.add_output(frame, path)
        with self._lock:
            kept: dict[str, bytes | Path] = dict(
                self._extras.get(frame, {}) if self.keep_pieces
                else self._extras.pop(frame, {}))
        self._deliver(frame, {**kept, **extras})
        if not self.keep_pieces:
            for _chunk, piece in found:
                piece.path.unlink(missing_ok=True)
        digest = digest or file_sha256(target)
        with self._lock:
            self.outputs[frame] = target
            self.hashes[frame] = digest
        self._on_merged(frame, target)

    def write_frame(self, found: list[tuple[int, Piece]], frame: int
                    ) -> tuple[list[Path], Mapping[str, bytes]]:
        """Write ``frame``'s files from its pieces (on the head, or on a node:
        :mod:`renderfarm.pieces`); returns the files (the frame's first, then its other
        views') and what File Output nodes wrote when a worker finished the merged frame."""
        target = output_path(self.output, frame)
        if not self.views:
            return [target], self._write(found, frame, self._place(target))
        # the first view's file is the frame's; the others go with it
        extras: dict[str, bytes] = {}
        written = []
        for name, suffix in self.views:
            path = view_path(target, suffix)
            extras.update(self._write_view(found, frame, name, self._place(path)))
            written.append(path)
        return written, extras

    def _lost(self, frame: int, generation: int,
              entries: list[tuple[int, Piece, tuple[int, ...]]], members: tuple[int, ...]
              ) -> None:
        """Pieces of ``frame`` were lost with their node (its merge of ``generation``
        found out): those its node had also stored for a restart, whose copy is the piece its
        worker described, are merged from there; the others wait for the lost ones' new
        renders, and the frame merges again once they are in."""
        from renderfarm.bundle import file_sha256

        gone = set(members)
        with self._lock:  # a kept frame's pieces as they are now; else those this merge took
            source = list(self._pieces.get(frame, []) if self.keep_pieces else entries)
        copies = {}  # the stored copies of lost pieces that are what their worker described
        for number, (_chunk, piece, tasks) in enumerate(source):
            held = piece.held
            if (gone.intersection(tasks) and held is not None and held.stored
                    and piece.path.is_file() and file_sha256(piece.path) == held.sha256):
                copies[number] = Piece(piece.tile, piece.path)
        with self._lock:
            if generation != self._generation.get(frame, 0):
                return  # reopened meanwhile (a check's suspect): its new merge decides
            if self.keep_pieces and self._pieces.get(frame, []) != source:
                copies = {}  # changed meanwhile: render the lost ones again
            pieces, useless = [], []
            for number, (chunk, piece, tasks) in enumerate(source):
                if number in copies:
                    pieces.append((chunk, copies[number], tasks))
                    gone.difference_update(tasks)
                elif not gone.intersection(tasks):
                    pieces.append((chunk, piece, tasks))
                elif piece.held is not None and piece.held.stored:  # a copy not to be used
                    useless.append(piece.path)
            self._pieces[frame] = pieces
            self.restored += len(copies)
            self._merged.discard(frame)
            self._generation[frame] = self._generation.get(frame, 0) + 1
        for path in useless:
            path.unlink(missing_ok=True)
        if not gone:  # every lost piece was stored: merged again from there
            logger.warning("job %s: frame %d lost %d piece(s) with their node; merged from "
                           "their stored copies", self.job_id, frame, len(copies))
            self.schedule(frame)
            return
        logger.warning("job %s: frame %d lost %d piece(s) with their node; they render "
                       "again", self.job_id, frame, len(gone))
        if self._on_lost is None:
            raise MergeError("pieces of the frame were lost with their node", frame=frame)
        self._on_lost(frame, tuple(sorted(gone)))

    def _stamped(self, data: bytes, path: Path, stats: Mapping[str, str] | None = None
                 ) -> bytes:
        """``data`` with the artist's metadata values (and a tiled frame's render
        statistics), Blender's encoding untouched."""
        from renderfarm.stamp import restamp

        try:
            return restamp(data, self.restamp, stats)
        except ValueError as exc:  # the file is kept as the worker wrote it
            logger.warning("job %s: the metadata of %s was not set (%s)", self.job_id,
                           path.name, exc)
            return data

    def _write(self, found: list[tuple[int, Piece]], frame: int,
               target: Path, tag: str = "") -> Mapping[str, bytes]:
        """Write the frame's output file (``tag``: a view's, of pieces of that view);
        returns what File Output nodes wrote when a worker finished the merged frame."""
        plan = self.plan
        split = plan.tiled or plan.chunks > 1
        if not split and not plan.post_denoise and not tag:  # the piece is the output file
            source = found[0][1].path
            write_atomically(target, lambda tmp: tmp.write_bytes(
                self._stamped(source.read_bytes(), target)))
            if not self.keep_pieces:
                source.unlink(missing_ok=True)
            return {}
        # the render statistics Blender writes, of the pieces (a file a worker converts
        # or composites has none: nothing rendered in that call)
        stats = combine_stats(piece_stats(piece.path) for chunk, piece in found
                              if chunk == found[0][0])
        merged = self._merge_frame(found, frame, tag)
        if self.finishing:
            data, extras = self._finish_remote(merged.read_bytes(), frame)
            for name in extras:  # checked before the frame is written
                self.extra_target(name)
            write_atomically(target, lambda tmp: tmp.write_bytes(
                self._stamped(data, target, stats)))
            merged.unlink(missing_ok=True)
            return extras
        # the scene's own depth and codec, switched to multilayer EXR when -o changed its
        # format (pieces are lossless 32-bit float)
        encoding = exr_encoding(self.info.multilayer_settings())

        def write(tmp: Path) -> None:
            recode_exr(merged, tmp, encoding)
            tmp.write_bytes(self._stamped(tmp.read_bytes(), target, stats))

        write_atomically(target, write)
        merged.unlink(missing_ok=True)
        return {}

    def _merge_frame(self, found: list[tuple[int, Piece]], frame: int, tag: str = "") -> Path:
        """One multilayer EXR of the frame (of one view: ``tag``) from its pieces: tiles
        placed, sample ranges combined."""
        chunks: dict[int, list[Piece]] = {}
        for chunk, piece in found:
            chunks.setdefault(chunk, []).append(piece)
        frames = []
        name = f"{frame}-{tag}" if tag else f"{frame}"
        for chunk in sorted(chunks):
            path = self.scratch / f"frame-{name}-c{chunk}.exr"
            if self.plan.tiled:
                merge_pieces(chunks[chunk], self.plan.canvas, path)
            elif self.keep_pieces:
                shutil.copyfile(chunks[chunk][0].path, path)
            else:
                shutil.move(chunks[chunk][0].path, path)
            frames.append(path)
        if len(frames) == 1:
            return frames[0]
        merged = self.scratch / f"frame-{name}.exr"
        lengths = [r[1] for r in self.plan.sample_ranges if r is not None]
        combine_samples(frames, lengths, merged)
        for path in frames:
            path.unlink(missing_ok=True)
        added = added_colour_passes(self.info)
        if added:  # colour passes rendered only to combine light passes exactly
            trimmed = self.scratch / f"frame-{name}-trimmed.exr"
            drop_parts(merged, trimmed, added)
            merged.unlink()
            return trimmed
        return merged
