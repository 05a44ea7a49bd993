"""A job's events and tile previews, as its owner sees them: put on the outbox the service's
main thread publishes (to the owner's topics only) and told to the web app's listeners."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from renderfarm.errors import RenderFarmError
from renderfarm.events import Event
from renderfarm.job import Task, Tile
from renderfarm.pieces import NodePiece, preview_on_node
from renderfarm.server import protocol
from renderfarm.server.keyring import LOCAL
from renderfarm.server.live import Live, LiveJobs
from renderfarm.server.paths import FarmPaths
from renderfarm.server.rates import Thinning
from renderfarm.server.store import JobRow

logger = logging.getLogger(__name__)

#: a listener of every job event: ``listener(owner, message)``
Listener = Callable[[str, dict[str, Any]], None]


#: task events of one job published per second (bursts of as many; the job's own events,
#: its frames' and its warnings always are)
PUBLISHED_TASK_EVENTS = 50.0


class Publisher:
    """Publishes jobs' events and previews (any thread).

    Args:
        paths: the jobs' folders, and the farm's paths to scrub.
        live: the running jobs (a running job's event says its ETA; previews are kept in
            its run).
        outbox: the messages the service's main thread sends on the event socket.
    """

    def __init__(self, paths: FarmPaths, live: LiveJobs,
                 outbox: queue.Queue[list[bytes]]) -> None:
        self._paths = paths
        self._live = live
        self._outbox = outbox
        #: callbacks told of every job event (the web app's live updates)
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        #: (job, piece name) -> a piece kept on its node until its preview is made there
        self._on_nodes: dict[tuple[str, str], Any] = {}
        #: each job's task events, thinned for every subscriber
        self._thinning = Thinning(PUBLISHED_TASK_EVENTS)

    def passes(self, event: Event) -> bool:
        """Whether ``event`` is published: a job's task events are thinned to
        :data:`PUBLISHED_TASK_EVENTS` a second (their counts ride on every event)."""
        with self._lock:
            return self._thinning.allow(event.job_id, event.kind, time.monotonic())

    def listen(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback(owner, message)`` with every job event the service publishes
        (from job threads: keep it short); returns a function that stops it."""
        with self._lock:
            self._listeners.append(callback)

        def stop() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return stop

    def event(self, event: Event, row: JobRow) -> None:
        """Publish a job's event with its state as ``row`` has it."""
        message = {**event.to_dict(), "state": row.state, "elapsed": row.to_dict()["elapsed"],
                   "eta": self._live.eta(event.job_id) if row.state == "running" else None}
        if message.get("message"):
            message["message"] = self._paths.scrub(message["message"])
        if message.get("data"):  # files by their names in the job's folder, never the farm's
            message["data"] = self._paths.job_relative(event.job_id, message["data"])
        if not event.tasks_total:
            message.update(tasks_done=row.tasks_done, tasks_total=row.tasks_total,
                           frames_done=row.frames_done, frames_total=row.frames_total)
        self._outbox.put([protocol.event_topic("job", row.client or LOCAL, event.job_id),
                          protocol.encode(message)])
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(row.client or LOCAL, message)
            except Exception:  # a listener (a closed page) never stops the job's events
                logger.exception("an event listener failed")

    # -- previews ----------------------------------------------------------------------------
    def keep_for_preview(self, job_id: str) -> Callable[[Task, Path], None]:
        """A job's ``on_piece`` hook: each stored piece is linked in the job's
        ``previews/`` folder until its preview is made."""
        folder = self._paths.job_dir(job_id) / "previews"

        def keep(task: Task, path: Path | NodePiece) -> None:
            if isinstance(path, NodePiece):  # kept on its node: its preview is made there
                with self._lock:
                    self._on_nodes[(job_id, f"{task.task_id}")] = path
                return
            folder.mkdir(parents=True, exist_ok=True)
            _link_or_copy(path, folder / path.name)

        return keep

    def _take_held(self, job_id: str, piece: str) -> NodePiece | None:
        with self._lock:
            return self._on_nodes.pop((job_id, Path(piece).stem), None)

    def forget_held(self, job_id: str) -> None:
        """A job's run ended: its pieces kept for previews on their nodes are let go."""
        with self._lock:
            for key in [k for k in self._on_nodes if k[0] == job_id]:
                del self._on_nodes[key]

    def preview(self, job_id: str, live: Live, frame: int, tile: Tile, piece: str) -> None:
        """Publish the preview of a finished tile from its piece (file name ``piece`` in the
        job's ``previews/`` folder; removed once read), and paint it on its frame's."""
        from renderfarm.server.preview import tile_preview

        path = self._paths.job_dir(job_id) / "previews" / piece
        held = self._take_held(job_id, piece)
        if live.canvas is None or (held is None and not path.exists()):
            return
        try:
            if held is not None:  # made on the piece's node: only the preview comes here
                preview = preview_on_node(held, tile, live.canvas, live.display,
                                          Path(piece).suffix)
            else:
                preview = tile_preview(path, tile, live.canvas, display=live.display)
        except RenderFarmError as exc:
            logger.info("no preview for %s: %s", path.name, exc.one_line())
            return
        except Exception as exc:  # Ray failing under the farm: no preview, the job goes on
            logger.info("no preview for %s: %s: %s", path.name, type(exc).__name__, exc)
            return
        finally:
            path.unlink(missing_ok=True)
        if preview is None:
            return
        _paint(live, frame, preview)
        header = {"job_id": job_id, "frame": frame, "tile": tile.index, **preview.header()}
        self._outbox.put([protocol.event_topic("preview", live.owner, job_id),
                          protocol.encode(header),
                          zlib.compress(preview.rgba, 6)])

    def skip_preview(self, job_id: str, piece: str) -> None:
        """A finished tile gets no preview (its copy for one is removed)."""
        self._take_held(job_id, piece)
        (self._paths.job_dir(job_id) / "previews" / piece).unlink(missing_ok=True)

    def preview_png(self, job_id: str) -> bytes | None:
        """The latest frame's preview of a job as PNG (kept on disk once the job ends)."""
        live = self._live.get(job_id)
        image = live.latest_png() if live is not None else None
        if image is not None:
            return image
        path = self._paths.job_dir(job_id) / "preview.png"
        return path.read_bytes() if path.is_file() else None

    def keep_last_preview(self, job_id: str, live: Live) -> None:
        """At a run's end: keep its latest frame's preview on disk (for :meth:`preview_png`)."""
        image = live.latest_png()
        if image is not None:
            (self._paths.job_dir(job_id) / "preview.png").write_bytes(image)


def _paint(live: Live, frame: int, preview: Any) -> None:
    """Paint a tile's preview on its frame's, in the run's latest frames."""
    import numpy as np

    canvas = live.previews.get(frame)
    if canvas is None:
        canvas = np.zeros((preview.frame_height, preview.frame_width, 4), np.uint8)
        live.previews[frame] = canvas
        for old in sorted(live.previews)[:-4]:  # frames in flight; the last one is shown
            del live.previews[old]
    pixels = np.frombuffer(preview.rgba, np.uint8).reshape(preview.height, preview.width, 4)
    canvas[preview.y:preview.y + preview.height, preview.x:preview.x + preview.width] = \
        pixels


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (a copy across file systems)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
