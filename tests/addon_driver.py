"""Drive the "Render on Network" extension inside real bpy, as an artist's session would.

``python addon_driver.py EXTENSION.zip SETTINGS.json RESULT.json``

Runs with ``BLENDER_USER_RESOURCES`` pointing at an empty folder: installs and enables the
extension from its zip (Blender's own extension installer, wheels included), sets the
preferences, then plays the scenarios and writes what it saw to RESULT.json: states and
progress as the timer applied them, the preview image's pixels before the final frame
replaced it (as .npy), the reports of failures. The test asserts on that.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import bpy
import numpy as np

PACKAGE = "bl_ext.user_default.renderfarm"


def _display(scene: Any) -> dict[str, Any]:
    from renderfarm.blender.inspect import display_of

    return display_of(scene)


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def set_keys(prefs: Any, settings: dict[str, Any], client: str) -> None:
    from renderfarm.server.transport import read_key

    prefs.address = settings["address"]
    prefs.server_key = read_key(settings["server_key"]).public
    pair = read_key(settings[client], secret=True)
    prefs.client_public, prefs.client_secret = pair.public, pair.secret


def follow(scene: Any, on_message: Any = None, timeout: float = 240) -> list[list[Any]]:
    """Run the add-on's timer function as Blender runs it (``bpy.app.timers`` does not tick
    in a background session): call the function the add-on registered until it returns
    None, sleeping the interval it asks for. ``on_message(message, work)`` sees each message
    as the timer takes it, before it is applied. Returns the states the artist saw, one row
    per change (after each message and each run of the timer)."""
    live = sys.modules[PACKAGE + ".live"]
    work = sys.modules[PACKAGE + ".work"]
    submission = live.submission_of(scene)
    assert submission is not None, "no submission is followed"
    assert bpy.app.timers.is_registered(live.drain), "the add-on registered no timer"
    seen: list[list[Any]] = []
    settings = scene.renderfarm

    def record() -> None:
        row = [settings.state, round(settings.progress, 4), settings.tasks_done,
               settings.frames_done, round(settings.elapsed, 2), round(settings.eta, 2)]
        if not seen or seen[-1][:4] != row[:4]:
            seen.append(row)

    messages = submission.messages
    take = messages.get_nowait

    def tapped() -> Any:  # the timer takes each message through this
        live.tick(scene)  # as a redraw between two messages would show the message before
        record()
        message = take()
        if on_message is not None:
            on_message(message, work)
        return message

    messages.get_nowait = tapped
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            interval = live.drain()  # what Blender calls every interval
            record()
            if interval is None:  # the timer is done: Blender unregisters it
                if bpy.app.timers.is_registered(live.drain):
                    bpy.app.timers.unregister(live.drain)
                break
            time.sleep(min(interval, 0.05))
        else:
            raise AssertionError(f"the timer still followed the job after {timeout} s")
    finally:
        del messages.get_nowait
    return seen


def scenario_render(settings: dict[str, Any], out: Path) -> dict[str, Any]:
    artist = settings["artist_file"]
    before = sha(artist)
    bpy.ops.wm.open_mainfile(filepath=artist)
    scene = bpy.context.scene
    scene.render.resolution_x = 80  # an unsaved edit: the farm must render it
    texture = bpy.data.images.new("texture", 8, 8)  # an external file the scene depends on
    texture.filepath_raw = str(out / "texture.png")
    texture.file_format = "PNG"
    texture.save()
    texture.use_fake_user = True
    paint = bpy.data.images.new("paint", 4, 4)  # painted, never saved: only Blender has it
    paint.pixels = [0.25, 0.5, 0.75, 1.0] * 16
    paint.use_fake_user = True
    assert bpy.data.is_dirty
    rf = scene.renderfarm
    rf.split, rf.tiles_x, rf.tiles_y, rf.frames = "TILES", 2, 2, "2"
    rf.output_dir = str(out / "frames") + "/"
    rf.priority = 3
    # the default format is the scene's own output: Render Animation's names and settings
    scene.render.filepath = "//render/artist_####"
    scene.render.image_settings.media_type = "MULTI_LAYER_IMAGE"
    scene.render.image_settings.file_format = "OPEN_EXR_MULTILAYER"
    scene.render.image_settings.color_depth = "16"
    started = time.monotonic()
    result = bpy.ops.renderfarm.submit()
    submitted = {"result": sorted(result), "state": rf.state, "job_id": rf.job_id,
                 "seconds": time.monotonic() - started}
    snapshot: dict[str, Any] = {}

    def on_message(message: Any, work: Any) -> None:
        if isinstance(message, work.TilePreview):
            snapshot["tiles"] = snapshot.get("tiles", 0) + 1
        if isinstance(message, work.Finished):
            snapshot["finished"] = [message.state, message.message]
            image = bpy.data.images.get("Render on Network")  # None: no tile was painted
            if image is not None:
                pixels = np.empty(len(image.pixels), dtype=np.float32)
                image.pixels.foreach_get(pixels)
                np.save(out / "preview.npy", pixels.reshape(image.size[1], image.size[0], 4))
                snapshot["preview_size"] = list(image.size)

    seen = follow(scene, on_message)
    final = bpy.data.images["Render on Network"]
    return {**submitted, "seen": seen, **snapshot, "final_state": rf.state,
            "message": rf.message, "last_output": rf.last_output, "report": rf.report,
            "final_image": bpy.path.abspath(final.filepath), "final_source": final.source,
            "artist_unchanged": sha(artist) == before, "still_dirty": bpy.data.is_dirty,
            "filepath": bpy.data.filepath, "display": _display(scene)}


def scenario_invoke(settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """The UI's path: invoke returns at once; packing and upload run on a thread."""
    bpy.ops.wm.open_mainfile(filepath=settings["artist_file"])
    rf = bpy.context.scene.renderfarm
    rf.split, rf.frames, rf.output_dir = "AUTO", "1", str(out / "invoked") + "/"
    started = time.monotonic()
    result = bpy.ops.renderfarm.submit(threaded=True)  # what invoke (the button) runs
    returned = {"result": sorted(result), "seconds": time.monotonic() - started,
                "state_on_return": rf.state, "job_on_return": rf.job_id}
    seen = follow(bpy.context.scene)
    return {**returned, "seen": seen, "final_state": rf.state, "last_output": rf.last_output}


def scenario_cancel(settings: dict[str, Any], out: Path) -> dict[str, Any]:
    bpy.ops.wm.open_mainfile(filepath=settings["long_file"])
    scene = bpy.context.scene
    rf = scene.renderfarm
    rf.split, rf.frames, rf.output_dir = "FRAMES", "1-40", str(out / "cancelled") + "/"
    assert bpy.ops.renderfarm.submit() == {"FINISHED"}
    job_id = rf.job_id
    cancelled: dict[str, Any] = {}

    def on_message(message: Any, work: Any) -> None:
        if (not cancelled and isinstance(message, work.JobUpdate)
                and message.event.get("kind") == "task_done"):
            cancelled["at_tasks"] = message.event.get("tasks_done")
            cancelled["result"] = sorted(bpy.ops.renderfarm.cancel())

    seen = follow(scene, on_message)
    return {"job_id": job_id, "seen": seen, **cancelled, "final_state": rf.state,
            "message": rf.message}


def scenario_refused(settings: dict[str, Any], prefs: Any) -> dict[str, Any]:
    set_keys(prefs, settings, "stranger_key")
    prefs.timeout = 5.0
    rf = bpy.context.scene.renderfarm
    try:
        bpy.ops.renderfarm.submit()
        error = None
    except RuntimeError as exc:
        error = str(exc)
    result = {"error": error, "state": rf.state, "message": rf.message}
    set_keys(prefs, settings, "client_key")
    prefs.timeout = 15.0
    return result


def scenario_offline(prefs: Any) -> dict[str, Any]:
    address = prefs.address
    prefs.address = "tcp://192.0.2.10:5555"
    try:
        bpy.ops.renderfarm.submit()
        error = None
    except RuntimeError as exc:
        error = str(exc)
    prefs.address = address
    return {"online_access": bpy.app.online_access, "error": error}


def scenario_packed(settings: dict[str, Any], job_id: str, out: Path) -> dict[str, Any]:
    """What the farm received for the first job: a bundle of the copy (the unsaved image
    packed in it) and the texture it reads, stored by content hash."""
    import shutil
    import sqlite3

    state = Path(settings["state"])
    with sqlite3.connect(state / "farm.db") as db:
        spec = json.loads(db.execute("SELECT spec FROM jobs WHERE id = ?",
                                     (job_id,)).fetchone()[0])
    files = {f["path"]: f["sha256"] for f in spec["bundle"]["files"]}
    root = spec["bundle"]["root"]
    received = out / "received.blend"
    shutil.copyfile(state / "storage" / "files" / files[root], received)
    bpy.ops.wm.open_mainfile(filepath=str(received), load_ui=False, use_scripts=False)
    paint = bpy.data.images.get("paint")
    texture = [sha for path, sha in files.items() if path.endswith("/texture.png")]
    return {"name": root, "paint_packed": bool(paint and paint.packed_file),
            "texture_in_bundle": texture == [sha(out / "texture.png")],
            "blender": spec.get("blender"), "own": ".".join(map(str, bpy.app.version)),
            "resolution_x": bpy.context.scene.render.resolution_x}


def scenario_keys(prefs: Any) -> dict[str, Any]:
    """The preferences' button that creates a key pair."""
    before = prefs.client_public
    result = bpy.ops.renderfarm.create_keys()
    return {"result": sorted(result), "public": prefs.client_public,
            "secret_length": len(prefs.client_secret), "changed": prefs.client_public != before}


def scenario_new_file(out: Path) -> dict[str, Any]:
    bpy.ops.wm.read_homefile(use_empty=False)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 2
    scene.render.resolution_x, scene.render.resolution_y = 48, 32
    scene.render.resolution_percentage = 100
    rf = scene.renderfarm
    rf.frames, rf.output_dir, rf.file_format = "1", str(out / "new") + "/", "PNG"
    result = bpy.ops.renderfarm.submit(wait=True)
    return {"result": sorted(result), "state": rf.state, "last_output": rf.last_output,
            "filepath": bpy.data.filepath}


def scenario_file_output(settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """Compositor File Output nodes writing ``//passes/beauty_####`` and ``//passes/plain_``
    (no ``#``: Blender appends the frame): their files come back into the artist's project,
    where Blender writes them, one per frame; the frames into the output folder."""
    bpy.ops.wm.open_mainfile(filepath=settings["artist_file"])
    scene = bpy.context.scene
    tree = bpy.data.node_groups.new("file output", "CompositorNodeTree")
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    layers = tree.nodes.new("CompositorNodeRLayers")
    output = tree.nodes.new("NodeGroupOutput")
    tree.links.new(layers.outputs["Image"], output.inputs[0])
    for name in ("beauty_####", "plain_"):
        node = tree.nodes.new("CompositorNodeOutputFile")
        node.directory, node.file_name = "//passes/", name
        node.format.media_type, node.format.file_format = "IMAGE", "PNG"
        node.file_output_items.clear()
        node.file_output_items.new("RGBA", "Image")
        tree.links.new(layers.outputs["Image"], node.inputs[0])
    scene.compositing_node_group = tree
    scene.render.use_compositing = True
    rf = scene.renderfarm
    rf.split, rf.tiles_x, rf.tiles_y, rf.frames = "TILES", 2, 1, "1-2"
    rf.output_dir, rf.file_format = str(out / "file-output") + "/", "PNG"
    result = bpy.ops.renderfarm.submit()
    follow(scene)
    project = Path(settings["artist_file"]).parent
    return {"result": sorted(result), "final_state": rf.state, "message": rf.message,
            "passes": sorted(p.name for p in (project / "passes").glob("*")),
            "frames": sorted(p.name for p in (out / "file-output").glob("*"))}


def main(argv: list[str]) -> int:
    zip_path, settings_path, result_path = argv
    settings = json.loads(Path(settings_path).read_text())
    out = Path(result_path).parent
    installed = bpy.ops.extensions.package_install_files(
        filepath=zip_path, repo="user_default", enable_on_install=True)
    prefs = bpy.context.preferences.addons[PACKAGE].preferences
    set_keys(prefs, settings, "client_key")
    results: dict[str, Any] = {"installed": sorted(installed),
                               "registered": hasattr(bpy.types.Scene, "renderfarm")}
    results["render"] = scenario_render(settings, out)
    if settings.get("only_render"):  # the live tiles and the frame, on another farm
        Path(result_path).write_text(json.dumps(results, indent=1))
        return 0
    results["invoke"] = scenario_invoke(settings, out)
    results["cancel"] = scenario_cancel(settings, out)
    results["refused"] = scenario_refused(settings, prefs)
    results["offline"] = scenario_offline(prefs)
    results["new_file"] = scenario_new_file(out)
    results["file_output"] = scenario_file_output(settings, out)
    results["packed"] = scenario_packed(settings, results["render"]["job_id"], out)
    results["keys"] = scenario_keys(prefs)
    Path(result_path).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
