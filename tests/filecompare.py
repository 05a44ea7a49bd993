"""What a user compares between two image files: format, bit depth, channels, compression,
views, metadata keys and values, and pixels (with OpenImageIO, subimage by subimage)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: metadata that differs between two renders of the same scene on the same machine (times,
#: memory, dates, host), compared by key only
VOLATILE = ("Date", "Time", "RenderTime", "Memory", "DateTime", "Hostname", "capDate",
            "total_time", "render_time", "synchronization_time", "kernel_loading_time")
#: attributes OpenImageIO adds on reading or that name the writing library
IGNORED = ("oiio:", "Software", "openexr:chunkCount", "openexr:version",
           "openexr:lineOrder", "ImageDescription")


@dataclass
class ImageFacts:
    """One file as a user would check it."""

    format: str
    parts: list[tuple[str, str, tuple[str, ...], str, str]]  # name, view, channels, type, codec
    metadata: dict[str, Any] = field(default_factory=dict)
    pixels: list[np.ndarray] = field(default_factory=list)


def _volatile(key: str) -> bool:
    return any(key == v or key.endswith("." + v) or key.endswith(v) for v in VOLATILE)


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
        if index == 0:
            for attr in spec.extra_attribs:
                if not any(attr.name.startswith(p) for p in IGNORED):
                    found.metadata[attr.name] = attr.value
        found.pixels.append(np.asarray(inp.read_image(index, 0, 0, spec.nchannels,
                                                      spec.format)))
        index += 1
    inp.close()
    return found


def differences(got: Path, want: Path, tolerance: float = 0.0,
                known: Sequence[str] = ()) -> list[str]:
    """What differs between the farm's file ``got`` and Blender's ``want`` (empty: the same
    file as far as a user can tell). Pixels must be equal within ``tolerance``; volatile
    metadata (times, dates, memory) is compared by key; metadata keys starting with one of
    ``known`` (after a ``Format:`` prefix) are differences the farm states (not compared)."""
    a, b = facts(got), facts(want)
    for key in [k for k in {*a.metadata, *b.metadata}
                if k.startswith(tuple(known))
                or k.rsplit(":", 1)[-1].startswith(tuple(known))]:  # JPEG: Blender:File
        a.metadata.pop(key, None)
        b.metadata.pop(key, None)
    found = []
    if a.format != b.format:
        found.append(f"format {a.format} != {b.format}")
    if a.parts != b.parts:
        found.append(f"parts {a.parts} != {b.parts}")
    missing = sorted(set(b.metadata) - set(a.metadata))
    extra = sorted(set(a.metadata) - set(b.metadata))
    if missing or extra:
        found.append(f"metadata keys missing {missing}, extra {extra}")
    for key in sorted(set(a.metadata) & set(b.metadata)):
        if not _volatile(key) and a.metadata[key] != b.metadata[key]:
            found.append(f"metadata {key}: {a.metadata[key]!r} != {b.metadata[key]!r}")
    if len(a.pixels) == len(b.pixels):
        for index, (x, y) in enumerate(zip(a.pixels, b.pixels, strict=True)):
            if x.shape != y.shape:
                found.append(f"part {index}: shape {x.shape} != {y.shape}")
                continue
            delta = np.abs(x.astype(np.float64) - y.astype(np.float64))
            if delta.max(initial=0) > tolerance:
                found.append(f"part {index}: {int((delta > tolerance).sum())} values differ, "
                             f"max {float(delta.max()):.6g}")
    return found
