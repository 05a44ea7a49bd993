"""Merging tile pieces into frames with OpenImageIO.

A piece is the multilayer EXR Blender writes for a tile's render rectangle (overscan included,
cropped to the rectangle, so it carries no offset). The merge places each piece from the
task's own rectangle, keeps only the tile's core, and writes every part (Blender 5 writes one
EXR part per pass) with its name, channels, pixel types and metadata. One part is held in
memory at a time.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from renderfarm.errors import MergeError
from renderfarm.job import Rect, Tile

logger = logging.getLogger(__name__)

#: attributes of a piece's header that describe the piece, not the merged frame
_PIECE_ATTRIBUTES = {"oiio:subimages", "oiio:subimagename", "openexr:chunkCount"}


@functools.cache
def _oiio() -> Any:
    import OpenImageIO

    # EXR (de)compression is the merge's cost: let OpenEXR use more threads than cores,
    # since its blocks wait on I/O as well as on zlib (measured 1.7x faster on 2 cores).
    OpenImageIO.attribute("exr_threads", max(4, 2 * (os.cpu_count() or 1)))
    return OpenImageIO


@dataclass(frozen=True)
class Piece:
    """A rendered tile: where it belongs and the file holding it (or the node)."""

    tile: Tile
    path: Path
    #: the piece as kept on the node that rendered it (a
    #: :class:`~renderfarm.pieces.NodePiece`; ``path`` is then never written)
    held: Any = None


def _open(path: Path) -> Any:
    oiio = _oiio()
    inp = oiio.ImageInput.open(str(path))
    if inp is None:
        raise MergeError(f"cannot read piece: {oiio.geterror()}", path=str(path))
    return inp


def _parts(inp: Any) -> list[Any]:
    specs = []
    index = 0
    while inp.seek_subimage(index, 0):
        specs.append(inp.spec())
        index += 1
    return specs


def _part_name(spec: Any, index: int) -> str:
    return str(spec.getattribute("name") or spec.getattribute("oiio:subimagename") or index)


def write_atomically(target: Path, write: Any) -> None:
    """Call ``write(temporary_path)`` and move the file into place only when it succeeded."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.stem}.partial-{os.getpid()}{target.suffix}")
    try:
        write(temporary)
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


def merge_pieces(pieces: Sequence[Piece], canvas: Rect, target: Path) -> None:
    """Merge the pieces of one frame into ``target`` (a multilayer EXR).

    Args:
        pieces: every tile of the frame, each with the file Blender wrote for it.
        canvas: the output image in full-frame pixels (the frame, or the border when Blender
            crops to it).
        target: the EXR to write.

    Raises:
        MergeError: a piece is missing, unreadable, of the wrong size, or its parts or channels
            differ from the others'.
    """
    if not pieces:
        raise MergeError("no piece to merge", path=str(target))
    inputs = [_open(p.path) for p in pieces]
    try:
        layouts = [_parts(inp) for inp in inputs]
        reference = layouts[0]
        names = [(_part_name(s, i), tuple(s.channelnames)) for i, s in enumerate(reference)]
        for piece, layout in zip(pieces, layouts, strict=True):
            got = [(_part_name(s, i), tuple(s.channelnames)) for i, s in enumerate(layout)]
            if got != names:
                raise MergeError(
                    "piece has other passes than the first piece of the frame; the workers "
                    "render with different settings", path=str(piece.path),
                    tile=piece.tile.index)
            for spec in layout:
                if (spec.width, spec.height) != (piece.tile.render.width,
                                                 piece.tile.render.height):
                    raise MergeError(
                        f"piece is {spec.width}x{spec.height} pixels but its tile renders "
                        f"{piece.tile.render.width}x{piece.tile.render.height}",
                        path=str(piece.path), tile=piece.tile.index)
        specs = [_frame_spec(spec, canvas) for spec in reference]

        def write(path: Path) -> None:
            _write_parts(path, specs, lambda index: _paste_part(inputs, pieces, index, specs,
                                                                canvas))

        write_atomically(target, write)
    finally:
        for inp in inputs:
            inp.close()


def _frame_spec(piece_spec: Any, canvas: Rect) -> Any:
    oiio = _oiio()
    spec = oiio.ImageSpec(piece_spec)
    spec.width, spec.height = canvas.width, canvas.height
    spec.full_width, spec.full_height = canvas.width, canvas.height
    spec.x = spec.y = spec.full_x = spec.full_y = 0
    spec.tile_width = spec.tile_height = 0
    for name in _PIECE_ATTRIBUTES:
        spec.erase_attribute(name)
    return spec


def _paste_part(inputs: Sequence[Any], pieces: Sequence[Piece], index: int,
                specs: Sequence[Any], canvas: Rect) -> np.ndarray:
    oiio = _oiio()
    spec = specs[index]
    frame = np.zeros((canvas.height, canvas.width, spec.nchannels), dtype=np.float32)
    for inp, piece in zip(inputs, pieces, strict=True):
        if not inp.seek_subimage(index, 0):
            raise MergeError("piece lost a part while reading", path=str(piece.path))
        pixels = inp.read_image(index, 0, 0, spec.nchannels, oiio.FLOAT)
        if pixels is None:
            raise MergeError(f"cannot read piece: {inp.geterror()}", path=str(piece.path),
                             tile=piece.tile.index)
        pixels = pixels.reshape(piece.tile.render.height, piece.tile.render.width,
                                spec.nchannels)
        core, render = piece.tile.core, piece.tile.render
        sy, sx = core.y0 - render.y0, core.x0 - render.x0
        dy, dx = core.y0 - canvas.y0, core.x0 - canvas.x0
        frame[dy:dy + core.height, dx:dx + core.width] = \
            pixels[sy:sy + core.height, sx:sx + core.width]
    return frame


def _write_parts(path: Path, specs: Sequence[Any], pixels_of: Any) -> None:
    """Write a multi-part file, computing one part's pixels at a time."""
    oiio = _oiio()
    out = oiio.ImageOutput.create(str(path))
    if out is None:
        raise MergeError(f"cannot write: {oiio.geterror()}", path=str(path))
    specs = [_without_capture_date(spec) for spec in specs]
    try:
        if len(specs) > 1:
            ok = out.open(str(path), list(specs))
        else:
            ok = out.open(str(path), specs[0])
        if not ok:
            raise MergeError(f"cannot write: {out.geterror()}", path=str(path))
        for index, spec in enumerate(specs):
            if index > 0 and not out.open(str(path), spec, "AppendSubimage"):
                raise MergeError(f"cannot write part {index}: {out.geterror()}", path=str(path))
            if not out.write_image(pixels_of(index)):
                raise MergeError(f"cannot write part {index}: {out.geterror()}", path=str(path))
    finally:
        out.close()


def _without_capture_date(spec: Any) -> Any:
    """``spec`` without the capture date OpenImageIO writes by itself (Blender writes none:
    an empty value keeps it out)."""
    if spec.getattribute("DateTime") is None:
        spec = _oiio().ImageSpec(spec)
        spec.attribute("DateTime", "")
    return spec


def read_combined(source: Path) -> tuple[np.ndarray, list[str], bool]:
    """The first view layer's Combined pass of an image (or its RGBA for a single-part file).

    Returns:
        ``(pixels, channels, linear)``: float pixels ``(height, width, channels)`` top row
        first, the channel names without layer prefix (``R``, ``G``, ``B``, ``A``), and whether
        the values are scene-linear floats (EXR) rather than display values (PNG, JPEG).

    Raises:
        MergeError: the file has no Combined pass.
    """
    oiio = _oiio()
    inp = _open(source)
    try:
        layout = _parts(inp)
        index = next((i for i, s in enumerate(layout)
                      if _part_name(s, i).endswith("Combined")), None)
        if index is None and len(layout) == 1:
            index = 0
        if index is None:
            raise MergeError("the render has no Combined pass; enable it in the view layer's "
                             "passes", path=str(source))
        spec = layout[index]
        inp.seek_subimage(index, 0)
        pixels = inp.read_image(index, 0, 0, spec.nchannels, oiio.FLOAT)
        linear = spec.format.basetype in (oiio.FLOAT, oiio.HALF)
    finally:
        inp.close()
    channels = [c.rsplit(".", 1)[-1] for c in spec.channelnames]
    return pixels.reshape(spec.height, spec.width, len(channels)), channels, linear


def combined_rgba(source: Path, target: Path) -> None:
    """Write the first view layer's Combined pass of a multilayer EXR as a plain RGBA EXR.

    This is the image Blender would save in an 8/16-bit format; the conversion to that format
    (view transform, display, dither) is Blender's (:meth:`BlenderSession.convert`).

    Raises:
        MergeError: the file has no Combined pass.
    """
    oiio = _oiio()
    pixels, channels, _linear = read_combined(source)
    height, width = pixels.shape[:2]
    out_spec = oiio.ImageSpec(width, height, len(channels), oiio.FLOAT)
    out_spec.channelnames = tuple(channels)
    out_spec.attribute("compression", "none")
    buf = oiio.ImageBuf(out_spec)
    buf.set_pixels(oiio.ROI(), pixels)
    if not buf.write(str(target)):
        raise MergeError(f"cannot write: {buf.geterror()}", path=str(target))


def read_layers(path: Path) -> dict[str, np.ndarray]:
    """Every channel of every part of an image, as float arrays keyed by channel name.

    Channel names of multilayer EXRs are Blender's full names (``ViewLayer.Combined.R``).
    """
    oiio = _oiio()
    inp = _open(path)
    try:
        channels: dict[str, np.ndarray] = {}
        for index, spec in enumerate(_parts(inp)):
            inp.seek_subimage(index, 0)
            pixels = inp.read_image(index, 0, 0, spec.nchannels, oiio.FLOAT)
            pixels = pixels.reshape(spec.height, spec.width, spec.nchannels)
            for c, name in enumerate(spec.channelnames):
                channels[name] = pixels[:, :, c]
        return channels
    finally:
        inp.close()


def to_single_part(source: Path, target: Path, header: Path | None = None) -> None:
    """Write every channel of a multi-part EXR into one part (for Cycles' standalone denoiser,
    which reads only the first part of a file; as Blender 4 writes multilayer EXRs).

    The header keeps the first part's attributes and every ``cycles.*`` attribute of the others
    (the denoiser needs ``cycles.<layer>.samples``); ``header``: a file whose first part's
    attributes come first (a single-part file Blender wrote for the same frame).
    """
    oiio = _oiio()
    inp = _open(source)
    try:
        layout = _parts(inp)
        names: list[str] = []
        blocks = []
        for index, spec in enumerate(layout):
            inp.seek_subimage(index, 0)
            pixels = inp.read_image(index, 0, 0, spec.nchannels, oiio.FLOAT)
            blocks.append(pixels.reshape(spec.height, spec.width, spec.nchannels))
            names += list(spec.channelnames)
        first = layout[0]
        spec = oiio.ImageSpec(first.width, first.height, len(names), oiio.FLOAT)
        spec.channelnames = tuple(names)
        given = []
        if header is not None:
            head = _open(header)
            try:
                given = [attr for attr in head.spec().extra_attribs
                         if attr.name not in _PIECE_ATTRIBUTES and attr.name != "name"]
            finally:
                head.close()
        for attr in given:
            spec.attribute(attr.name, attr.type, attr.value)
        for part in layout:
            for attr in part.extra_attribs:
                if attr.name in _PIECE_ATTRIBUTES or attr.name == "name":
                    continue
                if (part is first or attr.name.startswith("cycles.")) and \
                        spec.getattribute(attr.name) is None:
                    spec.attribute(attr.name, attr.type, attr.value)
    finally:
        inp.close()
    _write_parts(target, [spec], lambda _index: np.concatenate(blocks, axis=2))


@dataclass(frozen=True)
class PartSource:
    """Where a part of a composed file comes from.

    Attributes:
        name: the part's name in the new file (``ViewLayer.Noisy Image``).
        path: the file holding its pixels.
        source: the name of the channels' prefix there (``ViewLayer.Combined``): a part of
            that name, or those channels of a single-part file.
        template: a file whose part named ``template_part`` gives the pixel types and the
            header (None: the source's).
        template_part: the part of ``template`` to copy the header from.
    """

    name: str
    path: Path
    source: str
    template: Path | None = None
    template_part: str | None = None


def _channels_of(inp: Any, prefix: str) -> tuple[int, list[int], Any] | None:
    """(part index, channel indices, part spec) of the channels named ``prefix.*``."""
    for index, spec in enumerate(_parts(inp)):
        picked = [c for c, name in enumerate(spec.channelnames)
                  if name.rsplit(".", 1)[0] == prefix]
        if picked:
            return index, picked, spec
    return None


def compose_parts(target: Path, parts: Sequence[PartSource],
                  encoding: tuple[str, str] | None = None) -> None:
    """Write a multi-part EXR whose parts are taken (and renamed) from other files
    (encoded as :func:`exr_encoding` says, when given).

    Raises:
        MergeError: a source part is missing.
    """
    oiio = _oiio()
    opened: dict[Path, Any] = {}

    def source(path: Path) -> Any:
        if path not in opened:
            opened[path] = _open(path)
        return opened[path]

    try:
        plan = []
        specs = []
        for part in parts:
            found = _channels_of(source(part.path), part.source)
            if found is None:
                raise MergeError(f"no {part.source!r} channels to make {part.name!r} from",
                                 path=str(part.path))
            index, picked, src_spec = found
            template_spec = src_spec
            if part.template is not None:
                templ = _channels_of(source(part.template), part.template_part or part.source)
                if templ is not None and len(templ[1]) == len(picked):
                    template_spec = templ[2]
            spec = oiio.ImageSpec(template_spec)
            if len(spec.channelnames) != len(picked):  # a single-part source: narrow it
                spec = oiio.ImageSpec(src_spec.width, src_spec.height, len(picked), oiio.FLOAT)
            suffixes = [src_spec.channelnames[c].rsplit(".", 1)[1] for c in picked]
            spec.channelnames = tuple(f"{part.name}.{s}" for s in suffixes)
            spec.attribute("name", part.name)
            for name in _PIECE_ATTRIBUTES:
                spec.erase_attribute(name)
            plan.append((part.path, index, picked, src_spec))
            specs.append(_encoded(spec, encoding) if encoding is not None else spec)

        def pixels(i: int) -> np.ndarray:
            path, index, picked, spec = plan[i]
            inp = source(path)
            inp.seek_subimage(index, 0)
            data = inp.read_image(index, 0, 0, spec.nchannels, oiio.FLOAT)
            data = data.reshape(spec.height, spec.width, spec.nchannels)
            return np.ascontiguousarray(data[:, :, picked])

        write_atomically(target, lambda tmp: _write_parts(tmp, specs, pixels))
    finally:
        for inp in opened.values():
            inp.close()


#: OpenImageIO's names of Blender's EXR codecs
_CODECS = {"NONE": "none", "ZIP": "zip", "PIZ": "piz", "DWAA": "dwaa", "DWAB": "dwab",
           "ZIPS": "zips", "RLE": "rle", "PXR24": "pxr24", "B44": "b44", "B44A": "b44a"}


def exr_encoding(own: dict[str, Any]) -> tuple[str, str]:
    """``(depth, compression)`` of the multilayer EXR Blender writes with the output settings
    ``own`` (``color_depth``, ``exr_codec``, ``quality`` of a multilayer EXR output: the
    scene's own, or what Blender gives it when its format is switched to multilayer EXR,
    :meth:`~renderfarm.job.SceneInfo.multilayer_settings`); Blender's defaults, 32-bit float
    ZIP, when empty. DWAA/DWAB get the compression level Blender 5.0
    derives from the quality: ``(100 - quality) * 4.5`` (measured: quality 90, 45 and 10 give
    the same pixels as levels 45, 247.5 and 405)."""
    depth = str(own.get("color_depth") or "32")
    codec = str(own.get("exr_codec") or "ZIP")
    compression = _CODECS.get(codec, "zip")
    if compression in ("dwaa", "dwab"):
        level = (100 - int(own.get("quality", 90))) * 4.5
        if level != 45:  # OpenEXR's default, which Blender leaves out of the header
            compression = f"{compression}:{level:g}"
    return depth, compression


#: passes whose channels are colours (R, G, B, A) but hold data: Blender keeps them 32-bit
_CRYPTO_PART = re.compile(r"\.Crypto\w+\d\d$")


def _encoded(spec: Any, encoding: tuple[str, str]) -> Any:
    """``spec`` as Blender encodes the part with ``encoding``: at 16 bits only colour passes
    (channels R, G, B, A; not Cryptomatte) become half floats, data passes (depth, normals,
    vectors, UV, indices, value AOVs, Cryptomatte) stay 32-bit (measured on every pass of
    Cycles in Blender 5.0, whose parts hold a pass each, and in Blender 4.2 and 4.5, whose
    one part holds them all: its channels then have a format each)."""
    oiio = _oiio()
    depth, compression = encoding
    spec = oiio.ImageSpec(spec)
    for attribute in _PIECE_ATTRIBUTES:  # the source's layout: OpenEXR counts its own chunks
        spec.erase_attribute(attribute)
    name = str(spec.getattribute("name") or "")
    passes: dict[str, list[str]] = {}  # a part per pass (Blender 5), or all in one (4)
    for channel in spec.channelnames:
        group = channel.rsplit(".", 1)[0] if "." in channel else name
        passes.setdefault(group, []).append(channel.rsplit(".", 1)[-1])

    def half(group: str) -> bool:
        colour = all(c in ("R", "G", "B", "A") for c in passes[group])
        return depth == "16" and colour and not _CRYPTO_PART.search(group) \
            and not _CRYPTO_PART.search(name)

    formats = [half(c.rsplit(".", 1)[0] if "." in c else name) for c in spec.channelnames]
    if all(formats) or not any(formats):
        spec.set_format(oiio.HALF if formats and formats[0] else oiio.FLOAT)
    else:  # Blender 4's single part: colour passes in half, data passes in float
        spec.set_format(oiio.FLOAT)
        spec.channelformats = tuple(oiio.TypeDesc(oiio.HALF if h else oiio.FLOAT)
                                    for h in formats)
    spec.attribute("compression", compression)
    return spec


def recode_exr(source: Path, target: Path, encoding: tuple[str, str]) -> None:
    """Write the (32-bit) multilayer EXR ``source`` as ``target`` with Blender's depth and
    codec ``encoding`` (:func:`exr_encoding`); a move when nothing changes."""
    if encoding == ("32", "zip"):
        os.replace(source, target)
        return
    inp = _open(source)
    try:
        specs = [_encoded(spec, encoding) for spec in _parts(inp)]

        def pixels(index: int) -> np.ndarray:
            inp.seek_subimage(index, 0)
            return inp.read_image(index, 0, 0, specs[index].nchannels, _oiio().FLOAT)

        _write_parts(target, specs, pixels)
    finally:
        inp.close()


#: passes Cycles writes from a pixel's first sample only: a split by samples keeps the first
#: range's values
_FIRST_SAMPLE_PASSES = ("Depth", "Position", "Object Index", "Material Index",
                        "Denoising Depth")
#: light passes Cycles writes divided by their colour pass (when that pass is on)
_DIVIDED_PASSES = {f"{kind} {part}": f"{kind} Color"
                   for kind in ("Diffuse", "Glossy", "Transmission")
                   for part in ("Direct", "Indirect")}
_CRYPTO = re.compile(r"^(?P<group>.+\.Crypto\w+?)(?P<rank>\d\d)$")


def combine_samples(chunks: Sequence[Path], weights: Sequence[int], target: Path) -> None:
    """Combine frames rendered with disjoint sample ranges into the frame of all samples.

    Each pass is combined the way Cycles accumulates it: weighted by the ranges' sample
    counts; first-sample passes (Depth, Position, indices) from the first range; light passes
    stored divided by their colour pass as the ratio of the sums; Cryptomatte by adding each
    ID's coverage over the ranges and ranking again.

    Args:
        chunks: the frames, first sample range first (same parts and sizes).
        weights: the number of samples each rendered.
        target: the EXR to write (the first frame's parts and headers).

    Raises:
        MergeError: the frames do not have the same parts.
    """
    oiio = _oiio()
    inputs = [_open(p) for p in chunks]
    try:
        layouts = [_parts(inp) for inp in inputs]
        names = [_part_name(s, i) for i, s in enumerate(layouts[0])]
        for path, layout in zip(chunks, layouts, strict=True):
            if [_part_name(s, i) for i, s in enumerate(layout)] != names:
                raise MergeError("sample ranges of a frame have different passes",
                                 path=str(path))
        specs = [_frame_spec(s, Rect(0, 0, s.width, s.height)) for s in layouts[0]]
        total = float(sum(weights))
        share = [w / total for w in weights]
        cache: dict[str, dict[str, np.ndarray]] = {}

        def read(index: int) -> list[np.ndarray]:
            spec = specs[index]
            blocks = []
            for inp in inputs:
                inp.seek_subimage(index, 0)
                data = inp.read_image(index, 0, 0, spec.nchannels, oiio.FLOAT)
                blocks.append(data.reshape(spec.height, spec.width, spec.nchannels))
            return blocks

        def average(blocks: list[np.ndarray]) -> np.ndarray:
            acc = np.zeros(blocks[0].shape, np.float64)
            for block, part in zip(blocks, share, strict=True):
                acc += part * block
            return acc.astype(np.float32)

        def pixels(index: int) -> np.ndarray:
            name = names[index]
            layer_pass = name.rsplit(".", 1)
            crypto = _CRYPTO.match(name)
            if crypto:
                group = crypto.group("group")
                if group not in cache:
                    members = [i for i, n in enumerate(names)
                               if (m := _CRYPTO.match(n)) and m.group("group") == group]
                    per_chunk = [np.concatenate(b, axis=2) for b in
                                 zip(*(read(i) for i in members), strict=True)]
                    merged = _merge_cryptomatte(per_chunk, share)
                    cache[group] = {names[i]: merged[..., 4 * r:4 * r + 4]
                                    for r, i in enumerate(members)}
                return cache[group].pop(name)
            if len(layer_pass) == 2 and layer_pass[1] in _FIRST_SAMPLE_PASSES:
                return read(index)[0]
            if len(layer_pass) == 2 and layer_pass[1] in _DIVIDED_PASSES:
                colour = f"{layer_pass[0]}.{_DIVIDED_PASSES[layer_pass[1]]}"
                if colour in names:
                    light, tint = read(index), read(names.index(colour))
                    num = average([d * c for d, c in zip(light, tint, strict=True)])
                    den = average(tint)
                    safe = np.where(den != 0, den, 1)
                    return np.where(den != 0, num / safe, 0).astype(np.float32)
            return average(read(index))

        write_atomically(target, lambda tmp: _write_parts(tmp, specs, pixels))
    finally:
        for inp in inputs:
            inp.close()


def _merge_cryptomatte(chunks: Sequence[np.ndarray], share: Sequence[float]) -> np.ndarray:
    """Cryptomatte ranks (id, coverage pairs over RGBA channels) of several sample ranges
    as one: each ID's coverage is the weighted sum over the ranges, ranked again (exact while
    a pixel sees no more IDs than the layer's Cryptomatte levels keep)."""
    height, width, channels = chunks[0].shape
    pairs = channels // 2
    ids = np.concatenate([c[..., 0::2] for c in chunks], axis=2).view(np.uint32)
    cover = np.concatenate([c[..., 1::2].astype(np.float64) * s
                            for c, s in zip(chunks, share, strict=True)], axis=2)
    out = np.zeros((height, width, channels), np.float32)
    for top in range(0, height, 64):
        rows = slice(top, top + 64)
        strip_ids, strip_cover = ids[rows], cover[rows]
        unique = np.unique(strip_ids[strip_cover > 0])
        if unique.size == 0:
            continue
        acc = np.stack([np.where(strip_ids == u, strip_cover, 0).sum(axis=2) for u in unique],
                       axis=2)
        keep = min(pairs, unique.size)
        # by coverage; IDs of equal coverage may come in another order than Cycles' (which
        # keeps its own accumulation order): readers add coverage per ID, so it is the same
        order = np.argsort(-acc, axis=2, kind="stable")[..., :keep]
        weight = np.take_along_axis(acc, order, axis=2).astype(np.float32)
        rank_ids = np.where(weight > 0, unique[order].view(np.float32), 0)
        out[rows, :, 0:2 * keep:2] = rank_ids
        out[rows, :, 1:2 * keep:2] = weight
    return out


#: between a view's name and a part's name in a piece that holds several views
VIEW_MARK = "/"


def pack_views(files: Sequence[tuple[str, Path]], target: Path) -> None:
    """One piece of every view's piece (multilayer EXRs Blender wrote for one view each):
    each part kept as it is (header, window, pixels), named ``<view>/<part>``.

    Raises:
        MergeError: a file cannot be read.
    """
    inputs = [(view, _open(path)) for view, path in files]
    try:
        _copy_parts(target, [(inp, index, spec, f"{view}{VIEW_MARK}")
                             for view, inp in inputs
                             for index, spec in enumerate(_parts(inp))], "")
    finally:
        for _view, inp in inputs:
            inp.close()


def unpack_view(source: Path, view: str, target: Path) -> None:
    """The piece of one ``view`` from a piece :func:`pack_views` wrote.

    Raises:
        MergeError: the piece holds no such view.
    """
    inp = _open(source)
    try:
        prefix = f"{view}{VIEW_MARK}"
        parts = [(inp, index, spec, "") for index, spec in enumerate(_parts(inp))
                 if _part_name(spec, index).startswith(prefix)]
        if not parts:
            raise MergeError(f"the piece holds no view {view!r}", path=str(source))
        _copy_parts(target, parts, prefix)
    finally:
        inp.close()


def _copy_parts(target: Path, parts: Sequence[tuple[Any, int, Any, str]], strip: str) -> None:
    """Write the parts ``(open file, part index, its spec, prefix to add)`` into
    ``target`` as they are (header, window, pixel type), their part and channel names
    given the prefix, or with ``strip`` taken off their start."""
    specs = []
    for _inp, index, spec, prefix in parts:
        part = _oiio().ImageSpec(spec)

        def renamed(name: str, prefix: str = prefix) -> str:
            return prefix + (name[len(strip):] if strip and name.startswith(strip) else name)

        part.attribute("name", renamed(_part_name(spec, index)))
        part.channelnames = tuple(renamed(c) for c in spec.channelnames)
        for attribute in _PIECE_ATTRIBUTES:
            part.erase_attribute(attribute)
        specs.append(part)

    def pixels(i: int) -> np.ndarray:
        inp, index, spec, _prefix = parts[i]
        inp.seek_subimage(index, 0)
        return np.asarray(inp.read_image(index, 0, 0, spec.nchannels, spec.format))

    write_atomically(target, lambda tmp: _write_parts(tmp, specs, pixels))


def piece_stats(path: Path) -> dict[str, str]:
    """The render statistics Blender wrote into a file (``cycles.<layer>.samples``,
    ``..._time``: its first part's ``cycles.*`` metadata), as text."""
    inp = _open(path)
    try:
        return {attr.name: str(attr.value) for attr in inp.spec().extra_attribs
                if attr.name.startswith("cycles.")}
    finally:
        inp.close()


def part_names(path: Path) -> list[str]:
    """The part names of a multi-part EXR, in order."""
    inp = _open(path)
    try:
        return [_part_name(s, i) for i, s in enumerate(_parts(inp))]
    finally:
        inp.close()


def channel_prefixes(path: Path) -> set[str]:
    """``layer.pass`` names of every channel of an EXR (all parts)."""
    inp = _open(path)
    try:
        return {c.rsplit(".", 1)[0] for spec in _parts(inp) for c in spec.channelnames}
    finally:
        inp.close()


def image_size(path: Path) -> tuple[int, int]:
    """Width and height of an image (Blender reports 0x0 for a multilayer EXR not read yet)."""
    inp = _open(path)
    try:
        return inp.spec().width, inp.spec().height
    finally:
        inp.close()


def drop_parts(source: Path, target: Path, names: Sequence[str]) -> None:
    """Copy ``source`` to ``target`` without the parts called ``names``."""
    drop = set(names)
    compose_parts(target, [PartSource(n, source, n) for n in part_names(source) if n not in drop])


def values_differ(a: np.ndarray, b: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """Where two arrays of pixel values differ: finite values by more than ``tolerance``
    (0: any difference), NaN and infinities unless the other holds the same (NaN and NaN,
    +inf and +inf) at the same place."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    same_special = (np.isnan(x) & np.isnan(y)) | (np.isinf(x) & (x == y))
    with np.errstate(invalid="ignore"):
        beyond = np.abs(x - y) > tolerance
    return np.where(finite, beyond, ~same_special)


def compare_images(first: Path, second: Path, tolerance: float = 0.0) -> tuple[bool, str]:
    """Whether two images hold the same pixels: the same parts, channels and size, and every
    value equal (``tolerance`` 0: bit for bit, NaN equal to NaN) or within ``tolerance``.

    Metadata is not compared (render times differ between two renders of one piece). A file
    that cannot be read is unequal to anything.

    Returns:
        ``(equal, what differs)`` — the second is "" when equal.
    """
    try:
        inputs = [_open(first), _open(second)]
    except MergeError as exc:
        return False, exc.one_line()
    try:
        layouts = [_parts(inp) for inp in inputs]
        shapes = [[(_part_name(s, i), tuple(s.channelnames), s.width, s.height)
                   for i, s in enumerate(layout)] for layout in layouts]
        if shapes[0] != shapes[1]:
            return False, "the parts, channels or sizes differ"
        oiio = _oiio()
        for index, (name, channels, width, height) in enumerate(shapes[0]):
            pixels = []
            for inp in inputs:
                inp.seek_subimage(index, 0)
                data = inp.read_image(index, 0, 0, len(channels), oiio.FLOAT)
                if data is None:
                    return False, f"part {name} cannot be read: {inp.geterror()}"
                pixels.append(np.asarray(data, np.float32).reshape(height, width,
                                                                    len(channels)))
            wrong = values_differ(*pixels, tolerance)
            if wrong.any():
                a, b = (p[wrong].astype(np.float64) for p in pixels)
                with np.errstate(invalid="ignore"):
                    diff = np.nan_to_num(np.abs(a - b), nan=np.inf)
                return False, (f"part {name}: {int(wrong.sum())} of {wrong.size} values "
                               f"differ, by up to {float(diff.max()):.6g}")
        return True, ""
    finally:
        for inp in inputs:
            inp.close()


def corrupt_image(path: Path, how: str) -> None:
    """Spoil a rendered piece in place, as a broken or dishonest worker would (fault
    injection): ``pixels`` moves a few values slightly, ``blank`` zeroes every value."""
    inp = _open(path)
    try:
        specs = [_oiio().ImageSpec(s) for s in _parts(inp)]
        parts = []
        for index, spec in enumerate(specs):
            inp.seek_subimage(index, 0)
            data = np.array(inp.read_image(index, 0, 0, spec.nchannels, _oiio().FLOAT),
                            np.float32).reshape(spec.height, spec.width, spec.nchannels)
            parts.append(data)
    finally:
        inp.close()
    if how == "blank":
        parts = [np.zeros_like(p) for p in parts]
    else:
        first = parts[0]
        for y, x in ((0, 0), (first.shape[0] // 2, first.shape[1] // 2), (-1, -1)):
            first[y, x, 0] = first[y, x, 0] + 0.25 if first[y, x, 0] < 0.5 else 0.0
    write_atomically(path, lambda tmp: _write_parts(tmp, specs, lambda i: parts[i]))


def thumbnail(path: Path, width: int = 160) -> bytes:
    """A small sRGB PNG of an image's Combined pass (scene-linear values are encoded with
    the sRGB transfer function), ``width`` pixels wide, for contact sheets."""
    import tempfile

    oiio = _oiio()
    pixels, _channels, linear = read_combined(path)
    rgb = pixels[..., :3] if pixels.shape[2] >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    rgb = np.nan_to_num(np.clip(rgb, 0.0, 1.0), nan=0.0)
    if linear:
        rgb = np.where(rgb <= 0.0031308, rgb * 12.92, 1.055 * np.power(rgb, 1 / 2.4) - 0.055)
    height, full_width = rgb.shape[:2]
    small_height = max(1, round(height * width / max(full_width, 1)))
    source = oiio.ImageBuf(oiio.ImageSpec(full_width, height, 3, oiio.FLOAT))
    source.set_pixels(oiio.ROI(), np.ascontiguousarray(rgb, np.float32))
    small = oiio.ImageBufAlgo.resize(source, roi=oiio.ROI(0, width, 0, small_height, 0, 1, 0, 3))
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "thumb.png"
        small.set_write_format(oiio.UINT8)
        if not small.write(str(target)):
            raise MergeError(f"cannot write a thumbnail: {small.geterror()}", path=str(path))
        return target.read_bytes()
