"""Finishing a merged frame on a worker: the steps that read and write EXR parts with
OpenImageIO run here, in the worker's own Python; the steps that need Blender (Cycles'
denoiser, the compositor, Blender's writer for other formats) run in its Blender process
(:mod:`renderfarm.blender.child`), whose code imports only the standard library and ``bpy``,
so it runs in any Blender's Python (3.11 for Blender 4.2 to 5.0, 3.13 for 5.1 and later).

``call(method, *args)`` runs one of the Blender session's methods in that process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from renderfarm.errors import RenderError

#: runs a method of the worker's Blender session in its Blender process
Call = Callable[..., Any]

#: passes Cycles' denoiser replaces with a denoised version (Blender also keeps "Noisy <pass>")
DENOISED_PASSES = ("Combined", "Shadow Catcher")


def pack_piece_views(views: Sequence[tuple[str, str]], target: str) -> None:
    """Pack the file Blender wrote for each view of a piece (``[(view, path)]``) into
    ``target``, one piece; the view files are removed."""
    from renderfarm.merge import pack_views

    try:
        pack_views([(name, Path(path)) for name, path in views], Path(target))
    finally:
        for _name, path in views:
            if os.path.exists(path):
                os.remove(path)


def finish(call: Call, merged: str, target: str, file_format: str,
           frame: int | None = None) -> None:
    """Turn a merged frame into the job's output, as the prepared job's scene writes it:
    denoise it when the job renders noisy pieces, run the compositor on it when the job
    composites after the merge, else write it in ``file_format`` (a multilayer EXR with the
    scene's own encoding; another format through Blender's writer, with the scene's colour
    management). ``frame`` sets the metadata's and the stamp's frame.

    Raises:
        RenderError: the denoiser, the compositor or Blender's writer failed.
    """
    from renderfarm.merge import combined_rgba, exr_encoding, recode_exr

    plan = call("finish_plan")
    encoding = exr_encoding(plan["exr"])
    work = merged
    try:
        if plan["denoise"]:
            work = _denoise(call, merged)
        if plan["composite"]:
            _composite(call, work, target, file_format, frame, encoding)
        elif file_format == "OPEN_EXR_MULTILAYER":
            recode_exr(Path(work), Path(target), encoding)
        else:
            rgba = f"{merged}.rgba.exr"
            try:
                combined_rgba(Path(work), Path(rgba))
                call("convert", rgba, target, file_format, frame)
            finally:
                if os.path.exists(rgba):
                    os.remove(rgba)
    finally:
        if work != merged and os.path.exists(work):
            os.remove(work)


def _denoise(call: Call, merged: str) -> str:
    """Denoise a merged noisy frame with Cycles' standalone denoiser in Blender's process;
    return the file that holds what Blender writes for a render-time denoised frame (the same
    parts, in its order)."""
    from renderfarm.merge import PartSource, channel_prefixes, to_single_part

    single, denoised, final = (f"{merged}.{name}.exr" for name in
                               ("single", "denoised", "final"))
    to_single_part(Path(merged), Path(single))  # as Cycles' denoiser reads a frame
    try:
        layout = call("denoise", single, denoised)
    finally:
        if os.path.exists(single):
            os.remove(single)
    try:
        denoised_names = channel_prefixes(Path(denoised))
        parts = []
        for layer_name, passes in layout["passes"].items():
            for name in passes:
                part = f"{layer_name}.{name}"
                if name.startswith("Noisy "):  # the noisy pass Blender keeps: the merged one
                    noisy = "Combined" if name == "Noisy Image" else name[len("Noisy "):]
                    parts.append(PartSource(part, Path(merged), f"{layer_name}.{noisy}"))
                elif (layer_name in layout["layers"] and part in denoised_names
                      and name in DENOISED_PASSES):
                    parts.append(PartSource(part, Path(denoised), part, Path(merged), part))
                else:
                    parts.append(PartSource(part, Path(merged), part))
        compose_as(Path(merged), Path(final), parts)
    finally:
        if os.path.exists(denoised):
            os.remove(denoised)
    return final


def _composite(call: Call, source: str, target: str, file_format: str, frame: int | None,
               encoding: tuple[str, str]) -> None:
    """Run the scene's compositor once on the merged frame ``source`` in Blender's process;
    a multilayer EXR also keeps the frame's passes after the ``Composite`` part, as Blender
    writes it."""
    from renderfarm.merge import PartSource, channel_prefixes, image_size, part_names

    written = call("composite", source, image_size(Path(source)), file_format, frame)
    if not isinstance(written, str) or not os.path.isfile(written):
        raise RenderError("Blender's compositor wrote no image", path=source)
    if file_format != "OPEN_EXR_MULTILAYER":
        os.replace(written, target)
        return
    parts = [PartSource("Composite.Combined", Path(written), "Composite.Combined")]
    names = part_names(Path(source))
    if len(names) == 1:  # Blender 4's layout: every pass in one part
        names = sorted(channel_prefixes(Path(source)))
    parts += [PartSource(name, Path(source), name) for name in names]
    try:
        compose_as(Path(source), Path(target), parts, encoding, Path(written))
    finally:
        os.remove(written)


def compose_as(like: Path, target: Path, parts: list[Any],
               encoding: tuple[str, str] | None = None, header: Path | None = None) -> None:
    """:func:`~renderfarm.merge.compose_parts`, laid out as Blender laid out ``like`` (a
    frame merged from its pieces): a part per pass (Blender 5), or every channel in one part
    (Blender 4 writes multilayer EXRs so) whose header is ``header``'s when given (else the
    first part's)."""
    from renderfarm.merge import compose_parts, part_names, to_single_part

    if len(part_names(like)) > 1:
        compose_parts(target, parts, encoding)
        return
    parted = target.with_name(f"{target.name}.parts.exr")
    try:
        compose_parts(parted, parts, encoding)
        to_single_part(parted, target, header)
    finally:
        parted.unlink(missing_ok=True)
