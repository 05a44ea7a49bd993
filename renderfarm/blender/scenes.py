"""Small deterministic scenes for the demo, the tests and the benchmarks.

``python -m renderfarm.blender.scenes OUT.blend [--width W --height H --samples S --frames N
--engine CYCLES --adaptive --denoise --passes --border X0,Y0,X1,Y1 --no-camera --kind demo|cube]``
writes one. ``--kind cube`` is Blender's own factory startup scene (cube, point light, camera)
with the cube turning, the usual probe for per-frame overhead; ``demo`` (the default) is a lit
floor with three animated primitives, one of them emissive; ``project`` writes a project
folder (:func:`build_project`: image sequence, linked library with its own texture).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from renderfarm.blender import compat


@dataclass(frozen=True)
class SceneRecipe:
    """What :func:`build_scene` makes.

    Attributes:
        width: resolution x.
        height: resolution y.
        samples: Cycles samples.
        frames: animation length (frames 1..frames); objects move every frame.
        engine: ``CYCLES`` or ``BLENDER_EEVEE``.
        adaptive: Cycles adaptive sampling.
        denoise: render-time denoising.
        passes: enable Z, normal, mist, AO, emission and diffuse passes and a second view layer.
        border: a render border ``(min_x, min_y, max_x, max_y)`` or None.
        crop: crop the output to the border.
        camera: add a camera.
        percentage: resolution percentage.
        detail: subdivision levels (render) on the objects, for production-like geometry
            (each level multiplies the faces by four; 0 keeps the primitives as they are).
        motion_blur: render motion blur.
        filter_width: Cycles' pixel filter width in pixels (None: Blender's 1.5).
        compositor: a compositor that needs neighbouring pixels (glare, blur, lens
            distortion) and reads the Depth pass.
        all_passes: every pass Cycles offers on the first layer (data, light, Cryptomatte,
            a colour and a value shader AOV, two light groups) and a second view layer.
        kind: ``demo`` or ``cube`` (Blender's factory startup scene; only ``width``,
            ``height``, ``samples``, ``frames``, ``engine`` and ``percentage`` apply).
        output: the scene's own output settings, ``FORMAT[,DEPTH[,MODE]]`` (``PNG,8,RGB``);
            None saves a 32-bit multilayer EXR.
        settings: more settings as ``PATH=VALUE``, set last: PATH starts at ``scene.`` or
            ``data.`` (``scene.render.image_settings.exr_codec=DWAA``,
            ``data.colorspace.working_space=ACEScg``); VALUE is a Python literal or text.
        extras: named additions: ``scene-time`` (a compositor that multiplies the image by
            the Scene Time node's frame / 10), ``sound`` (a packed tone as a sound strip,
            AAC audio), ``file-output`` (a compositor File Output
            node writing the Depth pass to ``//passes/depth_####`` as OpenEXR),
            ``file-output-nested`` (File Output nodes in a node group, with file names in
            a subfolder and climbing out of their folder), ``file-output-forms`` (a File
            Output node per way of naming files, :data:`FILE_OUTPUT_FORMS`),
            ``stamp`` (the burn-in stamp with frame, scene and a note only).
    """

    width: int = 64
    height: int = 48
    samples: int = 8
    frames: int = 4
    engine: str = "CYCLES"
    adaptive: bool = False
    denoise: bool = False
    passes: bool = False
    border: tuple[float, float, float, float] | None = None
    crop: bool = True
    camera: bool = True
    percentage: int = 100
    detail: int = 0
    kind: str = "demo"
    motion_blur: bool = False
    all_passes: bool = False
    compositor: bool = False
    filter_width: float | None = None
    output: str | None = None
    settings: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()


def build_scene(path: str, recipe: SceneRecipe) -> None:
    """Build the scene described by ``recipe`` in a fresh Blender session and save it."""
    import bpy

    if recipe.kind not in ("demo", "cube"):
        raise ValueError(f"unknown scene kind {recipe.kind!r}: use 'demo' or 'cube'")
    bpy.ops.wm.read_factory_settings(use_empty=recipe.kind != "cube")
    scene = bpy.context.scene
    render = scene.render
    render.engine = recipe.engine
    render.resolution_x, render.resolution_y = recipe.width, recipe.height
    render.resolution_percentage = recipe.percentage
    scene.frame_start, scene.frame_end = 1, recipe.frames
    if recipe.engine == "CYCLES":
        scene.cycles.samples = recipe.samples
        scene.cycles.use_adaptive_sampling = recipe.adaptive
        scene.cycles.use_denoising = recipe.denoise
        scene.cycles.device = "CPU"
        if recipe.filter_width is not None:
            scene.cycles.filter_width = recipe.filter_width
    else:
        scene.eevee.taa_render_samples = recipe.samples
    if recipe.kind == "cube":
        cube = scene.objects["Cube"]
        for frame in range(1, recipe.frames + 1):
            cube.rotation_euler = (0, 0, 0.2 * frame)
            cube.keyframe_insert("rotation_euler", frame=frame)
        _finish(path, scene, recipe)
        return

    world = bpy.data.worlds.new("World")
    if world.node_tree is None:
        world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.05, 0.07, 0.1, 1)
    scene.world = world

    def material(name: str, color: tuple[float, float, float], emission: float = 0.0) -> object:
        mat = bpy.data.materials.new(name)
        if mat.node_tree is None:
            mat.use_nodes = True
        bsdf = mat.node_tree.nodes["Principled BSDF"]
        bsdf.inputs["Base Color"].default_value = (*color, 1.0)
        bsdf.inputs["Roughness"].default_value = 0.35
        if emission:
            bsdf.inputs["Emission Color"].default_value = (*color, 1.0)
            bsdf.inputs["Emission Strength"].default_value = emission
        return mat

    bpy.ops.mesh.primitive_plane_add(size=20, location=(0, 0, 0))
    bpy.context.object.data.materials.append(material("Floor", (0.6, 0.6, 0.55)))
    shapes = [
        (bpy.ops.mesh.primitive_cube_add, (-1.6, 0, 0.8), (0.8, 0.2, 0.1), 0.0),
        (bpy.ops.mesh.primitive_uv_sphere_add, (0.6, 0.4, 0.9), (0.1, 0.5, 0.9), 0.0),
        (bpy.ops.mesh.primitive_torus_add, (1.9, -0.8, 0.5), (0.9, 0.8, 0.2), 2.0),
    ]
    for index, (add, location, color, emission) in enumerate(shapes):
        add(location=location)
        obj = bpy.context.object
        obj.data.materials.append(material(f"M{index}", color, emission))
        if recipe.detail:
            subsurf = obj.modifiers.new("detail", "SUBSURF")
            subsurf.levels = 1
            subsurf.render_levels = recipe.detail
            displace = obj.modifiers.new("bumps", "DISPLACE")
            displace.texture = bpy.data.textures.new(f"bumps{index}", "CLOUDS")
            displace.strength = 0.05
        for frame in range(1, recipe.frames + 1):
            obj.location = (location[0], location[1] + 0.25 * (frame - 1) * (index - 1),
                            location[2])
            obj.rotation_euler = (0, 0, 0.3 * frame * (index + 1))
            obj.keyframe_insert("location", frame=frame)
            obj.keyframe_insert("rotation_euler", frame=frame)

    light_data = bpy.data.lights.new("Key", type="AREA")
    light_data.energy = 600
    light_data.size = 3
    light = bpy.data.objects.new("Key", light_data)
    light.location = (3, -3, 5)
    light.rotation_euler = (math.radians(40), 0, math.radians(45))
    scene.collection.objects.link(light)

    if recipe.camera:
        cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
        cam.location = (0, -7.5, 3.2)
        cam.rotation_euler = (math.radians(70), 0, 0)
        scene.collection.objects.link(cam)
        scene.camera = cam

    render.use_motion_blur = recipe.motion_blur
    if recipe.border is not None:
        render.use_border = True
        render.use_crop_to_border = recipe.crop
        (render.border_min_x, render.border_min_y, render.border_max_x,
         render.border_max_y) = recipe.border

    if recipe.all_passes:
        _all_passes(scene)
    if recipe.compositor:
        _compositor(scene)
    if recipe.passes:
        layer = scene.view_layers[0]
        for flag in ("use_pass_z", "use_pass_normal", "use_pass_mist", "use_pass_emit",
                     "use_pass_diffuse_direct", "use_pass_ambient_occlusion"):
            setattr(layer, flag, True)
        second = scene.view_layers.new("Second")
        second.use_pass_z = True

    _finish(path, scene, recipe)


def _finish(path: str, scene: Any, recipe: SceneRecipe) -> None:
    """The recipe's extras and settings, then save."""
    for extra in recipe.extras:
        if extra not in _EXTRAS:
            raise ValueError(f"unknown extra {extra!r}: use one of {', '.join(_EXTRAS)}")
        _EXTRAS[extra](scene)
    output_settings(scene, recipe.output)
    for item in recipe.settings:
        apply_setting(scene, item)
    import bpy

    bpy.ops.wm.save_as_mainfile(filepath=path, compress=True)


def apply_setting(scene: Any, item: str) -> None:
    """Set one ``PATH=VALUE`` (see :attr:`SceneRecipe.settings`) on ``scene`` or
    ``bpy.data``."""
    import ast

    import bpy

    path, _, text = item.partition("=")
    root, *names = path.split(".")
    if root not in ("scene", "data") or not names:
        raise ValueError(f"a setting is scene.PATH=VALUE or data.PATH=VALUE, not {item!r}")
    if path == "data.colorspace.working_space":  # read-only in RNA; an operator sets it
        bpy.ops.wm.set_working_color_space(working_space=text, convert_colors=True)
        return
    target: Any = scene if root == "scene" else bpy.data
    for name in names[:-1]:
        target = getattr(target, name)
    try:
        value: Any = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    setattr(target, names[-1], value)


def _compositor_tree(scene: Any) -> Any:
    """A new, empty compositor node tree, made the scene's."""
    return compat.compositor_tree(scene, create=True)


def _scene_time(scene: Any) -> None:
    """A compositor whose image is the render times the Scene Time node's frame / 10."""
    tree = _compositor_tree(scene)
    nodes, links = tree.nodes, tree.links
    layers = nodes.new("CompositorNodeRLayers")
    time = nodes.new("CompositorNodeSceneTime")
    scale = compat.math_node(tree, "DIVIDE")
    scale.inputs[1].default_value = 10.0
    _mix, a, b, result = compat.mix_node(tree, "MULTIPLY", 1.0)
    links.new(time.outputs["Frame"], scale.inputs[0])
    links.new(layers.outputs["Image"], a)
    links.new(scale.outputs[0], b)
    links.new(result, compat.output_socket(tree))
    scene.render.use_compositing = True


def _file_output(scene: Any) -> None:
    """Render Layers -> Composite, and the Depth pass to a File Output node writing
    ``//passes/depth_####`` as a 32-bit OpenEXR."""
    scene.view_layers[0].use_pass_z = True
    tree = compat.compositor_tree(scene)
    if tree is None:
        tree = _compositor_tree(scene)
        layers = tree.nodes.new("CompositorNodeRLayers")
        tree.links.new(layers.outputs["Image"], compat.output_socket(tree))
    layers = next(n for n in tree.nodes if n.bl_idname == "CompositorNodeRLayers")
    node = compat.new_file_output(tree, "//passes/", "depth_####", "OPEN_EXR",
                                  [("FLOAT", "Depth")])
    node.format.color_depth = "32"
    tree.links.new(layers.outputs["Depth"], node.inputs[0])
    scene.render.use_compositing = True


def _file_output_nested(scene: Any) -> None:
    """:func:`_file_output`, plus a File Output node inside a node group writing the Depth
    pass to ``//grp/`` with a file name in a subfolder (``sub/g_####``), and the first node's
    file name climbing out of its folder (``../up_####``: next to the ``.blend``)."""
    import bpy

    _file_output(scene)
    tree = compat.compositor_tree(scene)
    first = next(n for n in tree.nodes if n.bl_idname == "CompositorNodeOutputFile")
    compat.set_file_output_location(first, compat.file_output_location(first)[0],
                                    "../up_####")
    group = bpy.data.node_groups.new("depth out", "CompositorNodeTree")
    group.interface.new_socket("Depth", in_out="INPUT", socket_type="NodeSocketFloat")
    inputs = group.nodes.new("NodeGroupInput")
    node = compat.new_file_output(group, "//grp/", "sub/g_####", "OPEN_EXR", [("FLOAT", "Z")])
    node.format.color_depth = "16"
    group.links.new(inputs.outputs[0], node.inputs[0])
    holder = tree.nodes.new("CompositorNodeGroup")
    holder.node_tree = group
    layers = next(n for n in tree.nodes if n.bl_idname == "CompositorNodeRLayers")
    tree.links.new(layers.outputs["Depth"], holder.inputs[0])


#: File Output nodes of ``file-output-forms``: (folder, file name, format, items), each a
#: way artists name the files (no ``#``; ``#`` in the file name, the folder or one item; an
#: item's own sub-path; no file name; a multilayer EXR with and without ``#``; two ``#`` runs)
FILE_OUTPUT_FORMS = (
    ("//passes/", "pass_", "OPEN_EXR", ("depth", "normal")),
    ("//hash/", "pass_##_x", "OPEN_EXR", ("depth", "normal")),
    ("//folder_###/", "pass_", "OPEN_EXR", ("depth", "normal")),
    ("//item/", "pass_", "OPEN_EXR", ("de###pth", "normal")),
    ("//subpath/", "pass_", "OPEN_EXR", ("sub/depth_", "normal")),
    ("//noname/", "", "PNG", ("depth", "normal")),
    ("//multi/", "layers_", "OPEN_EXR_MULTILAYER", ("depth", "normal")),
    ("//multi_hash/", "a_##_b_###", "OPEN_EXR_MULTILAYER", ("depth", "normal")),
)


def _file_output_forms(scene: Any) -> None:
    """A File Output node per naming form of :data:`FILE_OUTPUT_FORMS`, each writing the
    Depth pass (first item) and the Normal pass (second), and the image to the Composite
    output."""
    layer = scene.view_layers[0]
    layer.use_pass_z = layer.use_pass_normal = True
    tree = _compositor_tree(scene)
    layers = tree.nodes.new("CompositorNodeRLayers")
    tree.links.new(layers.outputs["Image"], compat.output_socket(tree))
    for folder, name, file_format, items in FILE_OUTPUT_FORMS:
        node = compat.new_file_output(tree, folder, name, file_format,
                                      [("FLOAT", items[0]), ("VECTOR", items[1])])
        if file_format == "PNG":
            node.format.color_mode = "RGB"
        tree.links.new(layers.outputs["Depth"], node.inputs[0])
        tree.links.new(layers.outputs["Normal"], node.inputs[1])
    scene.render.use_compositing = True


def _stamp(scene: Any) -> None:
    """Burn the frame, the scene's name and a note into the image (and nothing that changes
    from one run to the next, like the date or the render time)."""
    render = scene.render
    for prop in render.bl_rna.properties:
        if prop.identifier.startswith("use_stamp_"):
            setattr(render, prop.identifier, False)
    render.use_stamp = True
    render.use_stamp_frame = render.use_stamp_scene = render.use_stamp_note = True
    render.stamp_note_text = "renderfarm note"
    render.stamp_font_size = 8


def _sound(scene: Any) -> None:
    """A second of a 440 Hz tone (packed into the file) as a sound strip from frame 1, and
    AAC audio for a video output: what a video's audio track is made of."""
    import math
    import struct
    import tempfile
    import wave

    import bpy

    rate = 48000
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/tone.wav"
        with wave.open(path, "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(rate)
            handle.writeframes(b"".join(
                struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                for i in range(rate)))
        editor = scene.sequence_editor_create()
        strip = compat.top_strips(editor).new_sound("tone", path, 1, 1)
        strip.sound.pack()
    bpy.data.sounds[strip.sound.name].filepath = "//tone.wav"
    scene.render.ffmpeg.audio_codec = "AAC"


_EXTRAS = {"scene-time": _scene_time, "file-output": _file_output, "stamp": _stamp,
           "sound": _sound, "file-output-nested": _file_output_nested,
           "file-output-forms": _file_output_forms}


def _all_passes(scene: object) -> None:
    """Every pass of the first view layer, AOVs written by every material, light groups, and a
    second view layer with a few passes."""
    import bpy

    layer = scene.view_layers[0]  # type: ignore[attr-defined]
    for prop in layer.bl_rna.properties:
        if prop.identifier.startswith("use_pass_") and prop.identifier not in (
                "use_pass_cryptomatte_accurate", "use_pass_grease_pencil"):
            setattr(layer, prop.identifier, True)
    for prop in ("use_pass_volume_direct", "use_pass_volume_indirect",
                 "use_pass_shadow_catcher"):
        setattr(layer.cycles, prop, True)
    colour = layer.aovs.add()
    colour.name, colour.type = "tint", "COLOR"
    value = layer.aovs.add()
    value.name, value.type = "height", "VALUE"
    for mat in bpy.data.materials:
        nodes, links = mat.node_tree.nodes, mat.node_tree.links
        geometry = nodes.new("ShaderNodeNewGeometry")
        for name, socket in (("tint", "Color"), ("height", "Value")):
            out = nodes.new("ShaderNodeOutputAOV")
            out.aov_name = name
            links.new(geometry.outputs["Normal" if name == "tint" else "Backfacing"],
                      out.inputs[socket])
    for name in ("key", "sky"):
        layer.lightgroups.add(name=name)
    scene.objects["Key"].lightgroup = "key"  # type: ignore[attr-defined]
    scene.world.lightgroup = "sky"  # type: ignore[attr-defined]
    second = scene.view_layers.new("Second")  # type: ignore[attr-defined]
    second.use_pass_z = second.use_pass_normal = second.use_pass_cryptomatte_object = True


def _compositor(scene: object) -> None:
    """Render Layers -> Glare -> Blur -> Lens Distortion -> multiplied by a depth falloff."""
    layer = scene.view_layers[0]  # type: ignore[attr-defined]
    layer.use_pass_z = True
    tree = _compositor_tree(scene)
    nodes, links = tree.nodes, tree.links
    layers = nodes.new("CompositorNodeRLayers")
    glare = nodes.new("CompositorNodeGlare")
    blur = nodes.new("CompositorNodeBlur")
    if "Size" in blur.inputs:
        size = blur.inputs["Size"]
        size.default_value = (4, 4) if hasattr(size.default_value, "__len__") else 4
    lens = nodes.new("CompositorNodeLensdist")
    for name, value in (("Distortion", 0.05), ("Dispersion", 0.02)):
        if name in lens.inputs:
            lens.inputs[name].default_value = value
    falloff = compat.math_node(tree, "MULTIPLY")
    falloff.inputs[1].default_value = 0.1
    _mix, a, b, result = compat.mix_node(tree, "MULTIPLY", 0.5)
    links.new(layers.outputs["Image"], glare.inputs["Image"])
    links.new(glare.outputs["Image"], blur.inputs["Image"])
    links.new(blur.outputs["Image"], lens.inputs["Image"])
    links.new(layers.outputs["Depth"], falloff.inputs[0])
    links.new(lens.outputs["Image"], a)
    links.new(falloff.outputs[0], b)
    links.new(result, compat.output_socket(tree))
    scene.render.use_compositing = True  # type: ignore[attr-defined]


def output_settings(scene: Any, output: str | None) -> None:
    """Set the scene's output format from ``FORMAT[,DEPTH[,MODE]]`` (None: 32-bit
    multilayer EXR)."""
    settings: Any = scene.render.image_settings
    if output is None:
        compat.set_file_format(settings, "OPEN_EXR_MULTILAYER")
        settings.color_depth = "32"
    else:
        parts = output.split(",")
        compat.set_file_format(settings, parts[0])
        if len(parts) > 1:
            settings.color_depth = parts[1]
        if len(parts) > 2:
            settings.color_mode = parts[2]


def _texture_image(path: str, name: str, colour: tuple[float, float, float]) -> None:
    """Write an 8x8 PNG checker of ``colour`` and black to ``path``."""
    import os

    import bpy

    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = bpy.data.images.new(name, 8, 8)
    pixels = []
    for y in range(8):
        for x in range(8):
            on = (x + y) % 2 == 0
            pixels += [*(colour if on else (0.05, 0.05, 0.05)), 1.0]
    image.pixels = pixels
    image.filepath_raw = path
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)


def _image_material(name: str, image_path: str, sequence: int = 0) -> object:
    """A material whose colour is an image texture (an image sequence of ``sequence`` frames
    when it is not 0), emission-lit so the texture shows at a few samples."""
    import bpy

    material = bpy.data.materials.new(name)
    tree = material.node_tree
    if tree is None:  # Blender < 5 needs nodes switched on
        material.use_nodes = True
        tree = material.node_tree
    tree.nodes.clear()
    output = tree.nodes.new("ShaderNodeOutputMaterial")
    emission = tree.nodes.new("ShaderNodeEmission")
    texture = tree.nodes.new("ShaderNodeTexImage")
    texture.interpolation = "Closest"
    image = bpy.data.images.load(image_path)
    if sequence:
        image.source = "SEQUENCE"
        texture.image_user.frame_duration = sequence
        texture.image_user.frame_start = 1
        texture.image_user.use_auto_refresh = True
    texture.image = image
    tree.links.new(texture.outputs["Color"], emission.inputs["Color"])
    tree.links.new(emission.outputs["Emission"], output.inputs["Surface"])
    return material


def build_project(folder: str, width: int = 64, height: int = 48, samples: int = 4) -> str:
    """A small project folder as artists have them; returns the shot's path.

    ``shot.blend`` has a floor textured by an image sequence (``//textures/seq/seq_0001.png``
    .. ``seq_0004.png``, one colour per frame) and links the object ``Prop`` from
    ``//lib/props.blend``, whose material reads the library's own texture
    (``//tex/props.png``, relative to the library). Without any of these files the frames
    differ visibly.
    """
    import os

    import bpy

    folder = os.path.abspath(folder)
    lib_path = os.path.join(folder, "lib", "props.blend")
    os.makedirs(os.path.dirname(lib_path), exist_ok=True)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    _texture_image(os.path.join(folder, "lib", "tex", "props.png"), "props", (0.9, 0.3, 0.1))
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.8, location=(0.0, 0.0, 0.8))
    prop = bpy.context.active_object
    prop.name = "Prop"
    prop.data.materials.append(_image_material(
        "PropMaterial", os.path.join(folder, "lib", "tex", "props.png")))
    bpy.ops.wm.save_as_mainfile(filepath=lib_path, relative_remap=True)
    bpy.ops.file.make_paths_relative()
    bpy.ops.wm.save_as_mainfile(filepath=lib_path)

    bpy.ops.wm.read_factory_settings(use_empty=True)
    colours = [(0.1, 0.6, 0.9), (0.2, 0.9, 0.2), (0.9, 0.9, 0.2), (0.9, 0.2, 0.8)]
    for number, colour in enumerate(colours, start=1):
        _texture_image(os.path.join(folder, "textures", "seq", f"seq_{number:04d}.png"),
                       f"seq{number}", colour)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.seed = 3
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.frame_start, scene.frame_end = 1, 2
    bpy.ops.mesh.primitive_plane_add(size=8.0)
    floor = bpy.context.active_object
    floor.data.materials.append(_image_material(
        "Floor", os.path.join(folder, "textures", "seq", "seq_0001.png"), sequence=4))
    with bpy.data.libraries.load(lib_path, link=True, relative=True) as (source, target):
        target.objects = ["Prop"]
    for obj in target.objects:
        scene.collection.objects.link(obj)
    bpy.ops.object.camera_add(location=(0.0, -6.0, 4.0), rotation=(math.radians(55), 0, 0))
    scene.camera = bpy.context.active_object
    bpy.ops.object.light_add(type="SUN", location=(0, 0, 5))
    shot = os.path.join(folder, "shot.blend")
    bpy.ops.wm.save_as_mainfile(filepath=shot, relative_remap=True)
    bpy.ops.file.make_paths_relative()
    output_settings(scene, None)
    bpy.ops.wm.save_as_mainfile(filepath=shot, compress=True)
    for backup in (shot + "1", lib_path + "1"):  # Blender's .blend1 backups
        if os.path.exists(backup):
            os.remove(backup)
    return shot


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of this module (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m renderfarm.blender.scenes")
    parser.add_argument("path")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--percentage", type=int, default=100)
    parser.add_argument("--detail", type=int, default=0)
    parser.add_argument("--engine", default="CYCLES")
    parser.add_argument("--adaptive", action="store_true")
    parser.add_argument("--denoise", action="store_true")
    parser.add_argument("--passes", action="store_true")
    parser.add_argument("--border", help="min_x,min_y,max_x,max_y")
    parser.add_argument("--no-crop", action="store_true")
    parser.add_argument("--no-camera", action="store_true")
    parser.add_argument("--kind", choices=("demo", "cube", "project"), default="demo",
                        help="'project': PATH is a folder for a shot with an image sequence "
                        "and a linked library with its own texture")
    parser.add_argument("--motion-blur", action="store_true")
    parser.add_argument("--all-passes", action="store_true")
    parser.add_argument("--compositor", action="store_true")
    parser.add_argument("--filter-width", type=float)
    parser.add_argument("--output", help="the scene's own output: FORMAT[,DEPTH[,MODE]]")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="scene.PATH=VALUE or data.PATH=VALUE, set last (repeatable)")
    parser.add_argument("--extra", action="append", default=[],
                        help="scene-time, file-output or stamp (repeatable)")
    args = parser.parse_args(argv)
    if args.kind == "project":  # PATH is a folder
        build_project(args.path, args.width, args.height, args.samples)
        return 0
    border = tuple(float(v) for v in args.border.split(",")) if args.border else None
    build_scene(args.path, SceneRecipe(
        width=args.width, height=args.height, samples=args.samples, frames=args.frames,
        engine=args.engine, adaptive=args.adaptive, denoise=args.denoise, passes=args.passes,
        border=border, crop=not args.no_crop, camera=not args.no_camera,  # type: ignore[arg-type]
        percentage=args.percentage, detail=args.detail, kind=args.kind,
        motion_blur=args.motion_blur, all_passes=args.all_passes,
        compositor=args.compositor, filter_width=args.filter_width, output=args.output,
        settings=tuple(args.set), extras=tuple(args.extra)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
