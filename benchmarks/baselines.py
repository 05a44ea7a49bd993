"""Baseline renderers the benchmarks compare renderfarm with, run as separate processes.

``python benchmarks/baselines.py loop FILE.blend FRAMES OUT_DIR THREADS`` opens the file once and
renders the frames in a loop (the limit for one worker); it prints the seconds from opening the
file to the last frame written (interpreter and ``import bpy`` excluded), then the seconds spent
inside Blender's render calls (what a farm worker reports as a piece's ``render_seconds``).

``python benchmarks/baselines.py one FILE.blend FRAME OUT_DIR THREADS`` renders a single frame
(one process per frame, as Flamenco and Deadline run Blender per chunk).
"""

from __future__ import annotations

import sys
import time

import bpy


def render(path: str, frames: list[int], out_dir: str, threads: int) -> tuple[float, float]:
    start = time.perf_counter()
    calls = 0.0
    bpy.ops.wm.open_mainfile(filepath=path, load_ui=False, use_scripts=False)
    scene = bpy.context.scene
    scene.render.use_persistent_data = True
    if threads:
        scene.render.threads_mode = "FIXED"
        scene.render.threads = threads
    scene.render.use_file_extension = False
    for frame in frames:
        scene.frame_set(frame)
        scene.render.filepath = f"{out_dir}/frame_{frame:04d}.exr"
        call = time.perf_counter()
        bpy.ops.render.render(write_still=True)
        calls += time.perf_counter() - call
    return time.perf_counter() - start, calls


def main(argv: list[str]) -> int:
    mode, path, frames, out_dir, threads = argv[0], argv[1], argv[2], argv[3], int(argv[4])
    numbers = [int(f) for f in frames.split(",")]
    seconds, calls = render(path, numbers if mode == "loop" else numbers[:1], out_dir, threads)
    print(f"RESULT {seconds:.6f} {calls:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
