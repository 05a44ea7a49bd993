"""Small 8-bit previews of finished tiles, for the add-on's live image and the status page.

A preview is the tile's Combined pass, scaled so the whole frame fits in
:data:`PREVIEW_SIZE` pixels, in sRGB 8-bit RGBA (scene-linear pieces are encoded with the
sRGB transfer function — Blender's "Standard" view; the final image keeps the scene's own
view transform). Rows are top first; ``x``/``y`` count from the canvas' top-left corner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from renderfarm.job import Rect, Tile

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


def to_rgba8(pixels: np.ndarray, channels: list[str], linear: bool) -> np.ndarray:
    """Float pixels with named channels to 8-bit RGBA (alpha 255 when there is none)."""
    height, width = pixels.shape[:2]
    out = np.full((height, width, 4), 255, dtype=np.uint8)
    for target, name in enumerate("RGBA"):
        if name not in channels:
            if name != "A" and channels:  # grey images: repeat the first channel
                out[:, :, target] = out[:, :, 0]
            continue
        values = pixels[:, :, channels.index(name)]
        if name == "A" or not linear:
            out[:, :, target] = np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8)
        else:
            out[:, :, target] = srgb8(values)
    return out


def tile_preview(piece: Path, tile: Tile, canvas: Rect,
                 size: int = PREVIEW_SIZE) -> TilePreview | None:
    """The preview of a finished piece's core pixels, or None when it scales to nothing.

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
    rgba = to_rgba8(pixels, channels, linear)
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
