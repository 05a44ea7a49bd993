"""Every difference between the Python APIs of the Blenders the farm runs: 4.2 LTS to 5.x.

The rest of :mod:`renderfarm.blender` calls these functions where an API differs and stays
written for one API. Each function decides by what the running ``bpy`` has (an attribute,
a property), not by a version number, so a Blender between two tested ones behaves like the
nearest of them. Measured on 4.2.23 LTS, 4.5.15 LTS and 5.0.1:

* the compositor: 5.0 has ``scene.compositing_node_group``, a node group (an ID of its own)
  whose Group Output gives the image; 4.x has ``scene.node_tree``, owned by the scene
  (copied and removed with it), used only while ``scene.use_nodes`` is on, whose Composite
  node gives the image. 4.2's compositor takes no shader nodes (Mix, Math): it has its own.
* image format settings: 5.0 picks a ``media_type`` (image, multilayer image, video) before
  the ``file_format``; 4.x has no media type.
* File Output nodes: 5.0 has ``directory``, ``file_name`` and ``file_output_items``; a still
  render of 5.0 names files without a frame unless the name has ``#``. 4.x has
  ``base_path`` and ``file_slots`` (one file each; the slot's path is joined to the base
  path as a folder) or, for a multilayer EXR, ``layer_slots`` (the base path is the file);
  4.x always numbers the files by frame.
* the sequencer: ``strips``/``strips_all`` (4.5 and later) vs ``sequences``/``sequences_all``.
* Cycles' sample subset (``use_sample_subset``, ``sample_subset_length``): 4.5 and later;
  4.2 has only ``sample_offset``, so it cannot render a range of a frame's samples.
* the working colour space (``bpy.data.colorspace.working_space``): 5.0; 4.x has only the
  OpenColorIO configuration's scene-linear role.
"""

from __future__ import annotations

import os
from typing import Any

#: media types of 5.0's image format settings, by file format (the rest are IMAGE)
_MEDIA_TYPES = {"OPEN_EXR_MULTILAYER": "MULTI_LAYER_IMAGE", "FFMPEG": "VIDEO"}

#: the node that gives the compositor's image, by API
_OUTPUT_NODES = ("NodeGroupOutput", "CompositorNodeComposite")


def version() -> tuple[int, int, int]:
    """The running Blender's version."""
    import bpy

    return tuple(bpy.app.version)  # type: ignore[return-value]


# -- the compositor ----------------------------------------------------------------------------
def _group_api(scene: Any) -> bool:
    """Whether the scene's compositor is a node group of its own (5.0 and later)."""
    return hasattr(scene, "compositing_node_group")


def compositor_tree(scene: Any, create: bool = False, name: str = "Compositor") -> Any:
    """The scene's compositor node tree, or None when it has none (4.x: none while
    ``use_nodes`` is off). ``create``: give the scene a new, empty one (5.0: a node group
    called ``name`` with an Image output; 4.x: its own tree, cleared) and return it."""
    if create:
        if _group_api(scene):
            import bpy

            tree = bpy.data.node_groups.new(name, "CompositorNodeTree")
            tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
            scene.compositing_node_group = tree
            return tree
        scene.use_nodes = True
        tree = scene.node_tree
        tree.nodes.clear()
        return tree
    if _group_api(scene):
        return scene.compositing_node_group
    return scene.node_tree if scene.use_nodes else None


def copy_compositor_tree(original: Any, copy: Any) -> Any:
    """Give ``copy`` (a ``Scene.copy()`` of ``original``) a compositor tree of its own that
    can be changed without touching the original's, and return it (remove it with
    :func:`remove_compositor_tree`)."""
    if _group_api(copy):
        tree = original.compositing_node_group.copy()
        copy.compositing_node_group = tree
        return tree
    copy.use_nodes = True
    return copy.node_tree  # 4.x: the scene's copy made one (it goes with the scene)


def remove_compositor_tree(tree: Any) -> None:
    """Remove a tree :func:`compositor_tree` (``create``) or :func:`copy_compositor_tree`
    made, once its scene is removed (4.x: it went with the scene)."""
    import bpy

    if tree is None:
        return
    try:
        if getattr(tree, "is_embedded_data", False):
            return
    except ReferenceError:  # gone with its scene
        return
    if tree.name in bpy.data.node_groups and bpy.data.node_groups[tree.name] == tree:
        bpy.data.node_groups.remove(tree)


def output_socket(tree: Any) -> Any:
    """The input socket of a new node that gives ``tree``'s image (5.0: Group Output;
    4.x: Composite)."""
    if _is_group_tree(tree):
        return tree.nodes.new("NodeGroupOutput").inputs[0]
    return tree.nodes.new("CompositorNodeComposite").inputs["Image"]


def _is_group_tree(tree: Any) -> bool:
    """Whether ``tree`` is a node group (5.0 compositors, node groups) rather than a
    scene's own tree (4.x)."""
    return not getattr(tree, "is_embedded_data", False)


def is_output_node(node: Any) -> bool:
    """Whether ``node`` gives a compositor its image."""
    return node.bl_idname in _OUTPUT_NODES


def mix_node(tree: Any, blend: str, factor: float) -> tuple[Any, Any, Any, Any]:
    """A colour Mix node of ``blend`` (``MULTIPLY``) in a compositor tree: ``(node, input A,
    input B, output)`` (shader Mix where the compositor takes it, else its own MixRGB)."""
    nodes = tree.nodes
    try:
        mix = nodes.new("ShaderNodeMix")
    except RuntimeError:  # 4.2: the compositor's own
        mix = nodes.new("CompositorNodeMixRGB")
        mix.blend_type = blend
        mix.inputs["Fac"].default_value = factor
        return mix, mix.inputs[1], mix.inputs[2], mix.outputs["Image"]
    mix.data_type = "RGBA"
    mix.blend_type = blend
    mix.inputs["Factor"].default_value = factor
    return mix, mix.inputs["A"], mix.inputs["B"], mix.outputs["Result"]


def math_node(tree: Any, operation: str) -> Any:
    """A Math node of ``operation`` in a compositor tree (shader Math where the compositor
    takes it, else its own)."""
    try:
        node = tree.nodes.new("ShaderNodeMath")
    except RuntimeError:  # 4.2
        node = tree.nodes.new("CompositorNodeMath")
    node.operation = operation
    return node


# -- image format settings ---------------------------------------------------------------------
def set_file_format(settings: Any, file_format: str) -> None:
    """Pick ``file_format`` in ``settings`` (``ImageFormatSettings``) as Blender's Output
    properties pick it: its media type first where Blender has them."""
    if hasattr(settings, "media_type"):
        settings.media_type = _MEDIA_TYPES.get(file_format, "IMAGE")
    settings.file_format = file_format


def is_multilayer(settings: Any) -> bool:
    """Whether ``settings`` write one multilayer file for all inputs."""
    if hasattr(settings, "media_type"):
        return bool(settings.media_type == "MULTI_LAYER_IMAGE")
    return bool(settings.file_format == "OPEN_EXR_MULTILAYER")


# -- File Output nodes -------------------------------------------------------------------------
def _items_api(node: Any) -> bool:
    return hasattr(node, "file_output_items")


def file_output_location(node: Any) -> tuple[str, str]:
    """``(directory, file name)`` of a File Output node as 5.0 has them: files land in the
    directory, named by the file name followed by each item's name (one file per item) or
    by the file name alone (multilayer). 4.x: a single-file node's base path is the folder
    (its slots' paths name the files); a multilayer node's base path is the file."""
    if _items_api(node):
        return node.directory, node.file_name
    if is_multilayer(node.format):
        head, tail = os.path.split(node.base_path)
        return (head + "/" if head else ""), tail
    return node.base_path, ""


def set_file_output_location(node: Any, directory: str, file_name: str) -> None:
    """Set what :func:`file_output_location` reads (4.x: a single-file node has no file name
    of its own: it goes before each slot's path)."""
    if _items_api(node):
        node.directory, node.file_name = directory, file_name
        return
    if is_multilayer(node.format):
        node.base_path = os.path.join(directory, file_name) if directory else file_name
        return
    node.base_path = directory
    if file_name:
        for slot in node.file_slots:
            slot.path = file_name + slot.path


def new_file_output(tree: Any, directory: str, file_name: str, file_format: str,
                    items: list[tuple[str, str]]) -> Any:
    """A File Output node in ``tree`` writing ``file_format`` to ``directory`` with
    ``file_name``, one input per ``(socket type, name)`` item (``FLOAT``, ``VECTOR``,
    ``RGBA``; 4.x inputs take any type)."""
    node = tree.nodes.new("CompositorNodeOutputFile")
    set_file_format(node.format, file_format)
    if _items_api(node):
        node.file_output_items.clear()
        for socket_type, name in items:
            node.file_output_items.new(socket_type, name)
    elif is_multilayer(node.format):
        node.layer_slots.clear()
        for _type, name in items:
            node.layer_slots.new(name)
    else:
        node.file_slots.clear()
        for _type, name in items:
            node.file_slots.new(name)
    set_file_output_location(node, directory, file_name)
    return node


def number_frames(node: Any) -> None:
    """Make a File Output node name its files as Render Animation does when the farm renders
    one frame as a still (see :func:`renderfarm.blender.output.number_frames`): 4.x does so
    already; 5.0 needs ``#`` where a name has none."""
    if not _items_api(node):
        return
    if is_multilayer(node.format):  # one file for every input
        if "#" not in _last_part(node.file_name):
            node.file_name += "####"
        return
    for item in node.file_output_items:
        if "#" not in _last_part(node.file_name + item.name):
            item.name += "####"


def _last_part(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


# -- the sequencer -----------------------------------------------------------------------------
def all_strips(editor: Any) -> Any:
    """Every strip of a sequence editor (in meta strips too); none without an editor."""
    if editor is None:
        return ()
    strips = getattr(editor, "strips_all", None)
    return strips if strips is not None else editor.sequences_all


def top_strips(editor: Any) -> Any:
    """The editor's top-level strip collection (``new_sound`` and friends)."""
    strips = getattr(editor, "strips", None)
    return strips if strips is not None else editor.sequences


# -- Cycles ------------------------------------------------------------------------------------
def has_sample_subset(cycles: Any) -> bool:
    """Whether Cycles can render a subset of a frame's samples (4.5 and later)."""
    return hasattr(cycles, "use_sample_subset")


def sample_subset(cycles: Any) -> tuple[bool, int, int]:
    """``(use_sample_subset, sample_offset, sample_subset_length)`` (4.2: off)."""
    if not has_sample_subset(cycles):
        return False, int(cycles.sample_offset), int(cycles.samples)
    return (bool(cycles.use_sample_subset), int(cycles.sample_offset),
            int(cycles.sample_subset_length))


def set_sample_subset(cycles: Any, subset: tuple[bool, int, int]) -> None:
    """Set what :func:`sample_subset` reads.

    Raises:
        ValueError: a subset is asked of a Cycles that has none.
    """
    use, offset, length = subset
    if not has_sample_subset(cycles):
        if use:
            raise ValueError("this Blender's Cycles cannot render a subset of a frame's "
                             "samples (Blender 4.5 or later can)")
        cycles.sample_offset = offset
        return
    cycles.use_sample_subset = use
    cycles.sample_offset, cycles.sample_subset_length = offset, length


# -- colour ------------------------------------------------------------------------------------
def working_space() -> str | None:
    """The file's working colour space (5.0), or None where Blender has only the
    configuration's scene-linear role (4.x: float images load in it already)."""
    import bpy

    colorspace = getattr(bpy.data, "colorspace", None)
    return getattr(colorspace, "working_space", None) or None
