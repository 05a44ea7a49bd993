"""Small 8-bit previews of finished tiles, for the add-on's live image and the status page.

A preview is the tile's Combined pass, scaled so the whole frame fits in
:data:`PREVIEW_SIZE` pixels, in 8-bit RGBA as the scene's 8-bit file shows it: scene-linear
pieces go through the scene's colour management (:attr:`renderfarm.job.SceneInfo.display`:
exposure, look, view transform, display, gamma) with Blender's own OpenColorIO configuration,
by OpenImageIO, as Blender does when it writes a PNG, so a finished frame's preview equals its
8-bit file within rounding (dither aside). Curves and white balance are not applied. Without
Blender's configuration on this machine (a head without ``bpy``), or for a view it does not
know, pieces are encoded with the sRGB transfer function (Blender's "Standard" view). Rows are
top first; ``x``/``y`` count from the canvas' top-left corner.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from renderfarm.job import Rect, Tile

logger = logging.getLogger(__name__)

#: the longest side of a frame's preview, in pixels
PREVIEW_SIZE = 512


@dataclass(frozen=True)
class TilePreview:
    """A tile's preview.

    Attributes:
        x: left column in the preview of the whole frame.
        y: top row in the preview of the whole frame.
        width: columns.
        height: rows.
        frame_width: the whole frame's preview width.
        frame_height: the whole frame's preview height.
        rgba: ``height * width * 4`` bytes, top row first.
    """

    x: int
    y: int
    width: int
    height: int
    frame_width: int
    frame_height: int
    rgba: bytes

    def header(self) -> dict[str, Any]:
        """The preview's fields for an event (the pixels travel apart, compressed)."""
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height,
                "frame_width": self.frame_width, "frame_height": self.frame_height,
                "encoding": "rgba8+zlib"}


def preview_scale(canvas: Rect, size: int = PREVIEW_SIZE) -> float:
    """The scale that fits ``canvas`` in ``size`` pixels (never above 1)."""
    return min(1.0, size / max(canvas.width, canvas.height))


def _edge(value: int, origin: int, scale: float) -> int:
    return int((value - origin) * scale)


def srgb8(linear: np.ndarray) -> np.ndarray:
    """Scene-linear values (0..1 shown) to sRGB-encoded 8-bit values."""
    clipped = np.clip(linear, 0.0, 1.0)
    encoded = np.where(clipped <= 0.0031308, clipped * 12.92,
                       1.055 * np.power(clipped, 1 / 2.4) - 0.055)
    return np.rint(encoded * 255.0).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def blender_ocio_config() -> str | None:
    """The OpenColorIO configuration Blender's ``bpy`` carries on this machine (found
    without importing ``bpy``), or None."""
    try:
        spec = importlib.util.find_spec("bpy")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        found = sorted(glob.glob(os.path.join(folder, "*", "datafiles", "colormanagement",
                                              "config.ocio")))
        if found:
            return found[-1]
    return None


@functools.lru_cache(maxsize=8)
def _look_spaces(config: str) -> dict[str, str]:
    """``{look: its process space}`` of an OpenColorIO configuration (where Blender applies
    a look before the view)."""
    text = Path(config).read_text(encoding="utf-8", errors="replace")
    return {m.group(1).strip(): m.group(2).strip() for m in re.finditer(
        r"-\s*!<Look>\s*\n\s*name:\s*(.+?)\s*\n\s*process_space:\s*(.+?)\s*\n", text)}


def display_rgb(rgb: np.ndarray, display: Mapping[str, Any]) -> np.ndarray | None:
    """Scene-linear RGB ``(height, width, 3)`` as the scene's display shows it (0..1), as
    Blender's display processor makes it: exposure, look, view transform, display, gamma; or
    None when Blender's configuration is not here or does not know the view.
    """
    config = blender_ocio_config()
    view = str(display.get("view_transform") or "")
    if config is None or not view:
        return None
    import OpenImageIO as oiio

    height, width = rgb.shape[:2]
    data = np.ascontiguousarray(rgb, dtype=np.float32)
    exposure = float(display.get("exposure") or 0.0)
    if exposure:
        data = data * np.float32(2.0 ** exposure)
    buf = oiio.ImageBuf(oiio.ImageSpec(width, height, 3, oiio.FLOAT))
    buf.set_pixels(oiio.ROI(), data)
    space = str(display.get("working_space") or "Linear Rec.709")
    look = str(display.get("look") or "None")
    if look != "None":
        process = _look_spaces(config).get(look)
        if process is not None:  # Blender: the look into its space, then the view from there
            buf = oiio.ImageBufAlgo.ociolook(buf, look, space, process, unpremult=False,
                                             colorconfig=config)
            space = process
    out = oiio.ImageBufAlgo.ociodisplay(buf, str(display.get("display_device") or "sRGB"),
                                        view, fromspace=space, looks="", unpremult=False,
                                        colorconfig=config)
    if out.has_error:
        logger.info("no %s view for previews: %s", view, out.geterror())
        return None
    shown = np.asarray(out.get_pixels(oiio.FLOAT), dtype=np.float32).reshape(height, width, 3)
    gamma = float(display.get("gamma") or 1.0)
    if gamma != 1.0:
        shown = np.power(np.clip(shown, 0.0, None), 1.0 / max(gamma, 1e-6))
    return shown


def to_rgba8(pixels: np.ndarray, channels: list[str], linear: bool,
             display: Mapping[str, Any] | None = None) -> np.ndarray:
    """Float pixels with named channels to 8-bit RGBA (alpha 255 when there is none).

    Args:
        pixels: ``(height, width, channels)`` floats.
        channels: their names (``R``, ``G``, ``B``, ``A``; one channel: grey).
        linear: whether they are scene-linear (an EXR's) rather than display values.
        display: the scene's colour management (:attr:`renderfarm.job.SceneInfo.display`)
            for scene-linear pixels; without it (or Blender's configuration), the sRGB
            transfer function.
    """
    height, width = pixels.shape[:2]
    out = np.full((height, width, 4), 255, dtype=np.uint8)
    rgb = np.zeros((height, width, 3), dtype=np.float32)
    for target, name in enumerate("RGB"):
        source = name if name in channels else (channels[0] if channels else None)
        if source is not None:  # grey images: the first channel in R, G and B
            rgb[:, :, target] = pixels[:, :, channels.index(source)]
    shown = display_rgb(rgb, display) if linear and display else None
    if shown is not None:
        out[:, :, :3] = np.rint(np.clip(shown, 0, 1) * 255).astype(np.uint8)
    elif linear:
        out[:, :, :3] = srgb8(rgb)
    else:
        out[:, :, :3] = np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    if "A" in channels:
        out[:, :, 3] = np.rint(np.clip(pixels[:, :, channels.index("A")], 0, 1)
                               * 255).astype(np.uint8)
    return out


def tile_preview(piece: Path, tile: Tile, canvas: Rect, size: int = PREVIEW_SIZE,
                 display: Mapping[str, Any] | None = None) -> TilePreview | None:
    """The preview of a finished piece's core pixels, or None when it scales to nothing;
    ``display``: the scene's colour management (see :func:`to_rgba8`).

    Raises:
        MergeError: the piece cannot be read or has no Combined pass.
    """
    from renderfarm.merge import read_combined

    pixels, channels, linear = read_combined(piece)
    core, render = tile.core, tile.render
    sy, sx = core.y0 - render.y0, core.x0 - render.x0
    pixels = pixels[sy:sy + core.height, sx:sx + core.width]
    scale = preview_scale(canvas, size)
    x0, x1 = _edge(core.x0, canvas.x0, scale), _edge(core.x1, canvas.x0, scale)
    y0, y1 = _edge(core.y0, canvas.y0, scale), _edge(core.y1, canvas.y0, scale)
    if x1 <= x0 or y1 <= y0:
        return None
    if scale < 1.0:  # box-filter each preview pixel from the core pixels it covers
        xs = np.clip(((np.arange(x0, x1 + 1)) / scale + canvas.x0 - core.x0).astype(int),
                     0, core.width)
        ys = np.clip(((np.arange(y0, y1 + 1)) / scale + canvas.y0 - core.y0).astype(int),
                     0, core.height)
        sums = np.add.reduceat(np.add.reduceat(pixels, ys[:-1], axis=0), xs[:-1], axis=1)
        counts = np.outer(np.maximum(np.diff(ys), 1), np.maximum(np.diff(xs), 1))
        pixels = sums / counts[:, :, None]
    rgba = to_rgba8(pixels, channels, linear, display)
    frame_w = max(1, _edge(canvas.x1, canvas.x0, scale))
    frame_h = max(1, _edge(canvas.y1, canvas.y0, scale))
    return TilePreview(x0, y0, x1 - x0, y1 - y0, frame_w, frame_h, rgba.tobytes())


def png(rgba: np.ndarray) -> bytes:
    """An 8-bit RGBA array ``(height, width, 4)`` as PNG bytes, written by OpenImageIO."""
    import tempfile

    import OpenImageIO as oiio

    height, width = rgba.shape[:2]
    spec = oiio.ImageSpec(width, height, 4, oiio.UINT8)
    spec.attribute("oiio:UnassociatedAlpha", 1)  # straight alpha, as PNG stores it
    buf = oiio.ImageBuf(spec)
    buf.set_pixels(oiio.ROI(), np.ascontiguousarray(rgba, np.uint8))
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "preview.png"
        if not buf.write(str(target)):
            raise RuntimeError(f"cannot write a preview: {buf.geterror()}")
        return target.read_bytes()
