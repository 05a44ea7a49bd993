"""Facts about a loaded scene: what planning needs (:func:`scene_info`) and what a user checks
before sending a file to the farm (:func:`file_report`)."""

from __future__ import annotations

import glob
import os
import re
from typing import Any

from renderfarm.blender import compat
from renderfarm.blender.output import own_output, switched_output
from renderfarm.job import OUTPUT_SETTING_NAMES, SceneInfo

#: compositor nodes that do not change the rendered image
_NEUTRAL_NODES = {"R_LAYERS", "COMPOSITE", "GROUP_OUTPUT", "GROUP_INPUT", "VIEWER", "REROUTE",
                  "FRAME", "NodeFrame", "NodeReroute", "NodeGroupOutput", "NodeGroupInput",
                  "CompositorNodeRLayers", "CompositorNodeComposite", "CompositorNodeViewer"}

_PASS_FLAGS = re.compile(r"^use_pass_(.+)$")


def _uses_sequencer(scene: Any) -> bool:
    """Whether the video sequencer makes the image (unmuted strips that are not sound,
    sequencer on: sound strips give a video its audio and leave the image to the render)."""
    if not scene.render.use_sequencer or scene.sequence_editor is None:
        return False
    return any(not s.mute and s.type != "SOUND"
               for s in compat.all_strips(scene.sequence_editor))


def _compositor_changes_image(scene: Any) -> bool:
    """Whether the compositor alters the rendered image (needs the whole frame)."""
    render = scene.render
    if not render.use_compositing:
        return False
    tree = compat.compositor_tree(scene)
    if tree is None:
        return False
    for node in tree.nodes:
        if node.mute:
            continue
        if node.type not in _NEUTRAL_NODES and node.bl_idname not in _NEUTRAL_NODES:
            return True
    return False


def compositor_blocker(scene: Any) -> str | None:
    """Why the scene's compositor cannot run on a merged frame instead of a render, or None.

    The farm replaces each Render Layers node with an image of the merged frame; nodes that
    read other scenes' renders or the render result directly cannot be fed that way.
    """
    tree = compat.compositor_tree(scene)
    if tree is None:
        return None
    for node in _all_nodes(tree):
        if node.mute:
            continue
        if node.bl_idname == "CompositorNodeRLayers" and node.scene not in (None, scene):
            return f"its compositor reads another scene ({node.scene.name!r})"
        if node.bl_idname.startswith("CompositorNodeCryptomatte") and \
                getattr(node, "source", "RENDER") == "RENDER":
            return "its Cryptomatte node reads the render result"
    for group in _all_nodes(tree):
        inner = getattr(group, "node_tree", None)
        if inner is not None and any(n.bl_idname == "CompositorNodeRLayers"
                                     for n in inner.nodes):
            return "a node group holds a Render Layers node"
    return None


def _all_nodes(tree: Any) -> list[Any]:
    return list(tree.nodes)


def _passes(layer: Any) -> list[str]:
    names = []
    for holder in (layer, getattr(layer, "cycles", None), getattr(layer, "eevee", None)):
        if holder is None:
            continue
        for prop in holder.bl_rna.properties:
            match = _PASS_FLAGS.match(prop.identifier)
            if (match and prop.type == "BOOLEAN" and getattr(holder, prop.identifier)
                    and match.group(1) != "cryptomatte_accurate"):
                names.append(match.group(1))
    names.extend(f"aov:{aov.name}" for aov in getattr(layer, "aovs", []))
    names.extend(f"lightgroup:{lg.name}" for lg in getattr(layer, "lightgroups", []))
    return names


def display_of(scene: Any) -> dict[str, Any]:
    """How a scene's output shows its scene-linear pixels (the output's own colour management
    when it overrides the scene's): display, view transform, look, exposure, gamma, the
    file's working space, and whether curves or white balance change it."""
    render = scene.render
    holder = (render.image_settings
              if getattr(render.image_settings, "color_management", "") == "OVERRIDE"
              else scene)
    view, display = holder.view_settings, holder.display_settings
    colorspace = getattr(_bpy_data(), "colorspace", None)
    return {"display_device": display.display_device, "view_transform": view.view_transform,
            "look": view.look, "exposure": float(view.exposure), "gamma": float(view.gamma),
            "working_space": getattr(colorspace, "working_space", "") or "Linear Rec.709",
            "curve_mapping": bool(view.use_curve_mapping),
            "white_balance": bool(getattr(view, "use_white_balance", False))}


def scene_info(scene: Any) -> SceneInfo:
    """The planning facts of a ``bpy.types.Scene``."""
    render = scene.render
    cycles = getattr(scene, "cycles", None)
    is_cycles = render.engine == "CYCLES" and cycles is not None
    layers = {vl.name: _passes(vl) for vl in scene.view_layers if vl.use}
    denoise = bool(is_cycles and cycles.use_denoising)
    sequencer = _uses_sequencer(scene)
    views, outputs = active_views(scene), file_output_nodes(scene)
    return SceneInfo(
        scene=scene.name,
        engine=render.engine,
        resolution=(render.resolution_x, render.resolution_y),
        percentage=render.resolution_percentage,
        frame_start=scene.frame_start,
        frame_end=scene.frame_end,
        frame_step=scene.frame_step,
        camera=scene.camera.name if scene.camera is not None else None,
        use_border=bool(render.use_border),
        border=(render.border_min_x, render.border_min_y, render.border_max_x,
                render.border_max_y),
        crop_to_border=bool(render.use_crop_to_border),
        samples=int(cycles.samples) if is_cycles else None,
        sample_subset=(compat.sample_subset(cycles)[1:]
                       if is_cycles and compat.sample_subset(cycles)[0] else None),
        adaptive_sampling=bool(is_cycles and cycles.use_adaptive_sampling),
        denoising=denoise,
        motion_blur=bool(render.use_motion_blur),
        compositing=sequencer or _compositor_changes_image(scene),
        compositor_blocker=compositor_blocker(scene) if _compositor_changes_image(scene)
        else None,
        sequencer=sequencer,
        view_layers=layers,
        libraries=[lib.filepath for lib in _bpy_data().libraries],
        missing_files=missing_files(),
        file_format=render.image_settings.file_format,
        fps=render.fps / render.fps_base,
        output_path=render.filepath,
        file_extension=bool(render.use_file_extension),
        output={name: getattr(render.image_settings, name) for name in OUTPUT_SETTING_NAMES},
        views=[view.name for view in views],
        view_suffixes=[view.file_suffix for view in views],
        views_format=render.image_settings.views_format,
        file_outputs=[node.name for node in outputs],
        file_output_dirs=[node_folder(node) for node in outputs],
        stamp=bool(render.use_stamp),
        display=display_of(scene),
        blender=_blender_version(),
        sample_ranges=bool(cycles is not None and compat.has_sample_subset(cycles)),
        multilayer_output={} if render.image_settings.file_format == "OPEN_EXR_MULTILAYER"
        else {name: value for name, value in
              switched_output(own_output(scene), "OPEN_EXR_MULTILAYER").items()
              if name in OUTPUT_SETTING_NAMES},
    )


def _blender_version() -> str:
    """This Blender's version (``5.0.1``; a release's ``LTS`` or cycle word left out)."""
    import bpy

    return str(bpy.app.version_string).split()[0]


def active_views(scene: Any) -> list[Any]:
    """The views a scene renders: left and right in Stereo 3D mode, the views in use in
    Multi-View mode; none without stereoscopy."""
    render = scene.render
    if not render.use_multiview:
        return []
    if render.views_format == "STEREO_3D":
        return [view for view in render.views if view.name in ("left", "right")]
    return [view for view in render.views if view.use]


def file_output_nodes(scene: Any) -> list[Any]:
    """The compositor's File Output nodes that write files when the scene renders (not
    muted, compositing on; inside node groups too), in the tree's order (a node's index
    names its files on the way back from a worker)."""
    tree = compat.compositor_tree(scene)
    if tree is None or not scene.render.use_compositing:
        return []
    found: list[Any] = []
    seen: set[int] = set()

    def walk(group: Any) -> None:
        if group.as_pointer() in seen:  # a group used twice writes through one node
            return
        seen.add(group.as_pointer())
        for node in group.nodes:
            if node.mute:
                continue
            if node.bl_idname == "CompositorNodeOutputFile":
                found.append(node)
            elif getattr(node, "node_tree", None) is not None:
                walk(node.node_tree)

    walk(tree)
    return found


def node_folder(node: Any) -> str:
    """The folder a File Output node's files land in, as the file says it (``//``
    relative to the ``.blend``): its directory joined with the folders of its file name
    (``sub/depth_####``, ``../up_####``)."""
    directory, file_name = compat.file_output_location(node)
    folder = directory or "//"
    prefix = "//" if folder.startswith("//") else ""
    inner = os.path.join(folder[len(prefix):], os.path.dirname(file_name))
    inner = os.path.normpath(inner) if inner else ""
    inner = "" if inner == "." else inner
    return prefix + inner + ("/" if inner and not inner.endswith("/") else "")


def _bpy_data() -> Any:
    import bpy

    return bpy.data


def _exists(path: str) -> bool:
    if "<UDIM>" in path or "<UVTILE>" in path:
        pattern = path.replace("<UDIM>", "1[0-9][0-9][0-9]").replace("<UVTILE>", "u*_v*")
        return bool(glob.glob(glob.escape(os.path.dirname(pattern)) + "/"
                              + os.path.basename(pattern)))
    return os.path.exists(path)


def missing_files() -> list[str]:
    """External files the open ``.blend`` uses that do not exist (absolute paths)."""
    import bpy

    missing: list[str] = []
    collections = [bpy.data.libraries, bpy.data.images, bpy.data.movieclips, bpy.data.sounds,
                   bpy.data.fonts, bpy.data.cache_files, bpy.data.volumes]
    for collection in collections:
        for block in collection:
            path = getattr(block, "filepath", "")
            if not path or path == "<builtin>":
                continue
            if getattr(block, "packed_file", None) is not None:
                continue
            if getattr(block, "source", "FILE") in {"GENERATED", "VIEWER"}:
                continue
            library = getattr(block, "library", None)
            absolute = bpy.path.abspath(path, library=library)
            if getattr(block, "source", "") == "TILED":
                absolute = re.sub(r"\.1\d{3}\.", ".<UDIM>.", absolute) if "<UDIM>" not in \
                    absolute else absolute
            if not _exists(os.path.normpath(absolute)):
                missing.append(os.path.normpath(absolute))
    return sorted(set(missing))


def file_report(path: str) -> dict[str, Any]:
    """Everything ``renderfarm inspect`` shows about the open file and its scenes."""
    import bpy

    scenes = []
    for scene in bpy.data.scenes:
        info = scene_info(scene)
        scenes.append(info.to_dict())
    active = bpy.context.scene.name if bpy.context.scene is not None else None
    return {
        "file": path,
        "blender_version": ".".join(str(v) for v in bpy.data.version[:2]),
        "active_scene": active,
        "scenes": scenes,
        "libraries": [lib.filepath for lib in bpy.data.libraries],
        "missing_files": missing_files(),
    }


def _main(argv: list[str]) -> int:  # pragma: no cover - run by renderfarm.cli in a child
    """``python -m renderfarm.blender.inspect FILE OUT.json``: open FILE, write its report."""
    import json

    from renderfarm.blender.files import open_blend
    from renderfarm.errors import RenderFarmError

    path, out = argv[0], argv[1]
    try:
        open_blend(path, allow_scripts=False)
        report: dict[str, Any] = file_report(os.path.abspath(path))
    except RenderFarmError as exc:
        report = {"error": exc.to_dict()}
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(report, handle, ensure_ascii=False)
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(_main(sys.argv[1:]))
