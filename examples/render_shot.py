"""Render the demo scene from Python: 8 frames split into 2x2 tiles, as PNG.

Run from the repository's root: ``python examples/render_shot.py``.
"""

from __future__ import annotations

import logging

import renderfarm


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    result = renderfarm.render("examples/demo.blend", frames="1-8", tiles=(2, 2),
                               output="out/demo_####.png", progress=True)
    for frame, path in result.outputs.items():
        print(frame, path)
    print(f"{result.wall_seconds:.1f} s wall, {result.render_seconds:.1f} s inside Blender")


if __name__ == "__main__":
    main()
