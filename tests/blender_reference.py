"""Reference renders for the tests: plain bpy in one process, no renderfarm code on the path
of the pixels.

``python blender_reference.py FILE.blend OUT_PATTERN FRAME[,FRAME...] [FORMAT [SAMPLES PCT]]``

``python blender_reference.py FILE.blend - FIRST,LAST ANIMATION`` renders the frames as an
artist's "Render Animation" does: ``render(animation=True)`` with every output setting of the
scene, its own output path included.

Each frame is rendered untiled with the scene as saved and written with ``write_still`` to
OUT_PATTERN with ``{frame}`` replaced. FORMAT is EXR (default, multilayer) or PNG, JPEG, TIFF,
or SCENE (the scene's own output settings).

``python blender_reference.py FILE.blend OUT_PATTERN FRAME SWITCH:FORMAT[,FORMAT...]`` renders
FRAME once per FORMAT, each from the file as saved with its output format switched as an
artist switches it in the Output properties (media type, then file format; Blender keeps or
picks the depth, colour mode and codec), to OUT_PATTERN with ``{frame}`` and ``{format}``
replaced.
"""

from __future__ import annotations

import sys

import bpy


def main(argv: list[str]) -> int:
    path, pattern, frames = argv[0], argv[1], [int(f) for f in argv[2].split(",")]
    fmt = argv[3] if len(argv) > 3 else "EXR"
    if fmt.startswith("SWITCH:"):
        media = {"OPEN_EXR_MULTILAYER": "MULTI_LAYER_IMAGE", "FFMPEG": "VIDEO"}
        for name in fmt[len("SWITCH:"):].split(","):
            bpy.ops.wm.open_mainfile(filepath=path, load_ui=False, use_scripts=False)
            scene = bpy.context.scene
            settings = scene.render.image_settings
            if settings.file_format != name:
                settings.media_type = media.get(name, "IMAGE")
                settings.file_format = name
            scene.render.use_file_extension = False
            scene.frame_set(frames[0])
            scene.render.filepath = pattern.format(frame=frames[0], format=name)
            bpy.ops.render.render(write_still=True)
        return 0
    bpy.ops.wm.open_mainfile(filepath=path, load_ui=False, use_scripts=False)
    scene = bpy.context.scene
    if fmt == "ANIMATION":
        if frames[0] >= 0:
            scene.frame_start, scene.frame_end = frames[0], frames[-1]
            bpy.ops.render.render(animation=True)
            return 0
        # a scene's range cannot start below 0: a still at each frame, written where the
        # animation would write it (Blender's own frame_path names it)
        paths = {frame: scene.render.frame_path(frame=frame)
                 for frame in range(frames[0], frames[-1] + 1)}
        scene.render.use_file_extension = False
        for frame, frame_path in paths.items():
            scene.frame_set(frame)
            scene.render.filepath = frame_path
            bpy.ops.render.render(write_still=True)
        return 0
    if len(argv) > 5:  # the overrides as ``--samples`` and ``--percentage`` mean them
        if scene.render.engine == "CYCLES":
            scene.cycles.samples = int(argv[4])
        elif scene.render.engine.startswith("BLENDER_EEVEE"):
            scene.eevee.taa_render_samples = int(argv[4])
        scene.render.resolution_percentage = int(argv[5])
    settings = scene.render.image_settings
    if fmt == "SCENE":  # the scene's own output settings, as saved
        pass
    elif fmt != "EXR":
        settings.media_type = "IMAGE"
        settings.file_format = fmt
    elif settings.file_format != "OPEN_EXR_MULTILAYER":
        settings.media_type = "MULTI_LAYER_IMAGE"
        settings.file_format = "OPEN_EXR_MULTILAYER"
        settings.color_depth = "32"
        settings.exr_codec = "ZIP"
    scene.render.use_file_extension = False
    for frame in frames:
        scene.frame_set(frame)
        scene.render.filepath = pattern.format(frame=frame)
        bpy.ops.render.render(write_still=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
