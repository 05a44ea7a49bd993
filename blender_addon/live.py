"""Live results: a ``bpy.app.timers`` callback applies what submission threads report.

Threads never touch ``bpy``. :func:`drain` (the timer, on the main thread) takes their
messages, updates the scene's job properties (state, progress, elapsed, ETA), paints finished
tiles into the image "Render on Network" and, at the end, replaces it with the last frame.
"""

from __future__ import annotations

import logging
import queue
import sys
import time
from typing import Any

import bpy

from . import work

logger = logging.getLogger(__name__)

#: the image finished tiles are painted into
IMAGE_NAME = "Render on Network"
#: seconds between timer runs
INTERVAL = 0.2

_submissions: dict[str, work.Submission] = {}  # scene name -> its submission
_clock: dict[str, tuple[float, float]] = {}  # scene name -> (elapsed, monotonic) last known
_eta: dict[str, tuple[float, float]] = {}  # scene name -> (the farm's ETA, monotonic) last known


def track(scene: bpy.types.Scene, submission: work.Submission) -> None:
    """Follow ``submission`` for ``scene`` from the timer."""
    _submissions[scene.name] = submission
    if not bpy.app.timers.is_registered(drain):
        bpy.app.timers.register(drain, first_interval=INTERVAL, persistent=True)


def submission_of(scene: bpy.types.Scene) -> work.Submission | None:
    """The submission following ``scene``'s job, if one runs."""
    return _submissions.get(scene.name)


def stop_all() -> None:
    """Forget every submission (on unregister); their jobs go on on the farm."""
    _submissions.clear()
    if bpy.app.timers.is_registered(drain):
        bpy.app.timers.unregister(drain)


def drain() -> float | None:
    """The timer: apply every pending message; keep running while a job is followed."""
    for name, submission in list(_submissions.items()):
        scene = bpy.data.scenes.get(name)
        if scene is None:
            continue
        apply_pending(scene, submission)
        if submission.ended.is_set() and submission.messages.empty():
            _submissions.pop(name, None)
    return INTERVAL if _submissions else None


def apply_pending(scene: bpy.types.Scene, submission: work.Submission) -> None:
    """Apply a submission's messages to ``scene`` (main thread only)."""
    while True:
        try:
            message = submission.messages.get_nowait()
        except queue.Empty:
            break
        try:
            apply(scene, message)
        except Exception:  # one bad message must not stop the live view
            logger.exception("cannot apply %r", type(message).__name__)
    tick(scene)


def tick(scene: bpy.types.Scene) -> None:
    """Advance the running job's elapsed time and ETA between the farm's events."""
    settings = scene.renderfarm
    anchor = _clock.get(scene.name)
    # the farm's clock starts when the job starts: a queued job's elapsed time stays 0 (it
    # went back to 0 at the start when it ticked from the submission)
    if anchor is not None and settings.state in ("running", "paused"):
        settings.elapsed = anchor[0] + time.monotonic() - anchor[1]
        done, total = settings.tasks_done, settings.tasks_total
        farm_eta = _eta.get(scene.name)
        if farm_eta is not None and settings.state == "running":  # the farm's, at its pace
            settings.eta = max(farm_eta[0] - (time.monotonic() - farm_eta[1]), 0.0)
        else:
            settings.eta = (settings.elapsed * (total - done) / done
                            if done and total and settings.state == "running" else -1.0)


def apply(scene: bpy.types.Scene, message: Any) -> None:
    """Apply one message from a submission thread."""
    settings = scene.renderfarm
    if isinstance(message, work.Stage):
        settings.state = message.stage
        settings.message = message.text
        settings.progress = message.fraction
    elif isinstance(message, work.Submitted):
        settings.job_id = message.job_id
        settings.state = "queued"
        settings.message = "; ".join(message.warnings) or "queued on the farm"
        settings.progress = 0.0
        settings.elapsed = 0.0
        settings.eta = -1.0
        _clock.pop(scene.name, None)
        _eta.pop(scene.name, None)
        settings.tasks_done = settings.tasks_total = 0
        settings.frames_done = settings.frames_total = 0
        settings.report = ""
    elif isinstance(message, work.JobUpdate):
        _apply_event(settings, message.event)
        if message.event.get("eta") is not None:  # the farm's ETA from the job's own pace
            _eta[scene.name] = (float(message.event["eta"]), time.monotonic())
        if message.event.get("elapsed") is not None:  # the farm's clock, from the job's start
            _clock[scene.name] = (float(message.event["elapsed"]), time.monotonic())
            settings.elapsed = float(message.event["elapsed"])
    elif isinstance(message, work.TilePreview):
        paint_tile(message)
    elif isinstance(message, work.Finished):
        settings.state = message.state
        settings.eta = -1.0
        settings.report = "\n".join(message.summary)
        if message.outputs:
            last = message.outputs[max(message.outputs)]
            settings.last_output = last
            show_final(last)
        if message.state == "done":
            settings.progress = 1.0
            settings.message = f"{len(message.outputs)} frame(s) in {settings.output_dir}"
            report_info(f"Render on Network: job {settings.job_id} done, {settings.message}"
                        + (f"; {message.summary[1]}" if len(message.summary) > 1 else ""))
        else:
            settings.message = message.message or message.state
            if message.state == "failed":
                report_error(f"Render on Network failed: {settings.message}"
                             + (f"\n{message.log}" if message.log else ""))
    elif isinstance(message, work.Failed):
        settings.state = "failed"
        settings.message = message.reason
        report_error(f"Render on Network: {message.reason}")


def _apply_event(settings: Any, event: dict[str, Any]) -> None:
    state = event.get("state")
    if state:
        settings.state = state
    for name in ("tasks_done", "tasks_total", "frames_done", "frames_total"):
        if event.get(name) is not None:
            setattr(settings, name, int(event[name]))
    if settings.tasks_total:
        settings.progress = settings.tasks_done / settings.tasks_total
    kind = event.get("kind")
    if kind in ("warning", "info", "job_failed", "job_cancelled") and event.get("message"):
        settings.message = event["message"]
    elif kind == "frame_merged":
        settings.message = f"frame {event.get('frame')} merged"


def _image(width: int, height: int) -> bpy.types.Image:
    image = bpy.data.images.get(IMAGE_NAME)
    if image is not None and (image.source != "GENERATED"
                              or tuple(image.size) != (width, height)):
        bpy.data.images.remove(image)
        image = None
    if image is None:
        image = bpy.data.images.new(IMAGE_NAME, width, height, alpha=True)
        image.generated_color = (0.0, 0.0, 0.0, 0.0)
        _show(image)
    return image


def paint_tile(tile: work.TilePreview) -> None:
    """Paint a finished tile's preview into the image "Render on Network"."""
    import numpy as np

    image = _image(tile.frame_width, tile.frame_height)
    width, height = tile.frame_width, tile.frame_height
    pixels = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    pixels = pixels.reshape(height, width, 4)
    rgba = np.frombuffer(tile.rgba, dtype=np.uint8).reshape(tile.height, tile.width, 4)
    bottom = height - (tile.y + tile.height)  # Blender's rows start at the bottom
    pixels[bottom:bottom + tile.height, tile.x:tile.x + tile.width] = \
        rgba[::-1].astype(np.float32) / 255.0
    image.pixels.foreach_set(pixels.ravel())
    image.update()


def show_final(path: str) -> None:
    """Replace the image "Render on Network" with the finished frame at ``path``."""
    old = bpy.data.images.get(IMAGE_NAME)
    new = bpy.data.images.load(path, check_existing=False)
    if old is not None:
        old.user_remap(new)
        bpy.data.images.remove(old)
    new.name = IMAGE_NAME
    _show(new)


def _show(image: bpy.types.Image) -> None:
    """Show ``image`` in the Image Editors of the open windows (none in background)."""
    wm = bpy.context.window_manager
    for window in getattr(wm, "windows", []):
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = image


def report_info(text: str) -> None:
    """Show ``text`` as a Blender info report (and on stderr for background runs)."""
    print(text, file=sys.stderr)
    try:
        bpy.ops.renderfarm.report(message=text, level="INFO")
    except RuntimeError:
        pass  # no window to report in


def report_error(text: str) -> None:
    """Show ``text`` as a Blender error report (and on stderr for background runs)."""
    print(text, file=sys.stderr)
    try:
        bpy.ops.renderfarm.report(message=text)
    except RuntimeError:
        pass  # in background an ERROR report raises: it has been printed already
