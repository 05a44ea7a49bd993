"""Blender's metadata in finished files, set to the frame's own values without re-encoding.

Blender writes its metadata (``File``, ``Frame``, ``Scene``, ``cycles.<layer>.samples``, ...)
into PNG ``tEXt`` chunks, JPEG comments (``Blender:<key>:<value>``) and OpenEXR header
attributes. A worker's file names the worker's copy of the ``.blend``, and a frame a worker
converted from merged tiles carries no render statistics (nothing rendered in that call).
:func:`restamp` changes those entries in the file's bytes only: the pixels, and every byte of
Blender's encoding, stay as Blender wrote them. Pure functions, no I/O.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterable, Mapping

_PNG = b"\x89PNG\r\n\x1a\n"
_EXR = b"\x76\x2f\x31\x01"
_JPEG = b"\xff\xd8"
_MULTIPART = 0x1000
_TIME = re.compile(r"^(?:(\d+):)?(\d+):(\d+)\.(\d+)$")


def restamp(data: bytes, replace: Mapping[str, str],
            add: Mapping[str, str] | None = None) -> bytes:
    """``data`` (a PNG, JPEG or OpenEXR file) with the metadata entries named in ``replace``
    given its values where the file has them, and the entries of ``add`` the file lacks
    appended after its own (an OpenEXR file of several parts: only replaced). Other formats
    (which carry none of Blender's metadata) come back unchanged.

    Raises:
        ValueError: the file is damaged (a chunk or header runs past its end).
    """
    add = add or {}
    if data.startswith(_PNG):
        return _png(data, replace, add)
    if data.startswith(_EXR):
        return _exr(data, replace, add)
    if data.startswith(_JPEG):
        return _jpeg(data, replace, add)
    return data


def sum_times(values: Iterable[str]) -> str:
    """Blender's render times (``MM:SS.hh`` or ``HH:MM:SS.hh``) added up, written as Blender
    writes them; a value that is no time is left out."""
    total = 0.0
    for value in values:
        match = _TIME.match(value.strip())
        if match:
            hours, minutes, seconds, fraction = match.groups()
            total += (int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)
                      + int(fraction) / 10 ** len(fraction))
    hundredths = round(total * 100)
    seconds, hundredths = divmod(hundredths, 100)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{hundredths:02d}"
    return f"{minutes:02d}:{seconds:02d}.{hundredths:02d}"


def combine_stats(pieces: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """The render statistics of a frame made of pieces (``cycles.*`` entries of each): times
    added up (the device time the frame took), other values (samples) as the first piece
    has them."""
    values: dict[str, list[str]] = {}
    for piece in pieces:
        for key, value in piece.items():
            values.setdefault(key, []).append(value)
    return {key: sum_times(found) if key.endswith("_time") else found[0]
            for key, found in values.items()}


# -- PNG -------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I",
                                                                     zlib.crc32(kind + body))


def _png(data: bytes, replace: Mapping[str, str], add: Mapping[str, str]) -> bytes:
    out = [data[:8]]
    seen: set[str] = set()
    position = 8
    while position < len(data):
        if position + 8 > len(data):
            raise ValueError("the PNG file ends inside a chunk")
        (length,) = struct.unpack(">I", data[position:position + 4])
        kind = data[position + 4:position + 8]
        end = position + 12 + length
        if end > len(data):
            raise ValueError("the PNG file ends inside a chunk")
        chunk = data[position:end]
        if kind == b"tEXt":
            key, _, value = data[position + 8:end - 4].partition(b"\x00")
            name = key.decode("latin-1")
            seen.add(name)
            if name in replace and replace[name] != value.decode("utf-8", "replace"):
                chunk = _png_chunk(kind, key + b"\x00" + _text(replace[name]))
        out.append(chunk)
        position = end
    extra = [_png_chunk(b"tEXt", _text(k) + b"\x00" + _text(v))
             for k, v in add.items() if k not in seen]
    if extra:
        index = _png_insert_at(out)
        out[index:index] = extra
    return b"".join(out)


def _png_insert_at(chunks: list[bytes]) -> int:
    """After the last ``tEXt`` chunk, else before the first image data."""
    last = None
    for index, chunk in enumerate(chunks[1:], start=1):
        kind = chunk[4:8]
        if kind == b"tEXt":
            last = index + 1
        elif kind in (b"IDAT", b"IEND"):
            return last if last is not None else index
    return last if last is not None else len(chunks)


def _text(text: str) -> bytes:
    """Text as Blender writes it into PNG chunks: UTF-8 bytes (PNG says Latin-1, Blender
    writes its strings as they are)."""
    return text.encode()


# -- JPEG ------------------------------------------------------------------------------------
def _jpeg(data: bytes, replace: Mapping[str, str], add: Mapping[str, str]) -> bytes:
    out, seen = [data[:2]], set()
    position, insert = 2, None
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ValueError("the JPEG file has a damaged segment")
        marker = data[position + 1]
        if marker == 0xDA:  # the image data: the rest is copied as it is
            break
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        end = position + 2 + length
        if end > len(data):
            raise ValueError("the JPEG file ends inside a segment")
        segment = data[position:end]
        if marker == 0xFE and segment[4:].startswith(b"Blender:"):
            key, _, value = segment[12:].partition(b":")
            name = key.decode("utf-8", "replace")
            seen.add(name)
            if name in replace and replace[name] != value.decode("utf-8", "replace"):
                segment = _comment(name, replace[name])
            out.append(segment)
            insert = len(out)
        else:
            if insert is None and marker not in range(0xE0, 0xF0):
                insert = len(out)  # after the APPn segments
            out.append(segment)
        position = end
    extra = [_comment(k, v) for k, v in add.items() if k not in seen]
    index = insert if insert is not None else len(out)
    out[index:index] = extra
    return b"".join(out) + data[position:]


def _comment(key: str, value: str) -> bytes:
    body = f"Blender:{key}:{value}".encode()[:65533]
    return b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body


# -- OpenEXR ---------------------------------------------------------------------------------
def _exr(data: bytes, replace: Mapping[str, str], add: Mapping[str, str]) -> bytes:
    (version,) = struct.unpack("<I", data[4:8])
    parts = 0
    position = 8
    out = [data[:8]]
    multipart = bool(version & _MULTIPART)
    while True:
        header, position = _exr_header(data, position, replace,
                                       {} if multipart else add)
        out.append(header)
        parts += 1
        if not multipart:
            break
        if position >= len(data):
            raise ValueError("the OpenEXR file ends inside its headers")
        if data[position] == 0:  # the empty header that ends the list
            out.append(b"\x00")
            position += 1
            break
    headers = b"".join(out)
    delta = len(headers) - position
    if delta == 0:
        return headers + data[position:]
    # the offset tables follow the headers; the first offset points right past them
    if position + 8 > len(data):
        raise ValueError("the OpenEXR file has no offset table")
    (first,) = struct.unpack("<Q", data[position:position + 8])
    count = (first - position) // 8
    if count <= 0 or position + count * 8 > len(data):
        raise ValueError("the OpenEXR file's offset table is damaged")
    offsets = struct.unpack(f"<{count}Q", data[position:position + count * 8])
    table = struct.pack(f"<{count}Q", *(o + delta if o else 0 for o in offsets))
    return headers + table + data[position + count * 8:]


def _exr_header(data: bytes, position: int, replace: Mapping[str, str],
                add: Mapping[str, str]) -> tuple[bytes, int]:
    """One header with its string attributes changed; returns it and where the next
    starts."""
    out, seen = [], set()
    while True:
        end = data.index(b"\x00", position)
        if end == position:  # the end of this header
            position += 1
            break
        name = data[position:end].decode("latin-1")
        kind_end = data.index(b"\x00", end + 1)
        kind = data[end + 1:kind_end]
        (size,) = struct.unpack("<i", data[kind_end + 1:kind_end + 5])
        value_end = kind_end + 5 + size
        if size < 0 or value_end > len(data):
            raise ValueError("the OpenEXR header is damaged")
        seen.add(name)
        if kind == b"string" and name in replace:
            out.append(_exr_string(name, replace[name]))
        else:
            out.append(data[position:value_end])
        position = value_end
    out += [_exr_string(k, v) for k, v in add.items() if k not in seen]
    return b"".join(out) + b"\x00", position


def _exr_string(name: str, value: str) -> bytes:
    body = value.encode()
    return name.encode("latin-1") + b"\x00string\x00" + struct.pack("<i", len(body)) + body
