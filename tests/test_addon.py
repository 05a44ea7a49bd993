"""The Blender extension for real: built into its zip, installed by Blender's own installer in
a bpy process, driving a real `renderfarm serve` (with keys) on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from renderfarm.merge import read_combined, read_layers
from renderfarm.server.preview import to_rgba8
from tests.conftest import HERE, ServerProcess

pytestmark = [pytest.mark.blender, pytest.mark.ray]


@pytest.fixture(scope="module")
def extension(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The extension zip, built by the repository's build script."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, str(HERE.parent / "blender_addon" /
                                               "build_extension.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def drive_addon(extension: Path, server: ServerProcess, farm_keys: Path, make_scene,
                folder: Path, only_render: bool = False) -> dict[str, Any]:
    """Everything the driver saw in one Blender session with the add-on (see
    addon_driver.py), against ``server`` (``only_render``: its Render on Network only)."""
    artist = folder / "artist's shot.blend"
    shutil.copyfile(make_scene(width=96, height=64, samples=8, frames=3), artist)
    settings = {
        "address": server.address, "server_key": str(farm_keys / "server.key"),
        "client_key": str(farm_keys / "client.key_secret"),
        "stranger_key": str(farm_keys / "stranger.key_secret"), "artist_file": str(artist),
        "long_file": str(make_scene(width=96, height=64, samples=64, frames=40)),
        "state": str(server.state), "only_render": only_render,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(folder / "blender-user")}
    proc = subprocess.run([sys.executable, str(HERE / "addon_driver.py"), str(extension),
                           str(folder / "settings.json"), str(folder / "result.json")],
                          capture_output=True, text=True, timeout=900, env=env, check=False)
    (folder / "driver.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((folder / "result.json").read_text())
    result["folder"] = folder
    result["stderr"] = proc.stderr
    return result


@pytest.fixture(scope="module")
def addon_run(extension: Path, farm_server: ServerProcess, farm_keys: Path, make_scene,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Everything the driver saw in one Blender session (see addon_driver.py)."""
    return drive_addon(extension, farm_server, farm_keys, make_scene,
                       tmp_path_factory.mktemp("addon"))


def test_extension_zip_has_manifest_wheels_and_permissions(extension: Path) -> None:
    with zipfile.ZipFile(extension) as archive:
        names = set(archive.namelist())
        manifest = tomllib.loads(archive.read("blender_manifest.toml").decode())
    assert manifest["id"] == "renderfarm" and manifest["type"] == "add-on"
    assert manifest["blender_version_min"] == "4.2.0"
    assert set(manifest["permissions"]) == {"files", "network"}
    wheels = [w.removeprefix("./") for w in manifest["wheels"]]
    assert any(w.startswith("wheels/pyzmq-") and "cp311" in w for w in wheels)
    assert any(w.startswith("wheels/renderfarm-") for w in wheels)
    assert set(wheels) <= names and "__init__.py" in names
    assert "build_extension.py" not in names
    assert manifest["platforms"] == ["linux-x64"]


def test_blenders_installer_registers_the_extension(addon_run: dict[str, Any]) -> None:
    assert addon_run["installed"] == ["FINISHED"] and addon_run["registered"]


def test_render_on_network_shows_progress_tiles_and_the_final_frame(
        addon_run: dict[str, Any]) -> None:
    run = addon_run["render"]
    assert run["result"] == ["FINISHED"] and run["state"] == "queued" and run["job_id"]
    states = [row[0] for row in run["seen"]]
    assert states[0] in ("queued", "running") and states[-1] == "done"
    progress = [row[1] for row in run["seen"]]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert len({p for p in progress if 0 < p < 1}) >= 1, run["seen"]  # seen mid-way
    elapsed = [row[4] for row in run["seen"]]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0 and elapsed[-1] < 120, run["seen"]
    etas = [row[5] for row in run["seen"] if row[0] == "running" and 0 < row[1] < 1]
    assert etas and all(eta >= 0 for eta in etas), run["seen"]
    assert run["final_state"] == "done"
    # the job's report summary is shown: its time, device time and what it cost
    summary = run["report"].splitlines()
    assert summary[0].startswith(f"job {run['job_id']} done: 1 frame(s)"), summary
    assert "device-s" in summary[1], summary
    # and a Blender report said the job ended
    assert f"Render on Network: job {run['job_id']} done, 1 frame(s) in" in \
        addon_run["stderr"]
    # the output: the artist's unsaved edit (80 px wide) was rendered, on the farm
    output = Path(run["last_output"])
    assert output.name == "artist_0002.exr" and output.is_file()  # the scene's own output
    combined, channels, linear = read_combined(output)
    assert combined.shape[:2] == (64, 80) and linear
    import OpenImageIO as oiio

    assert str(oiio.ImageInput.open(str(output)).spec().format) == "half"  # its own depth
    assert Path(run["final_image"]) == output and run["final_source"] == "FILE"
    assert_live_tiles_are_the_frame(addon_run)
    # and the artist's file was never touched
    assert run["artist_unchanged"] and run["still_dirty"]
    assert run["filepath"].endswith("artist's shot.blend")


def assert_live_tiles_are_the_frame(addon_run: dict[str, Any]) -> None:
    """The tiles painted live are the frame's pixels as the scene shows them (its view
    transform, 8-bit, Blender's rows bottom-up), not a plain sRGB encoding."""
    run = addon_run["render"]
    combined, channels, linear = read_combined(Path(run["last_output"]))
    assert run.get("tiles", 0) >= 1 and run["preview_size"] == [80, 64], run
    preview = np.load(addon_run["folder"] / "preview.npy")[::-1]
    assert run["display"]["view_transform"] == "AgX"  # a new scene's, in Blender 5.0
    want = to_rgba8(combined, channels, linear, run["display"]).astype(np.float32) / 255
    assert np.abs(preview - want).max() <= 1 / 255 + 1e-6
    plain = to_rgba8(combined, channels, linear).astype(np.float32) / 255
    assert np.abs(preview - plain).max() > 8 / 255
    assert np.count_nonzero(preview[:, :, 3]) == 80 * 64  # every pixel painted


def test_live_tiles_on_a_cluster_with_pieces_on_the_nodes(
        extension: Path, farm_keys: Path, make_scene,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Render on Network against a farm on a Ray cluster whose head has no CPU and keeps no
    pixels: the live tiles (previews made on the nodes) and the frame (merged and written
    on a node) reach the artist as on one machine."""
    from tests.conftest import cpu_less_head_cluster

    clusters = cpu_less_head_cluster(2)
    cluster = next(clusters)
    head = cluster.head_node.node_id
    folder = tmp_path_factory.mktemp("addon-cluster")
    server = ServerProcess(folder / "state", farm_keys, "--address", cluster.address,
                           "--workers", "2", "--cpus-per-worker", "1", "--pieces", "nodes")
    try:
        server.start()
        run = drive_addon(extension, server, farm_keys, make_scene, folder, only_render=True)
        with server.client() as client:
            kept = client.report(run["render"]["job_id"])["pieces_kept"]
    finally:
        server.stop()
        next(clusters, None)  # the cluster shuts down
    render = run["render"]
    assert render["final_state"] == "done", (render.get("finished"), render.get("message"))
    output = Path(render["last_output"])
    assert output.name == "artist_0002.exr" and output.is_file()
    assert Path(render["final_image"]) == output and render["final_source"] == "FILE"
    assert_live_tiles_are_the_frame(run)
    # kept, merged and written on the render nodes, never on the head
    assert kept["on"] == "nodes" and kept["merged_on"], kept
    assert head not in kept["merged_on"]


def test_the_button_returns_at_once_and_work_goes_on_in_a_thread(
        addon_run: dict[str, Any]) -> None:
    run = addon_run["invoke"]
    assert run["result"] == ["FINISHED"]
    assert run["state_on_return"] == "packing" and run["job_on_return"] == ""
    assert run["seconds"] < 1.0  # saving the copy only; packing takes a child Blender
    states = [row[0] for row in run["seen"]]
    assert states[:2] == ["packing", "uploading"] and states[-1] == "done"
    assert Path(run["last_output"]).is_file()


def test_cancel_stops_the_job(addon_run: dict[str, Any], farm_server: ServerProcess) -> None:
    run = addon_run["cancel"]
    assert run["result"] == ["FINISHED"] and run["final_state"] == "cancelled"
    with farm_server.client() as client:
        job = client.status(run["job_id"])
    assert job["state"] == "cancelled" and job["frames_done"] < 40


def test_a_refused_key_is_reported(addon_run: dict[str, Any]) -> None:
    run = addon_run["refused"]
    assert run["error"] and "refused this client's key" in run["error"]
    assert run["state"] == "failed" and "refused this client's key" in run["message"]


def test_online_access_off_keeps_blender_off_the_network(addon_run: dict[str, Any]) -> None:
    run = addon_run["offline"]
    assert run["online_access"] is False
    assert run["error"] and "online access is off" in run["error"]


def test_an_unsaved_new_file_renders(addon_run: dict[str, Any]) -> None:
    run = addon_run["new_file"]
    assert run["result"] == ["FINISHED"] and run["state"] == "done" and run["filepath"] == ""
    output = Path(run["last_output"])
    assert output.name == "untitled_0001.png"
    pixels = read_layers(output)
    assert next(iter(pixels.values())).shape == (32, 48)


def test_the_farm_gets_a_bundle_with_the_unsaved_edit(addon_run: dict[str, Any]) -> None:
    run = addon_run["packed"]
    assert run["name"] == "artist's shot.blend"
    assert run["resolution_x"] == 80  # the unsaved edit
    assert run["paint_packed"]  # an image painted and never saved is packed
    assert run["texture_in_bundle"]  # a file on disk travels in the bundle, by its hash
    assert run["blender"] == run["own"]  # the farm renders with the artist's own Blender


def test_file_output_files_land_in_the_project_as_blender_writes_them(
        addon_run: dict[str, Any]) -> None:
    run = addon_run["file_output"]
    assert run["result"] == ["FINISHED"] and run["final_state"] == "done", run["message"]
    assert run["passes"] == ["beauty_0001Image.png", "beauty_0002Image.png",  # //passes/
                             "plain_Image0001.png", "plain_Image0002.png"]  # of the .blend
    assert run["frames"] == ["artist's shot_0001.png", "artist's shot_0002.png"]


def test_preferences_create_a_key_pair(addon_run: dict[str, Any]) -> None:
    from renderfarm.server.transport import read_key

    run = addon_run["keys"]
    assert run["result"] == ["FINISHED"] and run["changed"] and run["secret_length"] == 40
    assert read_key(run["public"]).public == run["public"]  # valid Z85 public key
