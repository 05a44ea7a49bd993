"""A Blender session that keeps one ``.blend`` loaded and renders tasks from it.

One session lives in each worker process. It opens a file with Python scripts disabled unless
asked, applies a job's settings once, and renders regions of frames to multilayer EXR pieces
(or whole frames straight to the output format) while Cycles keeps its scene data between
renders (``use_persistent_data``).
"""

from __future__ import annotations

import logging
import os
import re
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from renderfarm.blender import compat
from renderfarm.blender.files import open_blend
from renderfarm.blender.output import (
    apply_output,
    ffmpeg_settings,
    number_frames,
    own_output,
    restore_ffmpeg,
    restore_output,
    set_output_format,
)
from renderfarm.errors import RenderError, SceneError, missing_error
from renderfarm.job import (
    PIECE_FORMAT,
    WRITE_EXTENSIONS,
    RenderSettings,
    SceneInfo,
    Task,
)
from renderfarm.planner import border_for, missing_colour_passes

logger = logging.getLogger(__name__)

_MEM = re.compile(r"(Peak|Mem):\s*([\d.]+)\s*([KMG])", re.IGNORECASE)
_UNIT = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}


def find_scene(name: str | None) -> Any:
    """The scene called ``name`` in the open file, or the file's active scene.

    Raises:
        SceneError: there is no such scene.
    """
    import bpy

    if name is None:
        scene = bpy.context.scene or (bpy.data.scenes[0] if bpy.data.scenes else None)
        if scene is None:
            raise SceneError("the file holds no scene")
        return scene
    scene = bpy.data.scenes.get(name)
    if scene is None:
        known = ", ".join(s.name for s in bpy.data.scenes)
        raise SceneError(f"no scene called {name!r} in the file; scenes: {known}")
    return scene


@dataclass
class PieceStats:
    """Measurements of one rendered task."""

    render_seconds: float
    peak_memory_mb: float
    rss_mb: float
    #: the file Blender wrote for each view of a stereo or multiview piece, ``[(view name,
    #: path)]``, for the worker to pack into one piece (empty: the piece is one file)
    views: list[tuple[str, str]] = field(default_factory=list)


class BlenderSession:
    """Keeps one scene loaded in this process and renders tasks from it.

    A job's settings are applied once (:meth:`prepare`); tasks of the same job then only move
    the frame and the border. A job with other settings reopens the file, so no job inherits
    another's overrides.

    Args:
        assigned_gpus: GPU ids Ray assigned to this worker (for ``device="gpu"``).
    """

    def __init__(self, assigned_gpus: Sequence[int] | None = None) -> None:
        self.assigned_gpus = list(assigned_gpus) if assigned_gpus is not None else None
        self.loaded_hash: str | None = None
        self.device_label = ""
        self._key: tuple[Any, ...] | None = None
        #: the output settings the artist's file has (the farm writes final files with them)
        self._own_output: dict[str, Any] = {}
        self._own_ffmpeg: dict[str, Any] = {}
        self._stamp = False
        self._allow_scripts = False
        self._scene_name: str | None = None
        self._format = "OPEN_EXR_MULTILAYER"
        self._border: tuple[Any, ...] = ()
        self._info: dict[str | None, SceneInfo] = {}
        self._stats: list[str] = []
        #: for post-merge denoising: {view layer: (store passes, vector pass)} as the file has
        #: them, for the layers that denoise
        self._denoise_layers: dict[str, tuple[bool, bool]] = {}
        self._layers = 1
        self._post_composite = False
        #: colour passes added so sample ranges of light passes combine exactly
        self._added_colour: list[tuple[str, str]] = []
        self._subset: tuple[bool, int, int] = (False, 0, 1)
        #: the File Output nodes that write (their names), and where they write on this
        #: worker: one folder per node, sent back with the call's result
        self._file_outputs: list[str] = []
        self._file_extension = True
        self._extras_root = ""
        #: (name, file suffix) of each view the scene renders (stereoscopy, multiview)
        self._views: list[tuple[str, str]] = []

    # -- loading -----------------------------------------------------------------------------
    def _open(self, path: str, blend_hash: str, allow_scripts: bool) -> float:
        self.loaded_hash = None
        self._key = None
        self._own_output = {}
        self._info = {}
        seconds = open_blend(path, allow_scripts)
        self.loaded_hash = blend_hash
        self._allow_scripts = allow_scripts
        return seconds

    def info(self, path: str, blend_hash: str, allow_scripts: bool,
             scene: str | None) -> SceneInfo:
        """The planning facts of a scene as the file has them (no job settings applied)."""
        from renderfarm.blender.inspect import scene_info

        if self.loaded_hash == blend_hash and scene in self._info:
            return self._info[scene]
        if self.loaded_hash != blend_hash or self._key is not None \
                or self._allow_scripts != allow_scripts:
            self._open(path, blend_hash, allow_scripts)
        self._info[scene] = scene_info(find_scene(scene))
        return self._info[scene]

    @property
    def scene(self) -> Any:
        """The scene being rendered."""
        return find_scene(self._scene_name)

    def prepare(self, path: str, settings: RenderSettings, output_format: str) -> float:
        """Load the file and apply a job's settings unless they are in place already.

        Returns:
            Seconds spent opening the file (0 when it stayed loaded).
        """
        key = (settings, output_format)
        if self._key == key and self.loaded_hash == settings.blend_hash:
            return 0.0
        seconds = 0.0
        if (self.loaded_hash != settings.blend_hash or self._key is not None
                or self._allow_scripts != settings.allow_scripts):
            seconds = self._open(path, settings.blend_hash, settings.allow_scripts)
        info = self.info(path, settings.blend_hash, settings.allow_scripts, settings.scene)
        if info.missing_files and not settings.allow_missing:
            # Blender's own view of the scene: never render without a file it needs
            error = missing_error(info.missing_files, settings.blend_path)
            # a shared file system may lack the file on this node only: another may have it
            error.retryable = settings.files == "shared"
            raise error
        self._configure(settings, output_format)
        self._key = key
        return seconds

    def _configure(self, settings: RenderSettings, output_format: str) -> None:
        from renderfarm.blender.device import configure_device

        self._scene_name = settings.scene
        scene = self.scene
        render = scene.render
        if settings.samples is not None and render.engine == "CYCLES":
            scene.cycles.samples = settings.samples
        if settings.samples is not None and render.engine.startswith("BLENDER_EEVEE"):
            scene.eevee.taa_render_samples = settings.samples
        if settings.percentage is not None:
            render.resolution_percentage = settings.percentage
        if render.engine == "CYCLES":
            self.device_label = configure_device(scene, settings.device, self.assigned_gpus)
        else:
            self.device_label = render.engine
        if settings.threads:
            render.threads_mode = "FIXED"
            render.threads = settings.threads
        # Blender 5.0.1 with persistent data and several view layers segfaults when the
        # render changes size (tiles) and writes stray Cryptomatte IDs into the second
        # layer: keep the data only for scenes that render one layer
        self._layers = sum(1 for layer in scene.view_layers if layer.use)
        # and with persistent data and one render thread, Blender 5.0.1 keeps a thread
        # spinning at 100 % CPU after the render, for as long as the worker lives (measured:
        # 1.0 CPU idle vs 0.0 with two threads or without persistent data)
        threads = render.threads if render.threads_mode == "FIXED" else (os.cpu_count() or 1)
        render.use_persistent_data = self._layers == 1 and threads != 1
        if render.engine == "CYCLES":
            self._subset = compat.sample_subset(scene.cycles)
        self._denoise_layers = {}
        if settings.post_denoise and render.engine == "CYCLES" and scene.cycles.use_denoising:
            # render noisy, with what Cycles' standalone denoiser reads; the merged frame is
            # denoised once (finish), so the tile grid cannot change the result
            scene.cycles.use_denoising = False
            for layer in scene.view_layers:
                if layer.use and layer.cycles.use_denoising:
                    self._denoise_layers[layer.name] = (layer.cycles.denoising_store_passes,
                                                        layer.use_pass_vector)
                    layer.cycles.denoising_store_passes = True
                    layer.use_pass_vector = True
        self._post_composite = (settings.post_composite
                                and compat.compositor_tree(scene) is not None)
        self._added_colour = []
        if settings.sample_chunks:
            for layer, kind in missing_colour_passes(self._info[settings.scene]):
                colour = f"use_pass_{kind}_color"
                setattr(scene.view_layers[layer], colour, True)
                self._added_colour.append((layer, colour))
        # they would write next to the worker's copy of the file: each writes into a folder
        # of its own here, and its files go back with the result (split frames render
        # without the compositor: it runs on the merged frame, and they write then)
        if not self._extras_root:
            self._extras_root = tempfile.mkdtemp(prefix="renderfarm-extras-")
        self._file_outputs = _redirect_file_outputs(scene, self._extras_root)
        self._file_extension = bool(render.use_file_extension)
        from renderfarm.blender.inspect import active_views

        self._views = [(view.name, view.file_suffix) for view in active_views(scene)]
        render.use_compositing = settings.compositing and render.use_compositing
        if not settings.compositing:
            render.use_sequencer = False
        self._own_output = own_output(scene)  # what the artist's file writes
        self._own_ffmpeg = ffmpeg_settings(scene)
        self._stamp = bool(render.use_stamp)  # pieces get none; the finished frame does
        set_output_format(scene, output_format)
        self._format = output_format
        self._border = (render.use_border, render.use_crop_to_border, render.border_min_x,
                        render.border_min_y, render.border_max_x, render.border_max_y)
        if self._record_stats not in _handlers():
            _handlers().append(self._record_stats)

    # -- rendering ---------------------------------------------------------------------------
    def _record_stats(self, text: Any, *_: Any) -> None:
        # Blender 5 passes (stats, None); older versions only the stats
        self._stats.append(str(text))

    def _peak_memory(self) -> float:
        peak = 0.0
        for line in self._stats:
            for _kind, value, unit in _MEM.findall(line):
                peak = max(peak, float(value) * _UNIT[unit.upper()])
        return peak

    def render(self, task: Task, path: str) -> PieceStats:
        """Render ``task`` into ``path`` in the prepared format.

        Raises:
            RenderError: Blender reported a failure or wrote no file.
        """
        import bpy

        if self._key is None:
            raise RenderError("the worker has no job prepared", frame=task.frame)
        scene = self.scene
        render = scene.render
        scene.frame_set(task.frame)
        if task.samples is not None:
            try:
                compat.set_sample_subset(scene.cycles, (True, *task.samples))
            except ValueError as exc:  # the planner gives such a Blender whole frames
                raise RenderError(f"cannot render samples {task.samples[0]}+"
                                  f"{task.samples[1]} of the frame: {exc}", frame=task.frame,
                                  retryable=False) from exc
        elif render.engine == "CYCLES":  # the file's own subset (chunks of a job changed it)
            compat.set_sample_subset(scene.cycles, self._subset)
        if task.tiled:
            min_x, min_y, max_x, max_y = border_for(task.tile.render, task.size)
            render.use_border = True
            render.use_crop_to_border = True
            render.border_min_x, render.border_max_x = min_x, max_x
            render.border_min_y, render.border_max_y = min_y, max_y
        else:
            (render.use_border, render.use_crop_to_border, render.border_min_x,
             render.border_min_y, render.border_max_x, render.border_max_y) = self._border
        render.filepath = path  # ends with its extension: Blender adds none
        # File Output nodes name their files by the scene's own rule
        render.use_file_extension = self._file_extension and bool(self._file_outputs)
        self._stats.clear()
        self.take_extras()  # nothing of an earlier call goes back with this one
        if os.path.exists(path):
            os.remove(path)
        start = time.perf_counter()
        try:
            bpy.ops.render.render(write_still=True, scene=scene.name)
        except RuntimeError as exc:
            if "Build without" in str(exc):  # this Blender lacks what the scene uses: every
                raise RenderError(  # try fails alike (or, worse, renders without it)
                    f"this Blender cannot render the scene: {str(exc).strip()}; render with a "
                    "Blender built with it (--blender), or turn that feature off in the scene",
                    frame=task.frame, tile=task.tile.index, retryable=False) from exc
            raise RenderError(f"Blender failed to render: {exc}", frame=task.frame,
                              tile=task.tile.index) from exc
        seconds = time.perf_counter() - start
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        if self._views and self._format == PIECE_FORMAT:  # a file per view: the worker
            return PieceStats(seconds, self._peak_memory(), rss,  # packs them in one piece
                              self._view_files(path, task))
        if not os.path.isfile(path):
            raise RenderError("Blender finished but wrote no image; see the worker log",
                              frame=task.frame, tile=task.tile.index)
        return PieceStats(seconds, self._peak_memory(), rss)

    def _view_files(self, path: str, task: Task) -> list[tuple[str, str]]:
        """The file Blender wrote for each view (``piece_L.exr``...) of the piece ``path``.

        Raises:
            RenderError: a view's file is missing.
        """
        from renderfarm.job import view_path

        files = [(name, str(view_path(Path(path), suffix))) for name, suffix in self._views]
        missing = [os.path.basename(f) for _name, f in files if not os.path.isfile(f)]
        if missing:
            for _name, file in files:
                if os.path.exists(file):
                    os.remove(file)
            raise RenderError(f"Blender finished but wrote no image of view(s) "
                              f"{', '.join(missing)}; see the worker log", frame=task.frame,
                              tile=task.tile.index)
        return files

    def take_extras(self) -> dict[str, bytes]:
        """The files the scene's File Output nodes wrote since the last call, as
        ``{"<node index>/<name Blender gave it>": bytes}`` (removed here)."""
        found: dict[str, bytes] = {}
        root = self._extras_root
        if not root or not os.path.isdir(root):
            return found
        for folder, _dirs, names in os.walk(root):
            for name in names:
                full = os.path.join(folder, name)
                with open(full, "rb") as handle:
                    found[os.path.relpath(full, root).replace(os.sep, "/")] = handle.read()
        for entry in os.listdir(root):
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
        return found

    def remove_files(self) -> None:
        """Remove the folders this session's File Output nodes write into."""
        if self._extras_root:
            shutil.rmtree(self._extras_root, ignore_errors=True)
            self._extras_root = ""

    def finish_plan(self) -> dict[str, Any]:
        """What finishing a merged frame of the prepared job takes, for the worker that
        drives it (:mod:`renderfarm.finishing`): ``denoise`` (the job renders noisy pieces),
        ``composite`` (the compositor runs on the merged frame) and ``exr`` (the scene's
        multilayer EXR settings, :meth:`~renderfarm.job.SceneInfo.multilayer_settings`)."""
        if self._key is None:
            raise RenderError("the worker has no job prepared to finish for")
        return {"denoise": bool(self._denoise_layers), "composite": self._post_composite,
                "exr": self._info[self._scene_name].multilayer_settings()}

    def encode(self, frames: dict[int, str], step: int, folder: str, name: str,
               container: str | None = None) -> str:
        """Encode a video of ``frames`` (``{frame: file}``, the job's frames written as
        :data:`VIDEO_FRAME_FORMAT`, every ``step`` frames) with Blender's own FFmpeg writer and
        the scene's settings: container, codec, quality, frame rate, colour management, the
        stamp, and the sound of its sequencer's sound strips. The file is named by Blender
        from ``name`` (the scene's output path's file name: ``shot_`` ->
        ``shot_0001-0250.mp4``) inside ``folder``; returns its path.

        The loaded scene is changed to do it: the next job opens the file again.

        Raises:
            RenderError: Blender wrote no video.
        """
        import bpy

        if self._key is None:
            raise RenderError("the worker has no job prepared to encode for")
        first, last = min(frames), max(frames)
        scene = self.scene
        self._key = None  # whatever happens, the next call starts from the file
        self.loaded_hash = None
        render = scene.render
        sequence = f"{folder}{os.sep}.frames"
        os.makedirs(sequence, exist_ok=True)
        # an image sequence numbered from 1: the compositor shows file n at frame
        # first + (n - 1) (a video's frames are never negative)
        for frame, path in frames.items():
            os.replace(path, os.path.join(sequence, f"frame_{frame - first + 1:06d}.exr"))
        image = _load_linear(os.path.join(sequence, "frame_000001.exr"))
        image.source = "SEQUENCE"
        node = _show_one_image(scene, "renderfarm-encode")
        node.image = image
        node.frame_start, node.frame_duration, node.frame_offset = first, last - first + 1, 0
        restore_output(scene, self._own_output, "FFMPEG")
        restore_ffmpeg(scene, self._own_ffmpeg)  # Blender 4.2 reset its container
        if container is not None:  # -o shot.mp4: its container, a codec it takes
            compat.set_file_format(render.image_settings, "FFMPEG")
            render.ffmpeg.format = container
            _video_codec(render.ffmpeg)
        render.use_stamp = self._stamp
        # the frames hold what the sequencer made already; its sound strips give the
        # audio (Blender mixes sound only with the sequencer on)
        render.use_sequencer = True
        for strip in compat.all_strips(scene.sequence_editor):
            if strip.type != "SOUND":
                strip.mute = True
        render.resolution_x, render.resolution_y = image.size[:]
        scene.frame_start, scene.frame_end, scene.frame_step = first, last, step
        target = os.path.join(folder, "video")
        os.makedirs(target, exist_ok=True)
        render.filepath = os.path.join(target, name)
        render.use_file_extension = self._file_extension  # Blender names it by its rule
        try:
            bpy.ops.render.render(animation=True, scene=scene.name)
        except RuntimeError as exc:
            raise RenderError(f"Blender failed to encode the video: {exc}") from exc
        finally:
            shutil.rmtree(sequence, ignore_errors=True)
        written = [os.path.join(target, f) for f in os.listdir(target)]
        if len(written) != 1:
            raise RenderError(f"Blender's FFmpeg writer wrote {len(written)} files, not one "
                              "video; see the worker log")
        return written[0]

    def denoise(self, single: str, denoised: str) -> dict[str, Any]:
        """Denoise ``single`` (a merged noisy frame, every pass in one part as Cycles reads
        it) into ``denoised`` with Cycles' standalone denoiser, as the scene's own settings
        denoise at render time.

        Returns:
            ``{"passes": {view layer: the passes Blender writes, in its order}, "layers":
            [the view layers that denoise]}``: how the worker lays out the finished frame.

        Raises:
            RenderError: the denoiser failed or wrote nothing.
        """
        import _cycles  # type: ignore[import-not-found]
        import bpy

        if self._key is None:
            raise RenderError("the worker has no job prepared to denoise for", path=single)
        scene = self.scene
        layer = scene.view_layers[next(iter(self._denoise_layers))]
        use_gpu = scene.cycles.denoising_use_gpu
        scene.cycles.use_denoising = True
        scene.cycles.denoising_use_gpu = self.device_label.split(":")[0] != "CPU"
        try:
            _cycles.denoise(bpy.context.preferences.as_pointer(), scene.as_pointer(),
                            layer.as_pointer(), input=[single], output=[denoised])
        except Exception as exc:
            raise RenderError(f"Cycles' denoiser failed on the merged frame: {exc}",
                              path=single) from exc
        finally:
            scene.cycles.use_denoising = False
            scene.cycles.denoising_use_gpu = use_gpu
        if not os.path.isfile(denoised):
            raise RenderError("Cycles' denoiser wrote no file", path=single)
        return {"passes": self._final_passes(scene), "layers": list(self._denoise_layers)}

    def composite(self, source: str, size: tuple[int, int], file_format: str,
                  frame: int | None = None) -> str:
        """Run the scene's compositor once on a merged frame (``size``: its width and height):
        a copy of the scene whose node tree reads the frame through Image nodes where it had
        Render Layers nodes, written by Blender in ``file_format``. Returns the file Blender
        wrote (for a multilayer EXR the worker adds the frame's passes after its
        ``Composite`` part, as Blender writes it).

        Raises:
            RenderError: the merged frame lacks a pass the compositor reads, or Blender wrote
                nothing.
        """
        if self._key is None:
            raise RenderError("the worker has no job prepared to composite for", path=source)
        original = self.scene
        scene = original.copy()
        scene.name = "renderfarm-composite"
        scene.render.use_stamp = self._stamp
        tree = compat.copy_compositor_tree(original, scene)  # File Output nodes write here too
        image = _load_linear(source)
        written = f"{source}.composite{WRITE_EXTENSIONS[file_format]}"

        def feed() -> None:
            for layers in [n for n in tree.nodes if n.bl_idname == "CompositorNodeRLayers"]:
                node = tree.nodes.new("CompositorNodeImage")
                node.image = image
                node.layer = layers.layer
                for link in [lk for lk in tree.links if lk.from_node == layers]:
                    name = "Combined" if link.from_socket.name == "Image" else \
                        link.from_socket.name
                    socket = node.outputs.get(name)
                    if socket is None:
                        raise RenderError(f"the merged frame has no {name!r} pass of view "
                                          f"layer {layers.layer!r} for the compositor",
                                          path=source)
                    tree.links.new(socket, link.to_socket)
                tree.nodes.remove(layers)
            render = scene.render
            render.use_compositing = True
            render.use_sequencer = False
            render.use_border = False
            render.use_multiview = False  # one view's frame: one file
            render.resolution_x, render.resolution_y = size
            render.resolution_percentage = 100
            # the frame's path ends with its extension; File Output nodes name their files
            # by the scene's own rule
            render.use_file_extension = self._file_extension and bool(self._file_outputs)
            if frame is not None:  # Scene Time, drivers, keyed node values: this frame's
                _at_frame(scene, frame)

        with _named_as(original, scene):  # metadata and stamp name the artist's scene
            _write_composite(scene, tree, image, feed, file_format, written,
                             self._own_output)
        return written

    def _final_passes(self, scene: Any) -> dict[str, list[str]]:
        """The passes Blender writes, layer by layer and in its order, with the file's own
        denoising settings (not the ones the noisy pieces rendered with)."""
        from cycles import engine as cycles_engine  # type: ignore[import-not-found]

        changed = {name: (scene.view_layers[name].cycles.denoising_store_passes,
                          scene.view_layers[name].use_pass_vector)
                   for name in self._denoise_layers}
        scene.cycles.use_denoising = True
        try:
            for name, (store, vector) in self._denoise_layers.items():
                scene.view_layers[name].cycles.denoising_store_passes = store
                scene.view_layers[name].use_pass_vector = vector
            for name, colour in self._added_colour:
                setattr(scene.view_layers[name], colour, False)
            return {layer.name: [p[0] for p in cycles_engine.list_render_passes(scene, layer)]
                    for layer in scene.view_layers if layer.use}
        finally:
            scene.cycles.use_denoising = False
            for name, (store, vector) in changed.items():
                scene.view_layers[name].cycles.denoising_store_passes = store
                scene.view_layers[name].use_pass_vector = vector
            for name, colour in self._added_colour:
                setattr(scene.view_layers[name], colour, True)

    def convert(self, source: str, target: str, file_format: str,
                frame: int | None = None) -> None:
        """Write the RGBA float image ``source`` as ``target`` the way Blender writes renders.

        The image goes through a copy of the job's scene whose compositor only reads it, so
        Blender's own output path applies the scene's colour management (view transform,
        look, exposure, display), its dither and its settings for ``file_format``; nothing is
        rendered. The job's scene itself is not changed.
        """
        if self._key is None:
            raise RenderError("the worker has no job prepared to convert for", path=source)
        scene = self._convert_scene()
        image = _load_linear(source)

        def show() -> None:
            compat.compositor_tree(scene).nodes["renderfarm-image"].image = image
            scene.render.resolution_x, scene.render.resolution_y = image.size[:]
            if frame is not None:  # the metadata's Frame, the stamp's frame number
                _at_frame(scene, frame)

        with _named_as(self.scene, scene):  # metadata and stamp name the artist's scene
            _write_composite(scene, compat.compositor_tree(scene), image, show, file_format,
                             target, self._own_output)

    def _convert_scene(self) -> Any:
        """A fresh copy of the job's scene whose compositor shows one image."""

        name = "renderfarm-convert"
        scene = self.scene.copy()
        scene.name = name
        scene.render.use_stamp = self._stamp
        _show_one_image(scene, name).name = "renderfarm-image"
        scene.render.use_file_extension = False
        return scene


def _show_one_image(scene: Any, name: str) -> Any:
    """Give ``scene`` a compositor (a new node tree called ``name``) that shows one Image
    node's image as it is: full size, no border, one view, square pixels, nothing from the
    sequencer. Returns the Image node."""
    tree = compat.compositor_tree(scene, create=True, name=name)
    node = tree.nodes.new("CompositorNodeImage")
    tree.links.new(node.outputs["Image"], compat.output_socket(tree))
    render = scene.render
    render.use_compositing = True
    render.use_sequencer = False
    render.use_border = False
    render.use_multiview = False  # one view's frame: one file
    render.resolution_percentage = 100
    render.pixel_aspect_x = render.pixel_aspect_y = 1.0
    return node


#: the codecs each container takes (the first when the scene's codec is not one of them)
_CONTAINER_CODECS = {"MPEG4": ("H264", "H265", "AV1", "MPEG4"), "WEBM": ("WEBM", "AV1"),
                     "OGG": ("THEORA",), "DV": ("DV",), "FLASH": ("FLASH",),
                     "MPEG1": ("MPEG1",), "MPEG2": ("MPEG2",)}


def _video_codec(ffmpeg: Any) -> None:
    """Give ``ffmpeg`` (a scene's FFmpeg settings) a codec its container takes."""
    allowed = _CONTAINER_CODECS.get(ffmpeg.format)
    if allowed and ffmpeg.codec not in allowed:
        ffmpeg.codec = allowed[0]
    elif ffmpeg.codec == "NONE":
        ffmpeg.codec = "H264"


def _at_frame(scene: Any, frame: int) -> None:
    """Put ``scene`` (a helper copy) at ``frame`` for a write: its compositor evaluates
    there, and Blender 5.0 stamps the frame of the context's scene into the file's metadata
    (measured: a copy at frame 3 rendered from a context at frame 5 writes Frame 005), so that
    one moves too (without evaluating it: the next task sets its own frame)."""
    import bpy

    scene.frame_set(frame)
    context = bpy.context.scene
    if context is not None and context != scene:
        if frame < 0:  # frame_current is clamped to 0 unless negative frames are allowed
            bpy.context.preferences.edit.use_negative_frames = True
        context.frame_current = frame


@contextmanager
def _named_as(original: Any, copy: Any) -> Iterator[None]:
    """Give ``copy`` the name of the scene it copies while it writes a file (Blender writes
    the scene's name into the file's metadata and its stamp); the original gets its name
    back afterwards."""
    name = original.name
    original.name = f"{name}.renderfarm-original"
    copy.name = name
    try:
        yield
    finally:
        try:
            if copy.name == name:  # still there: move it out of the way
                copy.name = f"{name}.renderfarm-copy"
        except ReferenceError:  # removed already
            pass
        original.name = name


def _write_composite(scene: Any, tree: Any, image: Any, setup: Any, file_format: str,
                     path: str, own: dict[str, Any] | None = None) -> None:
    """Let Blender write the compositor result of a throw-away ``scene`` (nothing is
    rendered: its tree reads ``image``) as ``file_format`` at ``path``; ``setup()`` wires the
    tree first. The scene, its tree and the image are removed afterwards, whatever happens.

    Raises:
        RenderError: Blender wrote no file.
    """
    import bpy

    try:
        setup()
        # the scene's own settings switched to the job's format, as for whole frames (the
        # copy holds the piece's 32-bit EXR settings: a PNG from them would be 16-bit)
        apply_output(scene, own or {}, file_format)
        scene.render.filepath = path
        bpy.ops.render.render(write_still=True, scene=scene.name)
    finally:
        bpy.data.images.remove(image)
        bpy.data.scenes.remove(scene)
        compat.remove_compositor_tree(tree)
    if not os.path.isfile(path):
        raise RenderError(f"Blender's compositor wrote no image at {path}", path=path)


def _load_linear(path: str) -> Any:
    """Load a merged frame (scene-linear pixels in the file's working colour space, which
    need not be Blender's default for float images: ACEScg, Rec.2020)."""
    import bpy

    image = bpy.data.images.load(path, check_existing=False)
    space = compat.working_space()
    if space is not None:  # Blender 4 loads float images in its scene-linear space
        image.colorspace_settings.name = space
    return image


def _redirect_file_outputs(scene: Any, root: str) -> list[str]:
    """Point the compositor's File Output nodes of ``scene`` that write at folders of their
    own under ``root`` (``root/<index>/``, in :func:`file_output_nodes`' order; the driver
    knows where each node's files land, :func:`node_folder`: the file name keeps only its
    last part), numbering their files by frame as Render Animation does
    (:func:`~renderfarm.blender.output.number_frames`). Returns their names."""
    from renderfarm.blender.inspect import file_output_nodes

    nodes = file_output_nodes(scene)
    for index, node in enumerate(nodes):
        _directory, file_name = compat.file_output_location(node)
        compat.set_file_output_location(node, os.path.join(root, str(index)) + os.sep,
                                        os.path.basename(file_name))
        number_frames(node)  # each frame renders as a still: named as in an animation
    return [node.name for node in nodes]


def _handlers() -> list[Any]:
    import bpy

    return bpy.app.handlers.render_stats  # type: ignore[no-any-return]
