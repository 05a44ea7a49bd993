"""Per-scene settings of "Render on Network" and the state of its running job."""

from __future__ import annotations

import bpy

SPLITS = (
    ("FRAMES", "Frames", "One task per frame"),
    ("TILES", "Tiles", "Split each frame into tiles, merged seam-free"),
    ("SAMPLES", "Samples", "Split each frame's samples over workers, combined exactly"),
    ("AUTO", "Auto", "Tiles when there are fewer frames than workers, else frames"),
)
DEVICES = (
    ("AUTO", "Auto", "GPU when the farm has one"),
    ("CPU", "CPU", "Render on CPUs"),
    ("GPU", "GPU", "Render on GPUs"),
)


class RenderFarmSettings(bpy.types.PropertyGroup):
    """What to render on the farm, and the job running now."""

    frames: bpy.props.StringProperty(
        name="Frames", default="",
        description="Frames to render, e.g. '1-10,15' (empty: the scene's frame range)")
    split: bpy.props.EnumProperty(name="Split", items=SPLITS, default="FRAMES")
    tiles_x: bpy.props.IntProperty(name="Columns", default=2, min=1, max=64)
    tiles_y: bpy.props.IntProperty(name="Rows", default=2, min=1, max=64)
    chunks: bpy.props.IntProperty(
        name="Sample Ranges", default=0, min=0, max=64,
        description="Sample ranges per frame (0: one per worker)")
    device: bpy.props.EnumProperty(name="Device", items=DEVICES, default="AUTO")
    priority: bpy.props.IntProperty(name="Priority", default=0, min=-1000, max=1000)
    output_dir: bpy.props.StringProperty(
        name="Output", default="//render_farm/", subtype="DIR_PATH",
        description="Folder the finished frames are downloaded to")
    file_format: bpy.props.EnumProperty(
        name="Format", default="SCENE",
        items=(("SCENE", "Scene's Output", "The scene's own output: file format, depth, codec, "
                "colour management and file names (Output properties), as Render Animation "
                "writes them"),
               ("EXR", "OpenEXR Multilayer", "Every pass of every view layer"),
               ("PNG", "PNG", "8-bit image as the scene's view transform shows it")))
    allow_missing: bpy.props.BoolProperty(
        name="Allow Missing Files", default=False,
        description="Render although files the scene needs cannot be found (each is a "
        "warning); off: the submission stops naming them")

    # the job running now (set by the add-on, shown in the panel)
    job_id: bpy.props.StringProperty(name="Job", default="")
    state: bpy.props.StringProperty(name="State", default="")
    message: bpy.props.StringProperty(name="Message", default="")
    progress: bpy.props.FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0,
                                      subtype="FACTOR")
    tasks_done: bpy.props.IntProperty(name="Tasks Done", default=0)
    tasks_total: bpy.props.IntProperty(name="Tasks", default=0)
    frames_done: bpy.props.IntProperty(name="Frames Done", default=0)
    frames_total: bpy.props.IntProperty(name="Frames Total", default=0)
    elapsed: bpy.props.FloatProperty(name="Elapsed", default=0.0, subtype="TIME_ABSOLUTE",
                                     description="Seconds since the farm started the job")
    eta: bpy.props.FloatProperty(name="ETA", default=-1.0, subtype="TIME_ABSOLUTE",
                                 description="Seconds left (-1: not known yet)")
    last_output: bpy.props.StringProperty(name="Last Output", default="", subtype="FILE_PATH")
    report: bpy.props.StringProperty(
        name="Report", default="",
        description="The finished job's report: time, device-seconds, cost, verification "
        "(one line each)")

    @property
    def active(self) -> bool:
        """Whether a job is being submitted or runs."""
        return self.state in ("packing", "uploading", "queued", "running", "paused")


CLASSES = (RenderFarmSettings,)
