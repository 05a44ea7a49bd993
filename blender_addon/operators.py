"""Operators: Render on Network, Cancel, and the report used by the live view."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import bpy

from . import live, work

_FORMATS = {"EXR": "exr", "PNG": "png"}


def job_spec(scene: bpy.types.Scene, settings: Any) -> dict[str, Any]:
    """The job fields for the farm from the scene and its Render on Network settings."""
    frames = settings.frames.strip()
    if not frames:
        frames = f"{scene.frame_start}-{scene.frame_end}"
        if scene.frame_step > 1:
            frames += f"x{scene.frame_step}"
    spec: dict[str, Any] = {"frames": frames, "device": settings.device.lower(),
                            "scene": scene.name, "tiles": [1, 1], "chunks": 1}
    if settings.split == "TILES":
        spec["tiles"] = [settings.tiles_x, settings.tiles_y]
    elif settings.split == "SAMPLES":
        spec["chunks"] = settings.chunks
    elif settings.split == "AUTO":
        spec["tiles"] = [0, 0]
    stem = Path(bpy.data.filepath).stem if bpy.data.filepath else "untitled"
    if settings.file_format in _FORMATS:  # else the scene's own output names and settings
        spec["output"] = f"{stem}_####.{_FORMATS[settings.file_format]}"
    if settings.allow_missing:
        spec["allow_missing"] = True
    if bpy.data.filepath:  # the File the outputs' metadata names: the artist's, not a copy
        spec["origin"] = bpy.data.filepath
    # the farm renders with this very Blender (it prepares it, or says it cannot)
    spec["blender"] = ".".join(str(part) for part in bpy.app.version)
    return spec


def output_folder(settings: Any) -> Path:
    """Where finished frames go (relative to the .blend; the temp folder for a new file)."""
    folder = settings.output_dir or "//render_farm/"
    if folder.startswith("//") and not bpy.data.filepath:
        return Path(tempfile.gettempdir()) / "render_farm" / folder[2:]
    return Path(bpy.path.abspath(folder))


def save_unsaved_pixels(copy: Path) -> None:
    """Write the pixels of images painted and never saved next to ``copy`` (a saved copy
    keeps only how a generated image was made, and a dirty file image's file is stale); the
    child Blender packs them into the copy (:data:`work.UNSAVED_PIXELS`)."""
    import json

    import numpy as np

    found = {}
    for index, image in enumerate(bpy.data.images):
        if image.packed_file is not None or not image.is_dirty or not image.has_data:
            continue
        width, height = image.size
        pixels = np.empty(width * height * image.channels, dtype=np.float32)
        image.pixels.foreach_get(pixels)
        path = copy.parent / f"unsaved-{index}.npy"
        np.save(path, pixels)
        found[image.name] = {"file": path.name, "size": [width, height]}
    if found:
        (copy.parent / work.UNSAVED_PIXELS).write_text(json.dumps(found))


def make_submission(context: bpy.types.Context) -> work.Submission:
    """Save a copy of the open file (unsaved edits included) and prepare its submission.

    The artist's file, its path and its unsaved state are left as they are.
    """
    scene = context.scene
    settings = scene.renderfarm
    prefs = context.preferences.addons[__package__].preferences
    name = bpy.path.basename(bpy.data.filepath) or "untitled.blend"
    copy = work.copy_folder() / name
    bpy.ops.wm.save_as_mainfile(filepath=str(copy), copy=True, check_existing=False)
    save_unsaved_pixels(copy)
    connection = work.Connection(
        address=prefs.address.strip(), server_key=prefs.server_key.strip(),
        client_public=prefs.client_public.strip(), client_secret=prefs.client_secret.strip(),
        timeout=prefs.timeout, online_access=bpy.app.online_access)
    # File Output nodes' files go where Blender writes them: their paths, from the project
    project = Path(bpy.data.filepath).parent if bpy.data.filepath else None
    return work.Submission(connection, copy, bpy.app.binary_path, job_spec(scene, settings),
                           settings.priority, name, output_folder(settings), project)


class RENDERFARM_OT_submit(bpy.types.Operator):
    """Render this scene on the farm: a copy of the file (unsaved edits included) is packed \
and sent; tiles appear in the image "Render on Network\""""

    bl_idname = "renderfarm.submit"
    bl_label = "Render on Network"
    bl_options = {"REGISTER"}

    wait: bpy.props.BoolProperty(
        name="Wait", default=False, options={"SKIP_SAVE"},
        description="Block until the job ends (for scripts)")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.scene is not None and live.submission_of(context.scene) is None

    threaded: bpy.props.BoolProperty(
        name="Threaded", default=False, options={"SKIP_SAVE", "HIDDEN"},
        description="Return at once and pack, upload and follow on a thread (what the "
        "button does)")

    def invoke(self, context: bpy.types.Context, event: Any) -> set[str]:
        """From the UI: return at once; only saving the copy happens here."""
        return self._start_threaded(context)

    def _start_threaded(self, context: bpy.types.Context) -> set[str]:
        submission = make_submission(context)
        context.scene.renderfarm.state = "packing"
        context.scene.renderfarm.message = ""
        context.scene.renderfarm.job_id = ""
        submission.start()
        live.track(context.scene, submission)
        return {"FINISHED"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        """For scripts: blocks until the job is queued (or, with ``wait``, has ended)."""
        if self.threaded:
            return self._start_threaded(context)
        scene = context.scene
        submission = make_submission(context)
        scene.renderfarm.job_id = ""
        ok = submission.prepare()
        live.apply_pending(scene, submission)
        if not ok:
            self.report({"ERROR"}, scene.renderfarm.message)
            return {"CANCELLED"}
        if not self.wait:
            import threading

            threading.Thread(target=submission.follow, name="renderfarm-follow",
                             daemon=True).start()
            live.track(scene, submission)
            return {"FINISHED"}
        import threading

        thread = threading.Thread(target=submission.follow, daemon=True)
        thread.start()
        while not submission.ended.is_set() or not submission.messages.empty():
            live.apply_pending(scene, submission)
            time.sleep(0.05)
        live.apply_pending(scene, submission)
        if scene.renderfarm.state != "done":
            self.report({"ERROR"}, f"job {submission.job_id} {scene.renderfarm.state}: "
                        f"{scene.renderfarm.message}")
            return {"CANCELLED"}
        return {"FINISHED"}


class RENDERFARM_OT_cancel(bpy.types.Operator):
    """Cancel the scene's job on the farm (frames already finished are kept)"""

    bl_idname = "renderfarm.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.scene is not None and live.submission_of(context.scene) is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        submission = live.submission_of(context.scene)
        if submission is None:
            return {"CANCELLED"}
        submission.cancel()
        context.scene.renderfarm.message = "cancelling"
        return {"FINISHED"}


class RENDERFARM_OT_report(bpy.types.Operator):
    """Show a message from the farm as a report"""

    bl_idname = "renderfarm.report"
    bl_label = "Render on Network Report"
    bl_options = {"INTERNAL"}

    message: bpy.props.StringProperty()
    level: bpy.props.EnumProperty(items=(("ERROR", "Error", ""), ("INFO", "Info", "")),
                                  default="ERROR")

    def execute(self, context: bpy.types.Context) -> set[str]:
        self.report({self.level}, self.message)
        return {"FINISHED"}


class RENDERFARM_OT_open_output(bpy.types.Operator):
    """Open the folder the finished frames are downloaded to"""

    bl_idname = "renderfarm.open_output"
    bl_label = "Open Output Folder"

    def execute(self, context: bpy.types.Context) -> set[str]:
        folder = output_folder(context.scene.renderfarm)
        os.makedirs(folder, exist_ok=True)
        bpy.ops.wm.path_open(filepath=str(folder))
        return {"FINISHED"}


CLASSES = (RENDERFARM_OT_submit, RENDERFARM_OT_cancel, RENDERFARM_OT_report,
           RENDERFARM_OT_open_output)
