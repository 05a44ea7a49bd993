"""Blender's metadata set in a file's bytes (renderfarm.stamp): real PNG, JPEG and OpenEXR
files (single part and multi-part) written by OpenImageIO, read back by OpenImageIO."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from renderfarm.stamp import combine_stats, restamp, sum_times


def _write(path: Path, attributes: dict[str, str], parts: int = 1) -> np.ndarray:
    import OpenImageIO as oiio

    pixels = (np.arange(16 * 8 * 3, dtype=np.float32).reshape(8, 16, 3) % 251) / 251
    specs = []
    for index in range(parts):
        spec = oiio.ImageSpec(16, 8, 3, "half" if path.suffix == ".exr" else "uint8")
        if parts > 1:
            spec.attribute("name", f"layer{index}")
        if index == 0:
            for key, value in attributes.items():
                spec.attribute(key, value)
        specs.append(spec)
    out = oiio.ImageOutput.create(str(path))
    assert out.open(str(path), specs) if parts > 1 else out.open(str(path), specs[0])
    for index in range(parts):
        if index:
            assert out.open(str(path), specs[index], "AppendSubimage")
        assert out.write_image(pixels)
    out.close()
    return pixels


def _read(path: Path) -> tuple[list[dict[str, str]], list[np.ndarray]]:
    import OpenImageIO as oiio

    inp = oiio.ImageInput.open(str(path))
    assert inp is not None, oiio.geterror()
    metadata, pixels, index = [], [], 0
    while inp.seek_subimage(index, 0):
        metadata.append({a.name: str(a.value) for a in inp.spec().extra_attribs})
        pixels.append(inp.read_image(index, 0, 0, 3, "float"))
        index += 1
    inp.close()
    return metadata, pixels


@pytest.mark.parametrize(("suffix", "key", "parts"), [
    (".png", "File", 1), (".exr", "File", 1), (".exr", "File", 3),
    (".jpg", "Blender:File", 1)])
def test_restamp_changes_entries_and_keeps_every_pixel(tmp_path, suffix, key, parts) -> None:
    path = tmp_path / f"a{suffix}"
    # OpenImageIO writes JPEG comments only as ImageDescription: the JPEG gets Blender's
    # comments from restamp itself (added), then changed
    _write(path, {} if suffix == ".jpg" else {"File": "/farm/worker/copy.blend",
                                               "Frame": "3"}, parts)
    before = path.read_bytes()
    if suffix == ".jpg":
        before = restamp(before, {}, {"File": "/farm/worker/copy.blend", "Frame": "3"})
        path.write_bytes(before)
    meta_before, pixels_before = _read(path)
    artist = "/home/artist/projekt/szene ö.blend"
    after = restamp(before, {"File": artist}, {"cycles.ViewLayer.samples": "16",
                                               "Frame": "99"})
    out = tmp_path / f"b{suffix}"
    out.write_bytes(after)
    meta, pixels = _read(out)
    for got, want in zip(pixels, pixels_before, strict=True):
        assert np.array_equal(got, want)
    assert meta[0][key] == artist
    frame = "Blender:Frame" if suffix == ".jpg" else "Frame"
    assert meta[0][frame] == "3"  # present: not added again, not changed
    samples = "Blender:cycles.ViewLayer.samples" if suffix == ".jpg" else \
        "cycles.ViewLayer.samples"
    if parts == 1:
        assert meta[0][samples] == "16"
    else:  # a multi-part file: only replaced
        assert samples not in meta[0]
    assert len(meta) == parts
    for index in range(1, parts):
        assert meta[index] == meta_before[index]
    unchanged = {k: v for k, v in meta_before[0].items() if k not in (key, samples)}
    assert {k: meta[0][k] for k in unchanged} == unchanged
    assert restamp(after, {"File": artist}) == after  # nothing to change: the same bytes


def test_other_formats_come_back_unchanged_and_damaged_files_are_refused(tmp_path) -> None:
    tiff = tmp_path / "a.tif"
    _write(tiff, {})
    data = tiff.read_bytes()
    assert restamp(data, {"File": "x"}, {"a": "b"}) == data
    png = tmp_path / "a.png"
    _write(png, {"File": "y"})
    with pytest.raises(ValueError, match="ends inside"):
        restamp(png.read_bytes()[:60], {"File": "x"})


def test_times_add_up_as_blender_writes_them() -> None:
    assert sum_times(["00:00.14", "00:59.90"]) == "01:00.04"
    assert sum_times(["59:59.99", "00:00.02"]) == "01:00:00.01"
    assert sum_times(["not a time"]) == "00:00.00"
    assert combine_stats([{"cycles.L.samples": "8", "cycles.L.render_time": "00:01.50"},
                          {"cycles.L.samples": "8", "cycles.L.render_time": "00:02.00"}]) \
        == {"cycles.L.samples": "8", "cycles.L.render_time": "00:03.50"}
