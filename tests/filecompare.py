"""What a user compares between two image files: format, bit depth, channels, compression,
views, metadata keys and values, and pixels (with OpenImageIO, subimage by subimage)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: metadata whose value differs between two renders of the same scene on the same machine,
#: compared by key only (the key must be in both files): each key exactly (after JPEG's
#: ``Blender:`` prefix), the file kinds (OpenImageIO's format names) Blender writes it in, and
#: why its value cannot be compared
_STAMPED = ("png", "jpeg", "openexr")
VOLATILE: dict[str, tuple[tuple[str, ...], str]] = {
    "Date": (_STAMPED, "Blender's stamp: the clock when the frame was written"),
    "RenderTime": (_STAMPED, "Blender's stamp: how long the render took"),
    "Memory": (_STAMPED, "Blender's stamp: the memory the render used"),
    "Hostname": (_STAMPED, "Blender's stamp: the machine that rendered (a worker)"),
    "DateTime": (("tiff",), "the TIFF header: the clock when the file was written"),
}
#: Cycles' render statistics per view layer, ``cycles.<layer>.<statistic>``, in the stamped
#: kinds: durations, which differ between two renders (``samples`` is not one of them: it is
#: compared)
VOLATILE_STATISTICS = re.compile(
    r"^cycles\..+\.(total_time|render_time|synchronization_time|kernel_loading_time)$")
#: attributes not compared at all, with why (none: everything OpenImageIO reads of a file,
#: its own ``oiio:`` facts included, is compared)
IGNORED: dict[str, str] = {}


@dataclass
class ImageFacts:
    """One file as a user would check it."""

    format: str
    parts: list[tuple[str, str, tuple[str, ...], str, str]]  # name, view, channels, type, codec
    metadata: dict[str, Any] = field(default_factory=dict)  # the first part's
    pixels: list[np.ndarray] = field(default_factory=list)
    #: every part's metadata, in order (the first is ``metadata``)
    part_metadata: list[dict[str, Any]] = field(default_factory=list)


def unequal(x: np.ndarray, y: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """Where two arrays of values differ: finite values by more than ``tolerance``; NaN and
    infinities unless the other file holds the same (NaN and NaN, +inf and +inf) at the
    same place. A NaN makes a difference that a ``max() > tolerance`` test cannot see
    (NaN > t is false), so every comparison goes through this (the farm's verification
    uses the same rule, :func:`renderfarm.merge.values_differ`)."""
    from renderfarm.merge import values_differ

    return values_differ(x, y, tolerance)


def _volatile(key: str, kind: str) -> bool:
    bare = key.removeprefix("Blender:")
    if bare in VOLATILE:
        return kind in VOLATILE[bare][0]
    return kind in _STAMPED and bool(VOLATILE_STATISTICS.match(bare))


def facts(path: Path) -> ImageFacts:
    """Read ``path``'s format, parts, metadata and pixels."""
    import OpenImageIO as oiio

    inp = oiio.ImageInput.open(str(path))
    assert inp is not None, f"{path}: {oiio.geterror()}"
    found = ImageFacts(inp.format_name(), [])
    index = 0
    while inp.seek_subimage(index, 0):
        spec = inp.spec()
        found.parts.append((str(spec.getattribute("name") or ""),
                            str(spec.getattribute("view") or ""),
                            tuple(spec.channelnames), str(spec.format),
                            str(spec.getattribute("compression") or "")))
        found.part_metadata.append({attr.name: attr.value for attr in spec.extra_attribs
                                    if attr.name not in IGNORED})
        found.pixels.append(np.asarray(inp.read_image(index, 0, 0, spec.nchannels,
                                                      spec.format)))
        index += 1
    inp.close()
    found.metadata = found.part_metadata[0] if found.part_metadata else {}
    return found


def differences(got: Path, want: Path, tolerance: float = 0.0,
                known: Sequence[str] = ()) -> list[str]:
    """What differs between the farm's file ``got`` and Blender's ``want`` (empty: the same
    file as far as a user can tell). Pixels must be equal within ``tolerance`` (NaN and
    infinities only where the other file has the same); every part's metadata is compared:
    :data:`VOLATILE` values (times, dates, memory) by key, the rest by value; metadata keys
    ``known`` (after a ``Format:`` prefix) are differences the farm states, not compared."""
    a, b = facts(got), facts(want)
    stated = tuple(known)
    found = []
    if a.format != b.format:
        found.append(f"format {a.format} != {b.format}")
    if a.parts != b.parts:
        found.append(f"parts {a.parts} != {b.parts}")
    for index, (mine, theirs) in enumerate(zip(a.part_metadata, b.part_metadata,
                                               strict=False)):
        where = f"part {index} " if index else ""
        keys = {k for k in {*mine, *theirs} if k not in stated
                and k.rsplit(":", 1)[-1] not in stated}  # JPEG: Blender:File
        missing = sorted(keys & set(theirs) - set(mine))
        extra = sorted(keys & set(mine) - set(theirs))
        if missing or extra:
            found.append(f"{where}metadata keys missing {missing}, extra {extra}")
        for key in sorted(keys & set(mine) & set(theirs)):
            if not _volatile(key, b.format) and mine[key] != theirs[key]:
                found.append(f"{where}metadata {key}: {mine[key]!r} != {theirs[key]!r}")
    if len(a.pixels) == len(b.pixels):
        for index, (x, y) in enumerate(zip(a.pixels, b.pixels, strict=True)):
            if x.shape != y.shape:
                found.append(f"part {index}: shape {x.shape} != {y.shape}")
                continue
            wrong = unequal(x, y, tolerance)
            if wrong.any():
                a64, b64 = x[wrong].astype(np.float64), y[wrong].astype(np.float64)
                special = ~(np.isfinite(a64) & np.isfinite(b64))
                with np.errstate(invalid="ignore"):
                    largest = np.abs(a64 - b64)[~special].max(initial=0)
                found.append(f"part {index}: {int(wrong.sum())} values differ, max "
                             f"{float(largest):.6g}" + (f", {int(special.sum())} of them NaN "
                                                         "or infinite in one file only"
                                                         if special.any() else ""))
    return found
