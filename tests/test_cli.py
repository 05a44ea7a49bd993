"""The ``renderfarm`` command as a user runs it: exit codes, one clear line, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.blender


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "renderfarm.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def assert_one_clear_line(proc: subprocess.CompletedProcess[str], code: int,
                          *fragments: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("renderfarm: error")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(scope="module")
def tiny(make_scene) -> Path:
    return make_scene(width=32, height=24, frames=2, samples=1)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.blend"
    assert_one_clear_line(run("render", str(missing)), 3, str(missing), "file not found")


def test_not_a_blend_file(tmp_path: Path) -> None:
    fake = tmp_path / "fake.blend"
    fake.write_text("hello")
    assert_one_clear_line(run("render", str(fake)), 3, "not a .blend file")
    assert_one_clear_line(run("render", str(tmp_path)), 3, "not a .blend file")


@pytest.mark.parametrize("frames,fragment", [
    ("1-x", "cannot read '1-x'"),
    ("", "frame range is empty"),
    ("9-3", "runs backwards"),
    ("1-2000000", "outside the allowed frames"),
])
def test_bad_frames(tiny: Path, frames: str, fragment: str) -> None:
    assert_one_clear_line(run("render", str(tiny), "--frames", frames), 3, fragment)


@pytest.mark.parametrize("tiles,fragment", [("0x2", "at least 1x1"), ("ax2", "cannot read")])
def test_bad_tiles(tiny: Path, tiles: str, fragment: str) -> None:
    assert_one_clear_line(run("render", str(tiny), "--tiles", tiles), 3, fragment)


def test_tiles_larger_than_the_frame_are_refused_before_anything_is_sent(
        tiny: Path, tmp_path: Path) -> None:
    """``submit --tiles 33x2`` of a 32x24 scene says so at once, read from the file (before
    bundling: no farm listens at the address, nothing could be sent), and so does its
    50% (16x12) with 20x2."""
    import socket

    with socket.socket() as spare:  # a port nobody listens on
        spare.bind(("127.0.0.1", 0))
        nobody = f"tcp://127.0.0.1:{spare.getsockname()[1]}"
    keys = tmp_path / "keys"
    run("keys", str(keys), "--name", "server")
    run("keys", str(keys), "--name", "me")
    farm = ["--farm", nobody, "--server-key", str(keys / "server.key"),
            "--client-key", str(keys / "me.key_secret")]
    for tiles, size, more in (("33x2", "32x24", []), ("20x2", "16x12",
                                                      ["--percentage", "50"])):
        proc = run("submit", str(tiny), "--tiles", tiles, *more, *farm, timeout=30)
        assert_one_clear_line(proc, 3, str(tiny), f"{tiles} tiles is more tiles than the "
                              f"{size} pixels to render")


def test_unknown_extension_and_unwritable_folder(tiny: Path, tmp_path: Path) -> None:
    assert_one_clear_line(run("render", str(tiny), "-o", str(tmp_path / "x_####.gif")), 3,
                          "unknown output extension '.gif'")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert_one_clear_line(run("render", str(tiny), "-o", str(blocker / "x_####.exr")), 3,
                          "cannot create the output folder")


def test_scripts_need_the_farms_permission(tiny: Path) -> None:
    assert_one_clear_line(run("render", str(tiny), "--allow-scripts"), 3, "does not permit")


def test_usage_errors_exit_2(tiny: Path) -> None:
    assert run().returncode == 2
    assert run("render").returncode == 2
    proc = run("render", str(tiny), "--bogus")
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr
    assert run("render", str(tiny), "--samples", "0").returncode == 2


def test_errors_found_by_the_workers(tiny: Path, corpus: Path, tmp_path: Path) -> None:
    """Errors only Blender can see, each through a real local Ray cluster."""
    out = str(tmp_path / "o_####.exr")
    corrupt = corpus / "corrupt_only_magic.blend"
    # found while bundling, before any worker opens it
    assert_one_clear_line(run("render", str(corrupt), "-o", out), 3, "damaged",
                          "DNA1 block", "save it again in Blender")
    assert_one_clear_line(run("render", str(corrupt), "--files", "shared", "-o", out), 3,
                          "damaged", "DNA1 block")
    no_camera = corpus / "basic_file.blend"
    assert_one_clear_line(run("render", str(no_camera), "-o", out), 3, "no active camera")
    assert_one_clear_line(run("render", str(tiny), "--tiles", "33x1", "-o", out), 3,
                          "more tiles than the 32x24 pixels")
    assert_one_clear_line(run("render", str(tiny), "--device", "gpu", "-o", out), 3,
                          "no GPU", "--device cpu")
    assert not list(tmp_path.glob("o_*"))


def test_render_succeeds_with_json_summary(tiny: Path, tmp_path: Path) -> None:
    proc = run("render", str(tiny), "--frames", "1-2", "--tiles", "2x2", "--workers", "2",
               "-o", str(tmp_path / "t_####.png"), "--json", "--report",
               str(tmp_path / "r" / "report.html"))
    assert proc.returncode == 0, proc.stderr
    # the report is written and its file named (stderr: stdout is the JSON)
    assert f"report written to {tmp_path / 'r' / 'report.html'}" in proc.stderr
    assert (tmp_path / "r" / "report.html").read_text().startswith("<!doctype html>")
    summary = json.loads(proc.stdout)
    assert summary["outputs"] == {"1": str(tmp_path / "t_0001.png"),
                                  "2": str(tmp_path / "t_0002.png")}
    rendered = sorted(i for t in summary["tasks"] if t["kind"] == "render"
                      for i in (t["covers"] or [t["task_index"]]))
    assert rendered == list(range(8)) and summary["workers"] == 2
    # every other call a worker made for the job is accounted too
    assert {t["kind"] for t in summary["tasks"]} == {"render", "inspect", "finish"}
    assert len(summary["hashes"]) == 2
    assert (tmp_path / "t_0001.png").stat().st_size > 0


def test_progress_shows_finished_tiles_and_merged_frames(tiny: Path, tmp_path: Path) -> None:
    proc = run("render", str(tiny), "--frames", "1-2", "--tiles", "2x2", "--workers", "2",
               "-o", str(tmp_path / "p_####.png"))
    assert proc.returncode == 0, proc.stderr
    assert "tiles 8/8" in proc.stderr and "frames merged 2/2" in proc.stderr, proc.stderr


def test_rays_token_file_is_readable_by_its_user_only(tiny: Path, tmp_path: Path) -> None:
    """Ray's token lets whoever reads it join the cluster: the farm keeps it private."""
    import os
    import stat

    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.run([sys.executable, "-m", "renderfarm.cli", "render", str(tiny),
                           "--frames", "1", "-o", str(tmp_path / "k_####.png")],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    token = home / ".ray" / "auth_token"
    assert token.is_file()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    proc = run("render", str(tmp_path / "missing.blend"), "-v")
    assert proc.returncode == 3 and "Traceback" in proc.stderr


def test_inspect(corpus: Path) -> None:
    proc = run("inspect", str(corpus / "geometry-nodes" / "file_to_pack.blend"))
    assert proc.returncode == 0, proc.stderr
    assert "engine: CYCLES" in proc.stdout
    assert "resolution: 2048x858 at 100%" in proc.stdout
    assert "camera: Camera" in proc.stdout
    assert "linked files: //node_lib.blend, //object_lib.blend" in proc.stdout
    data = json.loads(run("inspect", "--json", str(corpus / "basic_file_ñønæščii.blend")).stdout)
    assert data["scenes"][0]["camera"] is None
    missing = json.loads(run("inspect", "--json", str(corpus / "missing_textures.blend")).stdout)
    assert missing["missing_files"], "missing_textures.blend lists no missing file"
    assert_one_clear_line(run("inspect", str(corpus / "corrupt_only_magic.blend")), 3,
                          "Blender cannot open")


def test_tiles_auto_says_what_it_chose(make_scene, tmp_path: Path) -> None:
    still = make_scene(width=160, height=128, frames=1, samples=1)
    proc = run("render", str(still), "--frames", "1", "--tiles", "auto", "--workers", "2",
               "--no-progress", "-o", str(tmp_path / "a_####.exr"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "--tiles auto chose 2x2 (1 frame(s), 2 worker(s), 160x128 px)" in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["tiles"] == [2, 2]
    assert (tmp_path / "a_0001.exr").stat().st_size > 0


def test_render_starts_its_own_ray_while_another_runs_here(tiny: Path, tmp_path: Path) -> None:
    """Another program's Ray cluster on this machine (one with no CPU at all, so a farm that
    joined it could not start a worker): `render` without --address starts its own."""
    import os
    import signal
    import time

    from tests.conftest import free_port_pair

    port = free_port_pair()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    other = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--num-cpus", "0",
         "--port", str(port), "--include-dashboard", "false", "--block"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        import socket

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until its GCS answers
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        time.sleep(2)
        proc = run("render", str(tiny), "--frames", "1", "-o", str(tmp_path / "o_####.png"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (tmp_path / "o_0001.png").stat().st_size > 0
    finally:
        os.killpg(other.pid, signal.SIGTERM)
        try:
            other.wait(15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(other.pid, signal.SIGKILL)  # whatever of that Ray is left
        except ProcessLookupError:
            pass
        other.wait(15)
