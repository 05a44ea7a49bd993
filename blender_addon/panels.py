"""The Render on Network panel in the Output properties."""

from __future__ import annotations

import bpy

from . import live
from .operators import RENDERFARM_OT_cancel, RENDERFARM_OT_submit


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RENDERFARM_PT_render(bpy.types.Panel):
    """Send the scene to the farm and follow its job."""

    bl_label = "Render on Network"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "output"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        scene = context.scene
        settings = scene.renderfarm
        layout.use_property_split = True
        layout.use_property_decorate = False
        col = layout.column()
        col.prop(settings, "frames", placeholder=f"{scene.frame_start}-{scene.frame_end}")
        col.prop(settings, "split")
        if settings.split == "TILES":
            row = col.row(align=True)
            row.prop(settings, "tiles_x")
            row.prop(settings, "tiles_y")
        elif settings.split == "SAMPLES":
            col.prop(settings, "chunks")
        col.prop(settings, "device")
        col.prop(settings, "priority")
        col.prop(settings, "output_dir")
        col.prop(settings, "file_format")
        col.prop(settings, "allow_missing")

        running = live.submission_of(scene) is not None
        row = layout.row()
        row.scale_y = 1.4
        row.enabled = not running
        row.operator(RENDERFARM_OT_submit.bl_idname, icon="RENDER_STILL")
        if settings.state:
            box = layout.box()
            box.label(text=f"{settings.state.capitalize()}  {settings.job_id}")
            if hasattr(box, "progress"):
                box.progress(factor=settings.progress,
                             text=f"{settings.tasks_done}/{settings.tasks_total} tasks, "
                             f"{settings.frames_done}/{settings.frames_total} frames")
            else:
                box.prop(settings, "progress", slider=True)
            if settings.job_id:
                eta = f", ETA {_duration(settings.eta)}" if settings.eta >= 0 else ""
                box.label(text=f"Elapsed {_duration(settings.elapsed)}{eta}")
            if settings.message:
                box.label(text=settings.message,
                          icon="ERROR" if settings.state == "failed" else "INFO")
            for line in settings.report.splitlines():  # the finished job's report
                box.label(text=line, icon="INFO")
            if running:
                box.operator(RENDERFARM_OT_cancel.bl_idname, icon="CANCEL")


CLASSES = (RENDERFARM_PT_render,)
