"""The service's pure parts and small I/O: message schema, job state transitions, the SQLite
store, previews, keys and addresses. No Ray, no Blender."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from renderfarm.errors import InputError, ProtocolError, ServiceError
from renderfarm.job import Rect, Tile
from renderfarm.server import protocol
from renderfarm.server.preview import png, preview_scale, srgb8, tile_preview
from renderfarm.server.store import Store, transition
from renderfarm.server.transport import create_keys, is_loopback, publish_address, read_key


def frames(**fields: object) -> list[bytes]:
    return [json.dumps({"v": 1, **fields}).encode()]


def test_a_valid_request_is_parsed() -> None:
    request = protocol.parse_request(frames(op="status", id=7, job_id="20261122-1-abc"))
    assert (request.op, request.id, request.fields) == ("status", 7, {"job_id": "20261122-1-abc"})
    upload = protocol.parse_request([*frames(op="upload", sha256="a" * 64, offset=0, total=3),
                                     b"abc"])
    assert upload.data == b"abc"


@pytest.mark.parametrize(("message", "text"), [
    (frames(op="priority", job_id="j", priority=True), "must be int, not bool"),
    (frames(op="priority", job_id="j", priority=5000), "between -1000 and 1000"),
    (frames(op="fetch", job_id="j", frame=1, offset=-1, length=0), "0 or more"),
    (frames(op="status", job_id="../etc"), "is not a job id"),
    (frames(op="upload", sha256="A" * 64, offset=0, total=1) + [b"x"], "SHA-256"),
    (frames(op="list") + [b"extra"], "takes no data frames"),
    ([], "empty message"),
    (frames(op="status"), "status: field 'job_id' is missing"),
    (frames(op="status", job_id="j", color=1, zoom=2),
     "status: unknown field\\(s\\) color, zoom; known: job_id"),
    (frames(op="status", job_id="j\n"), "is not a job id"),
    (frames(op="have", hashes=["a" * 64, "B" * 64]),
     "have: field 'hashes' item 1 must be 64 lowercase hex digits"),
    (frames(op="have", hashes=["a" * 64] * (protocol.MAX_HASHES + 1)), "more than 10000 files"),
    (frames(op="list", states=["queued", "bogus"]),
     "list: field 'states' item 1 \\('bogus'\\) is not a job state \\(unknown states are "
     "refused\\); known: queued"),
    (frames(op="submit", spec=[], filename="a.blend"), "field 'spec' must be object, not array"),
    (frames(op="submit", spec={}, filename=".."), "field 'filename' must be a plain file name"),
    (frames(op="fetch", job_id="j", frame=1, offset=0, length=0, name="a/../b.exr"),
     "field 'name' must be a relative path"),
    (frames(op="fetch", job_id="j", frame=2**53, offset=0, length=0),
     "field 'frame' must be between -9007199254740991 and 9007199254740991"),
    ([b'{"v": 1, "op": "hello", "id": NaN}'], "hello: the first frame is not standard JSON"),
    ([b'{"v": 1, "op": "submit", "filename": "a", "spec": {"a": ' + b"[" * 40 + b"]" * 40
      + b"}}"], "submit: field 'spec' nests deeper than 32 levels"),
    ([b'{"v": 1, "op": "hello", "spec": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"],
     "nests deeper than 32 levels"),
])
def test_malformed_requests_are_refused_with_a_reason(message: list[bytes], text: str) -> None:
    with pytest.raises(ProtocolError, match=text):
        protocol.parse_request(message)


def test_optional_fields_left_out_are_not_in_the_fields() -> None:
    submit = protocol.parse_request(frames(op="submit", id="s", spec={"frames": "1"},
                                           filename="a.blend", blob="a" * 64))
    assert submit.fields == {"spec": {"frames": "1"}, "filename": "a.blend", "blob": "a" * 64}
    assert submit.fields.get("priority") is None and submit.id == "s"


def test_the_version_comes_first_and_the_id_is_echoed_when_it_can_be() -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.parse_request(frames(op="nosuch", id=9, color=1))
    assert info.value.request_id == 9 and "unknown operation 'nosuch'" in info.value.message
    with pytest.raises(ProtocolError) as info:
        protocol.parse_request([json.dumps({"v": 2, "op": "nosuch", "id": 9}).encode()])
    assert (info.value.kind, info.value.request_id) == ("version", 9)
    with pytest.raises(ProtocolError) as info:
        protocol.parse_request(frames(op="status", id=[1], job_id="../x"))
    assert info.value.request_id is None and "is not a job id" in info.value.message


def test_the_openapi_document_is_made_from_the_declarations() -> None:
    from renderfarm.server.api import openapi

    paths = openapi()["paths"]
    for op, message in protocol.REQUESTS.items():
        operation = paths[f"/api/v1/{op}"]["put" if message.with_data else "post"]
        if message.with_data:
            assert [p["name"] for p in operation["parameters"]] == ["sha256", "offset", "total"]
            continue
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body["additionalProperties"] is False and body["description"]
        assert not set(body["properties"]) & {"v", "op", "id"}, op
        assert set(body["properties"]) == set(message.__struct_fields__) - {"v", "id"}, op
    priority = paths["/api/v1/priority"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    assert priority["required"] == ["job_id", "priority"]
    assert priority["properties"]["priority"] | {"description": ""} == {
        "type": "integer", "minimum": -1000, "maximum": 1000, "description": ""}
    assert priority["properties"]["job_id"]["pattern"] == protocol.JOB_ID.pattern
    have = paths["/api/v1/have"]["post"]["requestBody"]["content"]["application/json"][
        "schema"]["properties"]["hashes"]
    assert have["maxItems"] == protocol.MAX_HASHES and have["items"]["maxLength"] == 64


def test_size_limit() -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.parse_request(frames(op="hello") + [b"x" * 100], limit=50)
    assert info.value.kind == "too_big"


def test_replies_round_trip() -> None:
    reply, data = protocol.parse_reply([protocol.reply_ok(3, job={"a": 1}), b"bytes"])
    assert reply == {"v": 1, "id": 3, "ok": True, "job": {"a": 1}} and data == b"bytes"
    error, _ = protocol.parse_reply([protocol.reply_error(4, "not_found", "no job")])
    assert error["error"] == {"type": "not_found", "message": "no job"}
    with pytest.raises(ProtocolError, match="another protocol version"):
        protocol.parse_reply([b'{"v": 2}'])


def test_job_state_transitions() -> None:
    assert transition("queued", "start") == "running"
    assert transition("running", "pause") == "paused"
    assert transition("paused", "resume") == "queued"
    assert transition("paused", "continue") == "running"  # its run is alive: not queued
    assert transition("running", "requeue") == "queued"
    for ended in ("done", "failed", "cancelled"):
        with pytest.raises(ServiceError, match=f"cannot pause a job that is {ended}"):
            transition(ended, "pause")


def test_a_batch_of_writes_is_one_transaction_and_reads_see_it(tmp_path: Path) -> None:
    """A job's recorder writes its waiting events in one transaction: the database sees
    nothing until the batch ends, the writing thread reads its own writes, another thread
    is not held, and a write that fails loses only itself."""
    import sqlite3
    import threading

    store = Store(tmp_path / "farm.db")
    store.add_job("a", "a", {"output": "/x/s_####.exr"}, 0, None)
    before = store.commits
    outside = sqlite3.connect(tmp_path / "farm.db")
    with store.batch():
        for frame in range(1, 101):
            store.add_run("a", f"t{frame}", frame, [0], "cpu-1", 1.0)
        store.set_hash("a", 1, "ab" * 32)
        assert outside.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
        seen: list[int] = []
        other = threading.Thread(target=lambda: seen.append(len(store.runs("a"))))
        other.start()
        other.join(10)
        assert seen == [0]  # another thread reads at once, without this batch's writes
        assert len(store.runs("a")) == 100  # this thread reads what it wrote
        store.add_run("a", "late", 101, [0], "cpu-1", 1.0)
        store._run("INSERT INTO nowhere VALUES (1)")  # fails alone
    assert outside.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 101
    assert store.hashes("a") == {1: "ab" * 32}
    assert store.commits - before == 2  # two transactions for 102 writes
    outside.close()
    store.close()


def test_store_keeps_queue_order_pieces_and_frames(tmp_path: Path) -> None:
    store = Store(tmp_path / "farm.db")
    spec = {"output": "/x/shot_####.exr", "frames": "1-2"}
    for job_id, priority in (("a", 0), ("b", 0), ("c", 5)):
        store.add_job(job_id, job_id, spec, priority, None)
    assert [j.id for j in store.jobs()] == ["c", "a", "b"]  # higher first, then first come
    store.set_priority("b", 9)
    assert [j.id for j in store.jobs(["queued"])] == ["b", "c", "a"]
    assert store.act("a", "start").state == "running"
    tile = {"index": 1, "core": {"x0": 0, "y0": 0, "x1": 2, "y1": 2},
            "render": {"x0": 0, "y0": 0, "x1": 2, "y1": 2}}
    store.add_piece("a", "f0001-t01-c00", 1, 0, [1], tile, "/p/1.exr", "cpu-1", 0.5)
    store.add_piece("a", "f0002-t01-c00", 2, 0, [1], tile, "/p/2.exr", "cpu-1", 0.5)
    store.add_frame("a", 1, "/x/shot_0001.exr")
    assert [p["frame"] for p in store.pieces("a")] == [2]  # merged frames drop their pieces
    assert store.frames("a") == {1: "/x/shot_0001.exr"}
    assert len(store.runs("a")) == 2
    store.close()
    again = Store(tmp_path / "farm.db")  # what a restarted service reads
    assert again.job("a").state == "running" and again.frames("a") == {1: "/x/shot_0001.exr"}
    with pytest.raises(ServiceError, match="no job 'z'"):
        again.job("z")


def test_a_database_of_an_earlier_version_keeps_its_logs_and_gains_tiles(
        tmp_path: Path) -> None:
    """A state folder written before task logs named their tiles: the service opens it, the
    old rows read with no tiles, new rows keep theirs."""
    import sqlite3

    path = tmp_path / "farm.db"
    old = sqlite3.connect(str(path))
    old.execute("CREATE TABLE logs (job_id TEXT NOT NULL, at REAL NOT NULL, frame INTEGER NOT "
                "NULL, tile INTEGER NOT NULL, kind TEXT NOT NULL, attempt INTEGER NOT NULL, "
                "worker TEXT, ok INTEGER NOT NULL, error TEXT, log TEXT NOT NULL)")
    old.execute("INSERT INTO logs VALUES ('j', 1.0, 1, 0, 'render', 1, 'cpu-1', 1, NULL, "
                "'Saved')")
    old.commit()
    old.close()
    store = Store(path)
    store.add_log("j", {"finished": 2.0, "frame": 2, "tile": 0, "tiles": [0, 1],
                        "kind": "render", "worker": "cpu-2", "ok": True, "log": "Saved"})
    logs = store.logs("j")
    assert [(e["frame"], e["tiles"], e["log"]) for e in logs] == [(1, [], "Saved"),
                                                                  (2, [0, 1], "Saved")]
    store.close()


def test_srgb_encoding() -> None:
    values = srgb8(np.array([0.0, 0.0031308, 0.214041, 0.5, 1.0, 7.0]))
    assert values.tolist() == [0, 10, 127, 188, 255, 255]  # 0.214041 is sRGB 0.49999


def test_png_is_readable_by_openimageio(tmp_path: Path) -> None:
    import OpenImageIO as oiio

    rgba = np.random.default_rng(1).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    (tmp_path / "p.png").write_bytes(png(rgba))
    config = oiio.ImageSpec()
    config.attribute("oiio:UnassociatedAlpha", 1)  # PNG alpha is straight; keep it so
    buf = oiio.ImageBuf(str(tmp_path / "p.png"), 0, 0, config)
    assert np.array_equal(buf.get_pixels(oiio.UINT8), rgba)


@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 9), st.integers(1, 9))
def test_scaled_tile_previews_cover_the_frame_once(width: int, height: int, cols: int,
                                                   rows: int) -> None:
    from renderfarm.server.preview import _edge

    canvas = Rect(0, 0, width, height)
    scale = preview_scale(canvas)
    xs = [width * i // cols for i in range(cols + 1)]
    ys = [height * j // rows for j in range(rows + 1)]
    covered = sum(max(0, _edge(xs[i + 1], 0, scale) - _edge(xs[i], 0, scale)) *
                  max(0, _edge(ys[j + 1], 0, scale) - _edge(ys[j], 0, scale))
                  for i in range(cols) for j in range(rows))
    assert covered == _edge(width, 0, scale) * _edge(height, 0, scale)


def test_tile_preview_crops_overscan_and_scales(tmp_path: Path) -> None:
    import OpenImageIO as oiio

    # a 1200x800 frame, a tile with 8 px overscan; the piece holds a horizontal ramp
    tile = Tile(3, Rect(600, 400, 1200, 800), Rect(592, 392, 1200, 800))
    ramp = np.tile(np.linspace(0, 1, tile.render.width, dtype=np.float32),
                   (tile.render.height, 1))
    pixels = np.dstack([ramp, ramp, ramp, np.ones_like(ramp)])
    spec = oiio.ImageSpec(tile.render.width, tile.render.height, 4, oiio.FLOAT)
    buf = oiio.ImageBuf(spec)
    buf.set_pixels(oiio.ROI(), pixels)
    assert buf.write(str(tmp_path / "piece.exr"))
    preview = tile_preview(tmp_path / "piece.exr", tile, Rect(0, 0, 1200, 800))
    assert preview is not None
    assert (preview.frame_width, preview.frame_height) == (512, 341)
    assert (preview.x, preview.y, preview.width, preview.height) == (256, 170, 256, 171)
    rgba = np.frombuffer(preview.rgba, np.uint8).reshape(171, 256, 4)
    # overscan cropped: the first preview column starts at the core (ramp ~0.014, sRGB ~31),
    # not at the piece's edge (0)
    assert 25 <= rgba[0, 0, 0] <= 38
    assert rgba[0, -1, 0] >= 254 and (rgba[:, :, 3] == 255).all()
    assert (np.diff(rgba[0, :, 0].astype(int)) >= 0).all()  # the ramp survives scaling


def test_keys_and_addresses(tmp_path: Path) -> None:
    public, secret = create_keys(tmp_path, "me")
    pair = read_key(str(secret), secret=True)
    assert read_key(str(public)).public == pair.public and len(pair.secret) == 40
    assert read_key(pair.public).public == pair.public  # Z85 text works too
    with pytest.raises(InputError, match="keys are never overwritten"):
        create_keys(tmp_path, "me")
    with pytest.raises(InputError, match="secret key file"):
        read_key(str(public), secret=True)
    with pytest.raises(InputError, match="not a key"):
        read_key("not-a-key")
    assert publish_address("tcp://0.0.0.0:5555") == "tcp://0.0.0.0:5556"
    assert publish_address("tcp://h:1", "tcp://h:9") == "tcp://h:9"
    assert is_loopback("tcp://127.0.0.1:1") and is_loopback("ipc:///tmp/x")
    assert not is_loopback("tcp://0.0.0.0:1") and not is_loopback("tcp://10.0.0.1:1")


def test_the_client_needs_only_pyzmq() -> None:
    import subprocess
    import sys

    code = ("import sys, renderfarm.client, renderfarm.server.transport; "
            "print(sorted(m for m in ('ray', 'numpy', 'OpenImageIO', 'bpy', 'boto3', 'msgspec') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_request_ids_and_nesting_are_bounded() -> None:
    import pytest as _pytest

    from renderfarm.errors import ProtocolError as _ProtocolError
    from renderfarm.server import protocol as _protocol

    deep = b'{"v": 1, "op": "hello", "id": ' + b"[" * 986 + b"]" * 986 + b"}"
    with _pytest.raises(_ProtocolError, match="nests deeper") as caught:
        _protocol.parse_request([deep])
    assert caught.value.request_id is None  # never echoed back
    assert _protocol.parse_request([b'{"v": 1, "op": "hello", "id": 7}']).id == 7
    assert _protocol.parse_request([b'{"v": 1, "op": "hello", "id": "' + b"x" * 65
                                    + b'"}']).id is None


def test_clients_take_only_plain_file_names_and_bounded_previews() -> None:
    import zlib

    import pytest as _pytest

    from renderfarm.client import _inflate, plain_name
    from renderfarm.errors import ServiceError as _ServiceError

    assert plain_name("shot_0001.exr") == "shot_0001.exr"
    for bad in ("../../x", "/etc/passwd", "a/b.exr", "..", "", ".bashrc", "C:x", "a\\b",
                None, 7):
        with _pytest.raises(_ServiceError, match="plain file name"):
            plain_name(bad)
    assert _inflate(zlib.compress(b"x" * 1000), 4096) == b"x" * 1000
    assert _inflate(zlib.compress(b"\0" * (64 * 1024 * 1024)), 4 * 1024 * 1024) is None  # bomb
    assert _inflate(b"not zlib", 100) is None
