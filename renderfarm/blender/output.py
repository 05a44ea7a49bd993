"""A scene's output settings as Blender's Output properties set them, and the names its File
Output nodes give their files as Render Animation does.

Only this package imports ``bpy``; these functions take Blender objects and change them.
"""

from __future__ import annotations

import logging
from typing import Any

from renderfarm.blender import compat
from renderfarm.job import PIECE_FORMAT, VIDEO_FRAME_FORMAT

logger = logging.getLogger(__name__)

#: the image settings of a scene's output that make its file what it is (in the order
#: Blender accepts them: the format first, then what the format allows)
OUTPUT_SETTINGS = ("media_type", "file_format", "color_mode", "color_depth", "compression",
                   "quality", "exr_codec", "tiff_codec", "use_preview", "use_exr_interleave")

def own_output(scene: Any) -> dict[str, Any]:
    """The scene's own output settings, as saved in its file (before the farm changes them
    to render pieces)."""
    return settings_of(scene.render.image_settings)


def settings_of(settings: Any) -> dict[str, Any]:
    """The values of :data:`OUTPUT_SETTINGS` of a ``bpy.types.ImageFormatSettings``."""
    return {name: getattr(settings, name) for name in OUTPUT_SETTINGS if hasattr(settings, name)}


def _give(settings: Any, own: dict[str, Any]) -> None:
    for name in OUTPUT_SETTINGS:
        if name not in own:
            continue
        try:
            setattr(settings, name, own[name])
        except (AttributeError, TypeError, ValueError):  # not settable for this format
            continue


def ffmpeg_settings(scene: Any) -> dict[str, Any]:
    """Every settable property of the scene's FFmpeg output (container, codecs, quality,
    audio), as saved in its file: Blender 4.2 resets the container to Matroska when the
    file format goes back to FFMPEG, so the farm gives them back (:func:`restore_ffmpeg`)."""
    ffmpeg = scene.render.ffmpeg
    return {prop.identifier: getattr(ffmpeg, prop.identifier)
            for prop in ffmpeg.bl_rna.properties
            if prop.identifier != "rna_type" and not prop.is_readonly
            and prop.type in ("BOOLEAN", "INT", "FLOAT", "STRING", "ENUM")
            and not getattr(prop, "is_array", False)}


def restore_ffmpeg(scene: Any, own: dict[str, Any]) -> None:
    """Give the scene's FFmpeg output the settings ``own`` (:func:`ffmpeg_settings`); the
    container first, as the codecs it takes depend on it."""
    ffmpeg = scene.render.ffmpeg
    for name in sorted(own, key=lambda n: n != "format"):
        try:
            if getattr(ffmpeg, name) != own[name]:
                setattr(ffmpeg, name, own[name])
        except (AttributeError, TypeError, ValueError):  # not settable with this container
            continue


def restore_output(scene: Any, own: dict[str, Any], file_format: str) -> bool:
    """Give ``scene`` the output settings ``own`` (from :func:`own_output`) when they are for
    ``file_format``: the farm then writes the final file with the scene's own depth, colour
    mode, codec and quality. Returns whether it did."""
    if own.get("file_format") != file_format:
        return False
    _give(scene.render.image_settings, own)
    return True


def apply_output(scene: Any, own: dict[str, Any], file_format: str) -> None:
    """Give ``scene`` the settings its own output ``own`` has once its format is switched to
    ``file_format`` in Blender's Output properties: the scene's settings where that format
    takes them, Blender's choice where it does not (an FFMPEG scene's 8 bits stay 8 in a PNG,
    a 32-bit EXR scene's PNG is 16-bit). Whole frames and finished tiled frames of a job
    whose ``-o`` changes the format are written with the same settings this way."""
    _give(scene.render.image_settings, own)
    set_output_format(scene, file_format)


def set_output_format(scene: Any, file_format: str) -> None:
    """Make ``scene`` write ``file_format`` as Blender's Output properties do when the
    format is picked there: media type, then file format; Blender keeps the depth, colour
    mode and codecs the new format takes and picks its own for the rest.

    ``PIECE`` (a piece of a frame that is merged or finished later) is always a lossless
    32-bit multilayer EXR, with no stamp burnt in (the finished frame gets it), and
    ``VIDEO_FRAME`` a 32-bit float RGBA EXR.
    """
    settings = scene.render.image_settings
    if file_format == PIECE_FORMAT:
        compat.set_file_format(settings, "OPEN_EXR_MULTILAYER")
        settings.color_depth = "32"
        settings.exr_codec = "ZIP"
        settings.views_format = "INDIVIDUAL"  # a file per view, packed into one piece
        scene.render.use_stamp = False
        return
    if file_format == VIDEO_FRAME_FORMAT:
        compat.set_file_format(settings, "OPEN_EXR")
        settings.color_depth = "32"
        settings.color_mode = "RGBA"
        settings.exr_codec = "ZIP"
        settings.views_format = "INDIVIDUAL"
        scene.render.use_stamp = False
        return
    if settings.file_format == file_format:
        return
    compat.set_file_format(settings, file_format)


def switched_output(own: dict[str, Any], file_format: str) -> dict[str, Any]:
    """The output settings a scene whose own are ``own`` has once its format is switched to
    ``file_format`` in Blender's Output properties (as :func:`apply_output` gives them),
    read off a throw-away scene: the artist's scene is not touched."""
    import bpy

    scene = bpy.data.scenes.new("renderfarm-output-settings")
    try:
        apply_output(scene, own, file_format)
        return settings_of(scene.render.image_settings)
    finally:
        bpy.data.scenes.remove(scene)


def number_frames(node: Any) -> None:
    """Make a File Output node name its files as Render Animation does when the farm renders
    one frame as a still: a path whose file name (the node's file name, and an item's name
    for a format of one file per input) has no ``#`` gets the frame appended, four digits at
    least, so ``//passes/pass_`` with items ``depth`` and ``normal`` writes
    ``pass_depth0001.exr`` and ``pass_normal0001.exr`` at frame 1 (a still render of Blender
    5 writes ``pass_depth.exr`` for every frame; Blender 4 numbers them itself). ``#`` in the
    node's folder is left as it is, as Blender leaves it; the last ``#`` run of a file name
    is the frame, as in Blender."""
    compat.number_frames(node)
