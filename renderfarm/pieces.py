"""Pieces that stay on the node that rendered them.

On a farm of many nodes the head would be the ceiling if every piece came to it: a 1920x1080
frame of eight passes is about 64 MB of float pieces. With pieces kept on the nodes
(:func:`on_nodes`), a worker's render call returns its piece as a second Ray return value,
which stays in the object store of the worker's node; the head gets only the reply (the
piece's size and SHA-256). What needs the pixels runs as a Ray task on a node that holds
them, asking for no CPU (the workers hold them all): a frame's merge, finishing and writing
(:func:`assemble_on_node`), a check's comparison (:func:`compare_on_node`) and a live tile's
8-bit preview (:func:`preview_on_node`); Ray moves the pieces node to node. A frame's file is
written by that task straight where the job writes it when that node sees the job's output
folder (a shared file system: a marker the head writes there tells); otherwise its bytes come
to the head, once.

A piece whose node went away is lost: the frame's merge reports the tasks that rendered the
lost pieces (:class:`PiecesLost`) and they are rendered again, unless their node also stored
them where the job keeps its pieces for a restart (:func:`store_here`: the farm service's
jobs, on a node that sees that folder) and the copy is the piece the worker described; then
the frame merges from those copies. A piece whose bytes are not what its worker described
(its SHA-256) counts as lost.
"""

from __future__ import annotations

import functools
import logging
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from renderfarm.errors import MergeError, RenderFarmError

logger = logging.getLogger(__name__)

#: where a farm keeps its pieces: ``head`` (every piece comes to the driver), ``nodes``
#: (pieces stay on the nodes that rendered them), ``auto`` (nodes when the cluster has
#: more than one node or the driver's node has no CPU for a worker)
PIECES_MODES = ("auto", "head", "nodes")
#: frames merged at once on one node
MERGES_PER_NODE = 2
#: seconds a live tile preview made on a node may take before it is skipped
PREVIEW_TIMEOUT = 10.0


@dataclass(frozen=True)
class NodePiece:
    """A piece kept in the object store of the node that rendered it.

    Attributes:
        ref: its Ray object reference (owned by the driver: it outlives the worker's actor,
            not its node).
        node: the Ray node id of the node that holds it.
        size: its bytes.
        sha256: its SHA-256, as the worker computed it (checked where it is fetched).
        stored: the node also wrote it where the job keeps its pieces for a restart
            (:func:`store_here`).
    """

    ref: Any
    node: str
    size: int
    sha256: str
    stored: bool = False


class PiecesLost(RenderFarmError):
    """A frame's pieces are gone with the node that held them: the tasks that rendered them
    are rendered again.

    Args:
        members: the task indices whose pieces were lost.
    """

    def __init__(self, members: Sequence[int], frame: int | None = None) -> None:
        super().__init__(f"{len(members)} piece(s) of the frame were lost with their node; "
                         "they are rendered again", frame=frame, retryable=True)
        self.members = tuple(members)


def on_nodes(nodes: Sequence[Mapping[str, Any]], driver_node: str) -> bool:
    """Whether ``auto`` keeps a job's pieces on the nodes (pure: from ``ray.nodes()``): the
    cluster has more than one node, or the driver's node has no CPU for a worker.

    Args:
        nodes: the cluster's nodes as ``ray.nodes()`` lists them.
        driver_node: the driver's node id.
    """
    alive = [n for n in nodes if n.get("Alive")]
    if len(alive) > 1:
        return True
    mine = [n for n in alive if n.get("NodeID") == driver_node]
    return bool(mine) and not (mine[0].get("Resources") or {}).get("CPU")


def node_options(node: str) -> dict[str, Any]:
    """Ray options of a task that must run on ``node`` (where the pixels are) and asks for
    no CPU (the node's workers hold them all). Soft: a node gone runs it elsewhere, where it
    finds its pieces lost."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"num_cpus": 0, "max_retries": 1,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}


@functools.cache
def _remote(function: Callable[..., Any]) -> Any:
    import ray

    return ray.remote(function)


#: hosts of modelled render nodes, by name (:mod:`renderfarm.synthetic`: a node named
#: ``<host>-<n>`` is one of that host's simulated nodes, whose work it models); empty on a
#: real farm. A host is forgotten when it stops (``synthetic.stop_hosts``), after the farm
#: that used it: a modelled node's work after that would go to Ray, which refuses its name.
MODELLED_NODES: dict[str, Any] = {}


def _on_node(function: Callable[..., Any], node: str) -> Callable[..., Any]:
    """``function`` to run on ``node``: its ``(*args)`` returns the call's object reference
    (a Ray task there; a modelled node's call of its host)."""
    host = MODELLED_NODES.get(node.rpartition("-")[0]) if MODELLED_NODES else None
    if host is not None:
        return functools.partial(host.node_call.remote, function.__name__, node)
    return _remote(function).options(**node_options(node)).remote


def ready_here() -> bool:
    """On a node (:func:`warm`): nothing; its process is then ready for the next task."""
    return True


def warm() -> None:
    """Have a process ready on each render node (a node with CPUs) for the tasks that need
    the pixels (a frame's merge, a check, a live tile's preview), so that a job's first ones
    do not wait for Ray to start one; nothing waits for them."""
    import ray

    for node in ray.nodes():
        if node.get("Alive") and (node.get("Resources") or {}).get("CPU"):
            try:
                _on_node(ready_here, str(node["NodeID"]))()
            except Exception as exc:  # only an optimisation
                logger.debug("could not warm node %s: %s", node.get("NodeID"), exc)


def _lost_errors() -> tuple[type[BaseException], ...]:
    import ray

    return (ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError)


def _fetch(box: Sequence[Any], path: Path) -> bool:
    """Write the piece in ``box`` (``[ref, sha256]``: nested, so Ray does not fetch it
    before the task runs) to ``path``; False when it is lost, or is not the piece its worker
    described (its SHA-256 differs: it renders again, as a lost one)."""
    import hashlib

    import ray

    try:
        data = ray.get(box[0])
    except _lost_errors():
        return False
    if len(box) > 1 and box[1] and hashlib.sha256(data).hexdigest() != box[1]:
        logger.warning("a piece is not the one its worker described (SHA-256 differs)")
        return False
    path.write_bytes(data)
    return True


# -- checks ----------------------------------------------------------------------------------
def compare_here(first: Sequence[Any], second: Sequence[Any], tolerance: float,
                 suffix: str) -> tuple[bool | None, str]:
    """On a node (:func:`compare_on_node`): whether two pieces (``[ref]`` each) agree, and
    why not; ``(None, why)`` when one is lost."""
    from renderfarm.merge import compare_images

    folder = Path(tempfile.mkdtemp(prefix="renderfarm-check-"))
    try:
        paths = [folder / f"a{suffix}", folder / f"b{suffix}"]
        for box, path in zip((first, second), paths, strict=True):
            if not _fetch(box, path):
                return None, "a piece was lost with its node"
        return compare_images(paths[0], paths[1], tolerance)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def compare_on_node(first: NodePiece, second: NodePiece, tolerance: float,
                    suffix: str = ".exr") -> tuple[bool, str]:
    """Whether two renders of a piece agree (as :func:`~renderfarm.merge.compare_images`),
    compared on the node of the first.

    Raises:
        PiecesLost: a piece was lost with its node (``members`` empty: the caller knows
            which renders they were).
    """
    import ray

    same, why = ray.get(_on_node(compare_here, first.node)(
        [first.ref, first.sha256], [second.ref, second.sha256], tolerance, suffix))
    if same is None:
        raise PiecesLost(())
    return bool(same), why


# -- previews --------------------------------------------------------------------------------
def preview_here(box: Sequence[Any], tile: Any, canvas: Any, display: Any, suffix: str
                 ) -> Any:
    """On a node (:func:`preview_on_node`): a piece's (``[ref]``) 8-bit tile preview; None
    when it is lost."""
    from renderfarm.server.preview import tile_preview

    folder = Path(tempfile.mkdtemp(prefix="renderfarm-preview-"))
    try:
        path = folder / f"piece{suffix}"
        if not _fetch(box, path):
            return None
        return tile_preview(path, tile, canvas, display=display)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def preview_on_node(piece: NodePiece, tile: Any, canvas: Any, display: Any,
                    suffix: str = ".exr") -> Any:
    """A finished tile's 8-bit preview (:func:`renderfarm.server.preview.tile_preview`),
    made on the node of its piece: only the preview comes to the head. None when the piece
    is lost or scales to nothing.

    Raises:
        MergeError: the piece cannot be read or has no Combined pass.
    """
    import ray

    ref = _on_node(preview_here, piece.node)([piece.ref, piece.sha256], tile, canvas, display,
                                             suffix)
    try:
        return ray.get(ref, timeout=PREVIEW_TIMEOUT)
    except ray.exceptions.GetTimeoutError:  # a live preview is never worth a wait
        ray.cancel(ref)
        return None


# -- a frame's merge -------------------------------------------------------------------------
@dataclass(frozen=True)
class Written:
    """A file a frame's merge on a node wrote.

    Attributes:
        path: where the job writes it (on the head's file system).
        sha256: its SHA-256.
        data: its bytes when the node could not write it there (None: written).
    """

    path: Path
    sha256: str
    data: bytes | None = None


class SharedMarker:
    """A file the head writes in a job's output folder: a node that reads it there sees
    that folder (a shared file system) and writes the job's frames into it itself.

    Args:
        folder: the job's output folder.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / f".renderfarm-shared-{secrets.token_hex(6)}"
        self.token = secrets.token_hex(16)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.path.write_text(self.token)
        except OSError as exc:  # the head writes the frames then
            logger.info("no shared-folder marker in %s: %s", folder, exc)

    def release(self) -> None:
        """Remove the marker (the job ended)."""
        self.path.unlink(missing_ok=True)

    def pair(self) -> tuple[str, str]:
        """What a node checks: (path, token)."""
        return str(self.path), self.token


def sees_marker(marker: tuple[str, str] | None) -> bool:
    """Whether this process sees the job's output folder (its :class:`SharedMarker` pair
    reads there)."""
    if marker is None:
        return False
    try:
        return Path(marker[0]).read_text() == marker[1]
    except OSError:
        return False


class _NeedFiles(Exception):
    """A finishing worker needs the job's files through Ray."""


def assemble_here(blueprint_box: list[Any], frame: int,
                  pieces: list[tuple[int, dict[str, Any], list[Any], tuple[int, ...]]],
                  finishers: list[Any], finish_args: tuple[Any, ...],
                  marker: tuple[str, str] | None) -> dict[str, Any]:
    """On a node (:func:`assemble_on_node`): merge, finish and write a frame; its files
    (``written``), or the pieces ``lost``, or ``need_files`` for a finishing worker."""
    import ray

    from renderfarm.assemble import Assembler
    from renderfarm.bundle import file_sha256
    from renderfarm.job import Tile
    from renderfarm.merge import Piece

    node = ray.get_runtime_context().get_node_id()
    blueprint = dict(ray.get(blueprint_box[0]))
    folder = Path(tempfile.mkdtemp(prefix=f"renderfarm-frame-{frame}-"))
    direct = sees_marker(marker)
    suffix = blueprint.pop("suffix")
    settings, final, extension, files = finish_args

    finished: list[tuple[str, float, float]] = []

    def finish(payload: bytes, at: int) -> tuple[bytes, dict[str, bytes]]:
        for worker, actor in finishers:
            try:
                data = ray.get(actor.finish.remote(settings, payload, final, extension, files,
                                                   at))
            except ray.exceptions.RayActorError:
                continue
            except ray.exceptions.RayTaskError as exc:  # the worker's own error, unwrapped
                cause = exc.cause
                if isinstance(cause, RenderFarmError):
                    raise cause from None
                raise MergeError(f"finishing the frame failed on worker {worker}: "
                                 f"{type(cause).__name__}: {cause}", frame=at) from None
            if data is None:
                raise _NeedFiles
            finished.append((worker, float(data.get("started") or 0.0),
                             float(data.get("finished") or 0.0)))
            return data["data"], dict(data.get("extras") or {})
        raise MergeError("every worker died while finishing the frame", frame=at)

    try:
        found = []
        lost: list[int] = []
        for number, (chunk, tile, box, members) in enumerate(pieces):
            path = folder / f"piece-{number}{suffix}"
            if not _fetch(box, path):
                lost.extend(members)
                continue
            found.append((chunk, Piece(Tile.from_dict(tile), path)))
        if lost:
            return {"lost": lost, "node": node}
        out = folder / "out"
        assembler = Assembler(**blueprint, scratch=folder, executor=None,  # type: ignore[arg-type]
                              finish=finish, on_merged=lambda _f, _p: None,
                              on_error=lambda exc: None, ended=lambda: False,
                              place=None if direct else (lambda p: out / p.name))
        try:
            written, extras = assembler.write_frame(found, frame)
        except _NeedFiles:
            return {"need_files": True, "node": node}
        files_written = []
        for path in written:
            placed = path if direct else out / path.name
            files_written.append(Written(path, file_sha256(placed),
                                         None if direct else placed.read_bytes()))
        return {"written": files_written, "extras": extras, "node": node,
                "finished": finished}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class NodeSlots:
    """At most ``per_node`` frames merge at once on one node (each holds a frame's pieces
    and its merged file beside the node's Blenders)."""

    def __init__(self, per_node: int = MERGES_PER_NODE) -> None:
        self.per_node = per_node
        self._busy: dict[str, int] = {}
        self._changed = threading.Condition()

    @contextmanager
    def slot(self, node: str) -> Iterator[None]:
        """Hold one of ``node``'s merge slots (waits for one)."""
        with self._changed:
            while self._busy.get(node, 0) >= self.per_node:
                self._changed.wait()
            self._busy[node] = self._busy.get(node, 0) + 1
        try:
            yield
        finally:
            with self._changed:
                self._busy[node] -= 1
                if not self._busy[node]:
                    del self._busy[node]
                self._changed.notify_all()


def assemble_on_node(node: str, blueprint: Any, frame: int,
                     pieces: list[tuple[int, Any, NodePiece, tuple[int, ...]]],
                     finishers: list[tuple[str, Any]], finish_args: tuple[Any, ...],
                     marker: tuple[str, str] | None,
                     send_files: Callable[[], tuple[Any, ...]] | None = None
                     ) -> tuple[list[Written], dict[str, bytes], str, list[tuple[str, float,
                                                                                 float]]]:
    """Merge, finish and write a frame on ``node`` from pieces kept on the nodes.

    Args:
        node: where it runs (a node that holds some of the pieces).
        blueprint: the object reference of the job's
            :class:`~renderfarm.assemble.Assembler` arguments (its ``suffix``: the pieces'
            file suffix), put in Ray's object store once per job.
        frame: the frame.
        pieces: ``(sample range, tile, piece, task indices)`` of each piece.
        finishers: ``(worker id, actor)`` of workers that may finish the frame (tried in
            turn).
        finish_args: ``(settings, format, extension, files)`` of a worker's ``finish``.
        marker: the job's :class:`SharedMarker` pair (None: the head writes the files).
        send_files: called when a finishing worker needs the job's files through Ray;
            returns new ``finish_args``.

    Returns:
        ``(files written, File Output files a finishing worker wrote, the node it ran on,
        [(worker, started, finished)] of the worker that finished it)``.

    Raises:
        PiecesLost: pieces were lost with their node.
    """
    import ray

    boxes = [(chunk, tile.to_dict(), [piece.ref, piece.sha256], members)
             for chunk, tile, piece, members in pieces]
    for _attempt in range(2):
        result = ray.get(_on_node(assemble_here, node)(
            [blueprint], frame, boxes, finishers, finish_args, marker))
        if result.get("need_files") and send_files is not None:
            finish_args = send_files()
            continue
        break
    if result.get("lost"):
        raise PiecesLost(result["lost"], frame=frame)
    if result.get("need_files"):
        raise MergeError("a worker could not get the job's files to finish the frame",
                         frame=frame)
    return (list(result["written"]), dict(result.get("extras") or {}), str(result["node"]),
            list(result.get("finished") or []))


#: the merge slots of every node this process merges on
SLOTS = NodeSlots()


def biggest_node(pieces: Sequence[NodePiece]) -> str:
    """The node holding the most of a frame's piece bytes (its merge moves the fewest)."""
    held: dict[str, int] = {}
    for piece in pieces:
        held[piece.node] = held.get(piece.node, 0) + piece.size
    return max(held, key=lambda n: held[n])


def store_here(data: bytes, store: Sequence[str] | None) -> bool:
    """Write a piece a worker keeps on its node where the farm keeps pieces for a restart
    too, when this node sees that folder; whether it did.

    Args:
        data: the piece's bytes.
        store: ``(the piece's path, and the folder's SharedMarker pair)`` (None: not asked).
    """
    if not store or len(store) != 3 or not sees_marker((store[1], store[2])):
        return False
    import os

    path = Path(store[0])
    if path.parent != Path(store[1]).parent:  # only into the folder the marker is in
        logger.warning("a piece's path %s is not in the folder of its marker", path)
        return False
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as out:  # on the disk before it has its name
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a restart renders it again
        logger.warning("could not store the piece %s: %s", path, exc)
        tmp.unlink(missing_ok=True)
        return False
    return True


def describe(data: bytes) -> dict[str, Any]:
    """What a worker tells the head of a piece it keeps: its size and SHA-256."""
    import hashlib

    return {"piece_bytes": len(data), "piece_sha256": hashlib.sha256(data).hexdigest()}


__all__ = ["MODELLED_NODES", "PIECES_MODES", "NodePiece", "NodeSlots", "PiecesLost",
           "SharedMarker", "Written", "assemble_here", "assemble_on_node", "biggest_node",
           "compare_here", "compare_on_node", "describe", "node_options", "on_nodes",
           "preview_here", "preview_on_node", "ready_here", "sees_marker", "store_here",
           "warm"]
