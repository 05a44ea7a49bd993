"""The job model: what a user asks for, what the planner makes of it, what comes back.

Everything here is a frozen dataclass with a JSON round-trip (``to_dict``/``from_dict``,
``to_json``/``from_json``) and validation on construction, so a job can cross a process,
a network or a database without losing meaning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from renderfarm.errors import InputError, OutputError, UsageError
from renderfarm.frames import parse_frames

DEVICES = ("auto", "cpu", "gpu")
#: ``JobSpec.tiles`` value that lets the planner pick the grid (``--tiles auto``)
AUTO_TILES = (0, 0)
#: the most tile columns (and rows) of a grid
MAX_GRID = 256
#: how a job denoises scenes that use Cycles' denoiser (see :attr:`JobSpec.denoise`)
DENOISE_MODES = ("auto", "post", "render")
#: how a job's files reach the workers
FILE_MODES = ("bundle", "shared")

#: output extension -> the Blender file formats written with it (the first unless the scene's
#: own format is another of them: ``.exr`` is multilayer with every pass unless the scene
#: writes single-layer OpenEXR)
OUTPUT_FORMATS: dict[str, tuple[str, ...]] = {
    ".exr": ("OPEN_EXR_MULTILAYER", "OPEN_EXR"),
    ".png": ("PNG",),
    ".jpg": ("JPEG",),
    ".jpeg": ("JPEG",),
    ".tif": ("TIFF",),
    ".tiff": ("TIFF",),
    ".webp": ("WEBP",),
    ".bmp": ("BMP",),
    ".tga": ("TARGA", "TARGA_RAW"),
    ".dpx": ("DPX",),
    ".cin": ("CINEON",),
    ".hdr": ("HDR",),
}

#: Blender file format -> the extension Blender writes it with
FORMAT_EXTENSIONS: dict[str, str] = {
    "OPEN_EXR_MULTILAYER": ".exr", "OPEN_EXR": ".exr", "PNG": ".png", "JPEG": ".jpg",
    "TIFF": ".tif", "WEBP": ".webp", "BMP": ".bmp", "TARGA": ".tga", "TARGA_RAW": ".tga",
    "DPX": ".dpx", "CINEON": ".cin", "HDR": ".hdr",
}
#: the format of a piece of a frame that is merged or finished later: a lossless 32-bit
#: multilayer EXR with every pass, whatever the final file is
PIECE_FORMAT = "PIECE"
#: the frames of a video before it is encoded: the composited image, scene-linear, as a
#: 32-bit float RGBA EXR without the stamp (the encoder burns it in, as Blender does)
VIDEO_FRAME_FORMAT = "VIDEO_FRAME"
#: the extension of each format a worker writes (the final formats and pieces)
WRITE_EXTENSIONS: dict[str, str] = {**FORMAT_EXTENSIONS, PIECE_FORMAT: ".exr",
                                    VIDEO_FRAME_FORMAT: ".exr"}
#: video extension -> the FFmpeg container Blender writes it with (``ffmpeg.format``)
VIDEO_CONTAINERS: dict[str, str] = {
    ".mp4": "MPEG4", ".mkv": "MKV", ".webm": "WEBM", ".avi": "AVI", ".dv": "DV",
    ".flv": "FLASH", ".mpg": "MPEG1", ".mpeg": "MPEG2", ".ogv": "OGG", ".mov": "QUICKTIME",
}

#: the scene's output settings the farm keeps for its final files (SceneInfo.output)
OUTPUT_SETTING_NAMES = ("color_depth", "exr_codec", "quality", "color_mode")

_T = TypeVar("_T")
_HASHES = re.compile(r"#+")


def output_format(pattern: str, scene_format: str | None = None) -> str:
    """The Blender file format an output pattern asks for, from its extension (the scene's
    own format when the extension is also its: ``.exr`` for a single-layer EXR scene).

    Raises:
        OutputError: the extension is not one renderfarm writes.
    """
    ext = os.path.splitext(str(pattern))[1].lower()
    if ext in VIDEO_CONTAINERS:
        return "FFMPEG"
    if ext not in OUTPUT_FORMATS:
        known = ", ".join(sorted([*OUTPUT_FORMATS, *VIDEO_CONTAINERS]))
        raise OutputError(
            f"unknown output extension {ext or '(none)'!r}; use one of {known}",
            path=str(pattern),
        )
    formats = OUTPUT_FORMATS[ext]
    return scene_format if scene_format in formats else formats[0]


def is_output_folder(pattern: str) -> bool:
    """Whether an output names a folder (ends with ``/``): the files are named as the
    scene names them, inside it."""
    return pattern.endswith(("/", os.sep))


def scene_output(info: SceneInfo, blend_dir: str, folder: str | None = None) -> tuple[str, str]:
    """The output pattern and file format of a job that keeps the scene's own output
    settings: the scene's path (``//`` relative to ``blend_dir``, the artist's folder of the
    ``.blend``), numbered and given the format's extension by Blender's rules; inside
    ``folder`` (its file name only) when given.

    Raises:
        OutputError: the scene writes something the farm does not write (a video).
    """
    file_format = info.file_format
    if file_format not in FORMAT_EXTENSIONS and file_format != "FFMPEG":
        raise OutputError(
            f"the scene's output writes {file_format} files, which the farm cannot write; "
            "give an output with an image extension (-o shot_####.png, or .exr for every "
            "pass)", path=info.scene)
    raw = info.output_path or "//"
    if raw.startswith("//"):
        raw = os.path.join(blend_dir, raw[2:])
    raw = os.path.expanduser(raw)
    if file_format == "FFMPEG":  # the encoder names the video (frame range, container)
        if folder is not None:
            raw = os.path.join(folder, os.path.basename(raw))
        return raw, file_format
    if not _HASHES.search(os.path.basename(raw)):
        raw += "####"  # Blender puts the frame after a name without # (a folder: alone)
    # the format's own extensions (.jpg or .jpeg, ...): Blender adds none when one ends it
    own = tuple(ext for ext, formats in OUTPUT_FORMATS.items() if file_format in formats)
    if info.file_extension and not raw.lower().endswith(own):
        raw += FORMAT_EXTENSIONS[file_format]
    if folder is not None:
        raw = os.path.join(folder, os.path.basename(raw))
    return raw, file_format


def resolve_output(output: str | None, info: SceneInfo, blend_dir: str) -> tuple[str, str]:
    """A job's output pattern and file format: the scene's own (``output`` None), the
    scene's file names inside a folder (``output`` ending with ``/``), or ``output`` with the
    format its extension asks for.

    Raises:
        OutputError: the output cannot be written (see :func:`scene_output`).
    """
    if output is None:
        return scene_output(info, blend_dir)
    if is_output_folder(output):
        return scene_output(info, blend_dir, folder=output)
    return output, output_format(output, info.file_format)


_TEMPLATE = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*(:[^{}]*)?\}")


def check_templates(output: str, info: SceneInfo) -> None:
    """Refuse Blender 5.0's path templates (``{blend_name}``, ``{scene_name}``, ...) in the
    scene's output path (``output``: the job's, when it is the scene's) and its File Output
    nodes' folders: the farm names files by the path as written (a video's path is Blender's
    to expand, as it encodes).

    Raises:
        OutputError: a path holds a template, naming it.
    """
    for what, path in (("the scene's output path", output),
                       *((f"File Output node {name!r}", folder) for name, folder in
                         zip(info.file_outputs, info.file_output_dirs, strict=False))):
        found = _TEMPLATE.search(path or "")
        if found:
            raise OutputError(
                f"{what} holds the path template {found.group(0)} ({path}), which the farm "
                "does not expand yet: write the path out in Blender", path=info.scene)


def output_path(pattern: str | os.PathLike[str], frame: int) -> Path:
    """The file a frame is written to, named by Blender's rules (``BLI_path_frame`` and the
    extension Blender adds).

    The last run of ``#`` in the file name becomes the frame number, zero-padded to the run's
    length after its sign (``shot_####.png`` -> ``shot_0007.png``, frame -2 ->
    ``shot_-0002.png``; wider numbers are not cut); other runs, and ``#`` in folder names,
    stay. A name without ``#`` gets the frame in four digits at its end, then the format's
    extension, as Blender writes it (``shot.png`` -> ``shot.png0007.png``, ``shot`` ->
    ``shot0007.png``).
    """
    path = Path(pattern)
    name = path.name
    ext = os.path.splitext(name)[1]
    runs = list(_HASHES.finditer(name))
    if runs:
        last = runs[-1]
        name = name[:last.start()] + _frame_digits(frame, len(last.group(0))) + name[last.end():]
    else:
        name = name + _frame_digits(frame, 4)
    known = ext.lower() in OUTPUT_FORMATS
    if not runs and known:
        name += ext  # Blender adds the extension after the number
    return path.with_name(name)


def view_path(path: Path, suffix: str) -> Path:
    """The file of one view of a frame (multiview, views written as individual files), as
    Blender names it: the view's suffix before the file name's last dot
    (``shot_0001.png`` -> ``shot_0001_L.png``), or at its end."""
    name = path.name
    dot = name.rfind(".")
    if dot <= 0:
        return path.with_name(name + suffix)
    return path.with_name(name[:dot] + suffix + name[dot:])


def _frame_digits(frame: int, width: int) -> str:
    """A frame number as C's ``%.*d`` writes it: the digits zero-padded to ``width``, the
    sign before them (``-2`` at 4 -> ``-0002``)."""
    return ("-" if frame < 0 else "") + f"{abs(frame):0{width}d}"


def check_verify(value: Any) -> None:
    """Check a verification share (None, or a number from 0 to 1).

    Raises:
        InputError: it is not.
    """
    if value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0.0 <= float(value) <= 1.0):
        raise InputError(f"verify must be the share of pieces to check, from 0 to 1 (0.1: "
                         f"one in ten), not {value!r}")


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be a whole number, not {value!r}")
    if value < low or (high is not None and value > high):
        limit = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise InputError(f"{name} must be {limit}, not {value}")


class _Json:
    """JSON round-trip shared by the dataclasses of this module."""

    def to_dict(self) -> dict[str, Any]:
        """The object as plain JSON-compatible data."""
        return _to_plain(self)

    def to_json(self, **kwargs: Any) -> str:
        """The object as a JSON string."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls: type[_T], text: str) -> _T:
        """Rebuild an object from :meth:`to_json` output (validated)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"not valid JSON for {cls.__name__}: {exc}") from exc
        return cls.from_dict(data)  # type: ignore[attr-defined, no-any-return]

    @classmethod
    def from_dict(cls: type[_T], data: dict[str, Any]) -> _T:
        """Rebuild an object from :meth:`to_dict` output (validated)."""
        if not isinstance(data, dict):
            raise UsageError(f"{cls.__name__} must be a JSON object, not {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise UsageError(f"unknown fields for {cls.__name__}: {', '.join(sorted(unknown))}")
        return cls(**cls._convert(dict(data)))  # type: ignore[attr-defined]

    @classmethod
    def _convert(cls, data: dict[str, Any]) -> dict[str, Any]:
        return data


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass(frozen=True)
class Rect(_Json):
    """A pixel rectangle in full-frame coordinates: origin top-left, ends exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int

    def __post_init__(self) -> None:
        if not (self.x0 < self.x1 and self.y0 < self.y1):
            raise InputError(f"empty rectangle {self.x0},{self.y0}-{self.x1},{self.y1}")

    @property
    def width(self) -> int:
        """Width in pixels."""
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        """Height in pixels."""
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        """Number of pixels."""
        return self.width * self.height

    def union(self, other: Rect) -> Rect:
        """The smallest rectangle holding both."""
        return Rect(min(self.x0, other.x0), min(self.y0, other.y0), max(self.x1, other.x1),
                    max(self.y1, other.y1))

    def contains(self, other: Rect) -> bool:
        """Whether ``other`` lies entirely inside this rectangle."""
        return (
            self.x0 <= other.x0 and self.y0 <= other.y0
            and other.x1 <= self.x1 and other.y1 <= self.y1
        )


@dataclass(frozen=True)
class Tile(_Json):
    """One piece of a frame.

    Attributes:
        index: position in the grid, row-major from the top-left.
        core: the pixels this tile contributes to the merged frame.
        render: the pixels the worker renders: ``core`` plus overscan, clipped to the region.
    """

    index: int
    core: Rect
    render: Rect

    def __post_init__(self) -> None:
        if not self.render.contains(self.core):
            raise InputError(f"tile {self.index}: render rectangle does not contain its core")

    @classmethod
    def _convert(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["core"] = Rect.from_dict(data["core"])
        data["render"] = Rect.from_dict(data["render"])
        return data


@dataclass(frozen=True)
class SceneInfo(_Json):
    """Facts about a scene that planning and reporting need (read by ``renderfarm.blender``).

    Attributes:
        scene: the scene's name.
        engine: the render engine (``CYCLES``, ``BLENDER_EEVEE``, ...).
        resolution: ``(x, y)`` resolution at 100 %.
        percentage: the scene's resolution percentage.
        frame_start: first frame of the scene's range.
        frame_end: last frame of the scene's range.
        frame_step: the scene's frame step.
        camera: the active camera's name, or None.
        use_border: whether the scene renders a border region.
        border: ``(min_x, min_y, max_x, max_y)`` of the border, as Blender stores it (0..1,
            y from the bottom).
        crop_to_border: whether Blender crops the output to the border.
        samples: the render samples (Cycles) or None.
        sample_subset: ``(offset, length)`` when the scene renders only a subset of its
            samples (Cycles' sample subset), else None.
        adaptive_sampling: whether Cycles' adaptive sampling is on.
        denoising: whether render-time denoising is on.
        motion_blur: whether the scene renders motion blur (it forbids the Vector pass that
            Cycles' standalone denoiser needs).
        compositing: whether the compositor or the sequencer changes the image (a node tree
            beyond a plain Render Layers -> Composite link, or sequencer strips).
        sequencer: whether the video sequencer makes the image (it needs no camera).
        compositor_blocker: why the compositor cannot run once on a merged frame (it reads
            other scenes or the render result itself), or None.
        view_layers: ``{layer name: [pass names]}`` of the layers that render.
        libraries: linked library paths as stored in the file.
        missing_files: external files the scene uses that do not exist.
        file_format: the scene's own output file format.
        fps: frames per second.
        output_path: the scene's output path as saved (``//render/shot_####``).
        file_extension: whether Blender adds the format's extension to file names.
        output: the scene's own settings for its format (see ``OUTPUT_SETTING_NAMES``):
            colour depth, EXR codec, quality, colour mode.
        views: the views the scene renders when stereoscopy / multiview is on, else empty.
        view_suffixes: each view's file suffix (``_L``), in the order of ``views``.
        views_format: how the scene writes its views: ``INDIVIDUAL`` files, ``STEREO_3D``
            (one file: anaglyph, side by side, ...) or ``MULTIVIEW`` (one multilayer EXR
            holds every view).
        file_outputs: the compositor's File Output nodes that write (node names).
        file_output_dirs: each of those nodes' folder as saved (``//passes/``).
        stamp: whether the scene burns its stamp into the image.
        multilayer_output: the settings Blender gives the scene's output when its format is
            switched to multilayer EXR in its Output properties (``-o shot.exr`` on a scene
            that writes another format: a 16-bit PNG scene's EXR is half float), as
            ``output``; empty when the scene writes multilayer EXR itself.
        display: how the scene's output shows its pixels (``display_device``,
            ``view_transform``, ``look``, ``exposure``, ``gamma``, ``working_space``, and
            whether ``curve_mapping`` or ``white_balance`` change them): previews of
            scene-linear pieces use it to look like the written file.
        blender: the version of the Blender that read the scene (and renders it), as
            ``bpy.app.version_string`` says it (``5.0.1``); empty when unknown.
        sample_ranges: whether that Blender's Cycles renders a range of a frame's samples
            (its Sample Subset, Blender 4.5 and later): sample chunks need it.
    """

    scene: str
    engine: str
    resolution: tuple[int, int]
    percentage: int
    frame_start: int
    frame_end: int
    frame_step: int = 1
    camera: str | None = None
    use_border: bool = False
    border: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    crop_to_border: bool = False
    samples: int | None = None
    sample_subset: tuple[int, int] | None = None
    adaptive_sampling: bool = False
    denoising: bool = False
    motion_blur: bool = False
    compositing: bool = False
    sequencer: bool = False
    compositor_blocker: str | None = None
    view_layers: dict[str, list[str]] = field(default_factory=dict)
    libraries: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    file_format: str = "PNG"
    fps: float = 24.0
    output_path: str = ""
    file_extension: bool = True
    output: dict[str, Any] = field(default_factory=dict)
    views: list[str] = field(default_factory=list)
    view_suffixes: list[str] = field(default_factory=list)
    views_format: str = "INDIVIDUAL"
    file_outputs: list[str] = field(default_factory=list)
    file_output_dirs: list[str] = field(default_factory=list)
    stamp: bool = False
    multilayer_output: dict[str, Any] = field(default_factory=dict)
    display: dict[str, Any] = field(default_factory=dict)
    blender: str = ""
    sample_ranges: bool = True

    def multilayer_settings(self) -> dict[str, Any]:
        """The output settings a multilayer EXR of this scene is written with: the scene's
        own when it writes one, else what Blender switches them to (empty: Blender's
        defaults, 32-bit float ZIP)."""
        if self.file_format == "OPEN_EXR_MULTILAYER":
            return self.output
        return self.multilayer_output

    @classmethod
    def _convert(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["resolution"] = tuple(data["resolution"])
        if data.get("sample_subset") is not None:
            data["sample_subset"] = tuple(data["sample_subset"])
        if "border" in data:
            data["border"] = tuple(data["border"])
        return data


@dataclass(frozen=True)
class JobSpec(_Json):
    """What a user asks the farm to render.

    Attributes:
        blend_file: the ``.blend`` file.
        frames: a frame-range string (``"1-10,15"``); None renders the scene's range and step.
        tiles: ``(columns, rows)`` each frame is split into; :data:`AUTO_TILES` lets the
            planner pick from the frame size, the frames and the workers.
        samples: render samples override; None keeps the scene's.
        percentage: resolution percentage override; None keeps the scene's.
        device: ``"auto"`` (GPU when the cluster has one), ``"cpu"`` or ``"gpu"``.
        output: output pattern; ``#`` runs are the zero-padded frame, the extension picks the
            format (``.exr`` multilayer with every pass unless the scene writes single-layer
            EXR, ``.png``, ``.jpg``, ``.tif``, ...), keeping the scene's other settings for
            that format. None (default): the scene's own output path and settings, ``//``
            relative to the ``.blend``'s folder; a folder (ending with ``/``): the scene's
            file names and settings, inside it.
        retries: how many times a failed task is tried again.
        task_timeout: seconds a task may take before it is stopped and retried; None: no limit.
        allow_scripts: run Python embedded in the file (needs the farm to permit it too).
        overscan: pixels rendered around each tile and cropped by the merge; None picks them
            from the scene (16 with adaptive sampling, else 0).
        scene: the scene to render; None: the file's active scene.
        name: a name for the job, shown in progress and reports.
        group_tiles: let a worker render neighbouring tiles of a row in one Blender call
            when there are more tiles waiting than the workers need to stay busy (each call
            costs Blender a fixed ~15-25 ms, and the pixels are the same); False: one call
            per tile, always.
        chunks: split each piece (frame or tile) by samples into this many sample ranges
            rendered apart and combined exactly (Cycles only; ``--split samples``); 0: one
            range per worker.
        denoise: for scenes that denoise: ``"auto"`` denoises split frames once after the
            merge (seam-free) and whole frames as Blender does at render time; ``"post"``
            always denoises after the merge (a whole frame then equals its tiled render bit
            for bit); ``"render"`` keeps Blender's render-time denoise and renders whole
            frames.
        files: ``"bundle"`` (default) sends the ``.blend`` and every file it depends on
            (Blender Asset Tracer), so workers need not see the client's disk; ``"shared"``
            lets workers read the same paths (a studio file server).
        allow_missing: render although the scene needs files that cannot be found (each is
            a warning of the job) instead of failing the job naming them.
        project: the project folder the bundle keeps paths relative to (default: the
            ``.blend``'s folder).
        bundle: the bundle's manifest when the client made it (the farm service's jobs);
            None: the farm bundles ``blend_file`` itself.
        verify: the share of finished pieces rendered again on another worker and compared
            with the original (``0.1``: a random tenth; 0: none); a mismatch is settled by a
            third worker and the worker that disagrees with the majority is suspect. None:
            the farm's default.
        estimate: ``"first"``: render a low-sample probe of a few frames on the farm and
            predict the job's time and cost (kept in its report) before rendering it;
            ``"only"``: the prediction, no render. None: no probe.
        budget: with an estimate, the most the job may cost at the farm's prices: a job
            predicted to cost more stops before rendering (only its probe is billed).
        notify: an http(s) URL that gets the job's summary as JSON when it ends
            (:mod:`renderfarm.notify`).
        after: ids of farm-service jobs this one waits for: it starts once they are done
            (held, with the reason, while one of them has failed or was cancelled).
        after_frames: with ``after``, wait frame by frame instead: frame N of this job
            renders once frame N of each of those jobs is written.
        require: what the job's workers must offer (``"vram>=16,tag=lighting"``; see
            :mod:`renderfarm.tags`); None: any worker.
        origin: the ``.blend``'s path on the machine that submitted it, which the ``File``
            entry of the outputs' metadata names as Blender does; None: ``blend_file``.
        keep_frames: a video job also delivers its frames (32-bit float EXRs, next to the
            video: ``shot_0001.exr``); otherwise they go once the video is encoded.
        blender: the Blender the job renders with: ``auto`` (the one its file was saved
            with: the newest patch release of that major.minor the farm can have),
            ``newest`` (the farm's newest), a version (``4.5``, ``4.5.3``) or the path of a
            Blender the farm has (see :mod:`renderfarm.blenders`).
        max_workers: on a farm that asks Ray's autoscaler for workers (``--autoscale``),
            the most this job asks for; None: as many as its waiting tasks can keep busy.
    """

    blend_file: str
    frames: str | None = None
    tiles: tuple[int, int] = (1, 1)
    samples: int | None = None
    percentage: int | None = None
    device: str = "auto"
    output: str | None = None
    retries: int = 2
    task_timeout: float | None = None
    allow_scripts: bool = False
    overscan: int | None = None
    scene: str | None = None
    name: str | None = None
    group_tiles: bool = True
    denoise: str = "auto"
    chunks: int = 1
    files: str = "bundle"
    allow_missing: bool = False
    project: str | None = None
    bundle: dict[str, Any] | None = None
    verify: float | None = None
    estimate: str | None = None
    budget: float | None = None
    notify: str | None = None
    after: tuple[str, ...] = ()
    after_frames: bool = False
    require: str | None = None
    origin: str | None = None
    keep_frames: bool = False
    blender: str = "auto"
    max_workers: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.blend_file, str) or not self.blend_file:
            raise InputError("blend_file must be the path of a .blend file")
        object.__setattr__(self, "tiles", tuple(self.tiles))
        if len(self.tiles) != 2:
            raise InputError(f"tiles must be (columns, rows), not {self.tiles!r}")
        if self.tiles != AUTO_TILES:
            _check_int("tile columns", self.tiles[0], 1, MAX_GRID)
            _check_int("tile rows", self.tiles[1], 1, MAX_GRID)
        if self.frames is not None:
            parse_frames(self.frames)
        if self.samples is not None:
            _check_int("samples", self.samples, 1, 2**24)
        if self.percentage is not None:
            _check_int("resolution percentage", self.percentage, 1, 32767)
        if self.device not in DEVICES:
            raise InputError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.output is not None:
            if not isinstance(self.output, str) or not self.output or len(self.output) > 4096:
                raise InputError("output must be a file pattern like render/shot_####.png or "
                                 f"a folder ending with /, not {str(self.output)[:60]!r}")
            if not is_output_folder(self.output):
                output_format(self.output)
        _check_int("retries", self.retries, 0, 100)
        if self.max_workers is not None:
            _check_int("max_workers", self.max_workers, 1, 1_000_000)
        if self.task_timeout is not None and not (
            isinstance(self.task_timeout, (int, float)) and self.task_timeout > 0
        ):
            raise InputError(f"task_timeout must be a positive number of seconds, not "
                             f"{self.task_timeout!r}")
        if self.overscan is not None:
            _check_int("overscan", self.overscan, 0, 4096)
        if not isinstance(self.allow_scripts, bool):
            raise InputError("allow_scripts must be true or false")
        _check_int("sample chunks", self.chunks, 0, 4096)
        if self.files not in FILE_MODES:
            raise InputError(f"files must be one of {', '.join(FILE_MODES)}, not "
                             f"{self.files!r}")
        if not isinstance(self.allow_missing, bool):
            raise InputError("allow_missing must be true or false")
        for label, text in (("scene", self.scene), ("name", self.name)):
            if text is not None and (not isinstance(text, str) or len(text) > 255
                                     or any(ord(c) < 32 or ord(c) == 127 for c in text)):
                raise InputError(f"{label} must be text of at most 255 characters without "
                                 f"control characters, not {str(text)[:60]!r}")
        if self.origin is not None and (not isinstance(self.origin, str)
                                        or len(self.origin) > 4096
                                        or any(ord(c) < 32 for c in self.origin)):
            raise InputError(f"origin must be the path of the .blend file (text without "
                             f"control characters), not {str(self.origin)[:60]!r}")
        if self.bundle is not None and not isinstance(self.bundle, dict):
            raise InputError("bundle must be a bundle manifest (an object)")
        if self.denoise not in DENOISE_MODES:
            raise InputError(f"denoise must be one of {', '.join(DENOISE_MODES)}, not "
                             f"{self.denoise!r}")
        check_verify(self.verify)
        if self.estimate not in (None, "first", "only"):
            raise InputError(f"estimate must be 'first' (probe, then render) or 'only', not "
                             f"{self.estimate!r}")
        if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(
                self.budget, (int, float)) or not self.budget >= 0):
            raise InputError(f"budget must be a cost of 0 or more, not {self.budget!r}")
        if self.notify is not None:
            from renderfarm.notify import check_url

            check_url(self.notify)
        if self.require is not None:
            from renderfarm.tags import parse_requirements

            parse_requirements(self.require)
        if not isinstance(self.blender, str) or not re.fullmatch(
                r"auto|newest|\d+\.\d+(\.\d+)?|/[^\x00-\x1f]{1,4095}", self.blender):
            raise InputError(f"blender must be auto, newest, a version like 4.5 or 4.5.3, or "
                             f"the absolute path of a Blender, not {str(self.blender)[:60]!r}")
        object.__setattr__(self, "after", tuple(self.after))
        if len(self.after) > 100 or not all(
                isinstance(j, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", j)
                for j in self.after):
            raise InputError(f"after must be up to 100 job ids, not {list(self.after)[:5]!r}")
        if not isinstance(self.after_frames, bool):
            raise InputError("after_frames must be true or false")
        if not isinstance(self.keep_frames, bool):
            raise InputError("keep_frames must be true or false")
        if self.budget is not None and self.estimate is None:
            object.__setattr__(self, "estimate", "first")  # a budget needs an estimate

    @classmethod
    def _convert(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "tiles" in data and isinstance(data["tiles"], list):
            data["tiles"] = tuple(data["tiles"])
        if "after" in data and isinstance(data["after"], list):
            data["after"] = tuple(data["after"])
        return data


@dataclass(frozen=True)
class RenderSettings(_Json):
    """How a worker sets up a scene for a job's tasks (identical for every task of a job).

    Attributes:
        blend_path: the file as the driver sees it.
        blend_hash: SHA-256 of the file's content; workers cache loaded scenes by it.
        scene: the scene to render, or None for the active one.
        samples: samples override.
        percentage: resolution percentage override.
        device: ``"cpu"`` or ``"gpu"`` (``auto`` is resolved before tasks run).
        allow_scripts: whether the file's Python may run.
        compositing: whether pieces render with the compositor (whole frames only).
        piece_format: ``"exr"`` (multilayer, every pass).
        threads: CPU threads for Cycles, 0 for all.
        post_denoise: render noisy pieces with the denoiser's passes (albedo, normal, vector)
            for a denoise of the merged frame.
        post_composite: pieces render without the compositor, which runs once on the merged
            frame.
        sample_chunks: pieces are sample ranges: light passes also render their colour pass
            (Cycles stores them divided by it), so the ranges combine exactly.
        allow_missing: render although the scene misses files (else a worker that finds a
            file missing after opening the scene fails the task).
        files: how the job's files reach workers (``bundle`` or ``shared``).
        blender: the version of the Blender that renders (``4.2.23``; the worker finds or
            prepares it on its machine), or empty for the worker's own ``bpy``.
    """

    blend_path: str
    blend_hash: str
    scene: str | None = None
    samples: int | None = None
    percentage: int | None = None
    device: str = "cpu"
    allow_scripts: bool = False
    compositing: bool = False
    piece_format: str = "exr"
    threads: int = 0
    post_denoise: bool = False
    sample_chunks: bool = False
    post_composite: bool = False
    allow_missing: bool = False
    files: str = "bundle"
    blender: str = ""


@dataclass(frozen=True)
class Task(_Json):
    """One unit of work: a tile of a frame.

    Attributes:
        job_id: the job this task belongs to.
        index: the task's number within the job.
        frame: the frame to render.
        tile: which pixels to render and keep.
        size: ``(width, height)`` of the full frame in pixels at the job's percentage.
        tiled: whether the frame is split (False: render the scene's frame as it is set up).
        samples: ``(offset, length)``: the sample range this task renders (``--split
            samples``), or None for all of them.
        chunk: which sample range of the piece this is (0 for the first or only one).
        covers: when several neighbouring tiles of a row are rendered in one call, the indices
            of the tasks this one stands for (its ``tile`` is then their union); empty for a
            task that is just itself.
    """

    job_id: str
    index: int
    frame: int
    tile: Tile
    size: tuple[int, int]
    tiled: bool = False
    covers: tuple[int, ...] = ()
    samples: tuple[int, int] | None = None
    chunk: int = 0

    @property
    def members(self) -> tuple[int, ...]:
        """The task indices this task renders (its own index unless it is a group)."""
        return self.covers or (self.index,)

    @property
    def task_id(self) -> str:
        """A readable id, unique within the job: ``f0001-t03``."""
        return f"f{self.frame:04d}-t{self.tile.index:02d}-c{self.chunk:02d}"

    @classmethod
    def _convert(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["tile"] = Tile.from_dict(data["tile"])
        data["size"] = tuple(data["size"])
        data["covers"] = tuple(data.get("covers", ()))
        if data.get("samples") is not None:
            data["samples"] = tuple(data["samples"])
        return data


@dataclass(frozen=True)
class TaskResult(_Json):
    """What a worker reports for a task.

    Attributes:
        task_index: :attr:`Task.index`.
        frame: the frame.
        tile: the tile index.
        ok: whether the piece was rendered.
        worker: the worker's id.
        node: the Ray node the worker ran on.
        device: the Cycles device(s) used, e.g. ``"CPU"`` or ``"OPTIX:NVIDIA A10"``.
        render_seconds: time inside Blender's render call.
        task_seconds: time from task start to piece ready (render, write, read back).
        load_seconds: time spent opening the file for this task (0 when already loaded).
        peak_memory_mb: Blender's peak render memory for the task.
        rss_mb: the worker process's peak resident memory.
        attempt: 1 for the first try, 2 for the first retry, ...
        started: wall-clock time (seconds since the epoch) the worker began the task.
        finished: wall-clock time the piece was ready.
        error: the error, as :meth:`RenderFarmError.to_dict`, when ``ok`` is False.
        covers: for neighbouring tiles rendered in one call, the indices of every task the
            call rendered (``task_index`` first); empty for a single tile.
        tiles: the grid tiles the call rendered (as the driver knows them from ``covers``:
            ``[4, 5]`` for a call that rendered tiles 4 and 5 of its frame); empty for a call
            of one tile (``tile``) or of no tile.
        kind: what the worker did for the job: ``render`` (a piece), ``check`` (a piece
            rendered again to verify another worker's), ``finish`` (denoise, composite or
            convert a merged frame), ``inspect`` (open the file, read the scene), ``probe``
            (a call of the estimate's probe) or ``encode`` (the job's video).
        pixels: pixels the call rendered (its region, overscan included).
        samples: samples per pixel it rendered.
        log: what Blender printed during the call: its last lines when it succeeded, all of
            it (up to 256 KiB: its start and its end) when it failed.
        piece_bytes: the size of the piece, when it stayed on its worker's node (pieces on
            nodes: :mod:`renderfarm.pieces`); else 0.
        piece_sha256: its SHA-256 as that worker computed it (pieces on nodes); else "".
        piece_stored: that node also wrote the piece where the job keeps its pieces for a
            restart (:func:`renderfarm.pieces.store_here`).
    """

    task_index: int
    frame: int
    tile: int
    ok: bool
    worker: str = ""
    node: str = ""
    device: str = ""
    render_seconds: float = 0.0
    task_seconds: float = 0.0
    load_seconds: float = 0.0
    peak_memory_mb: float = 0.0
    rss_mb: float = 0.0
    attempt: int = 1
    started: float = 0.0
    finished: float = 0.0
    error: dict[str, Any] | None = None
    covers: tuple[int, ...] = ()
    tiles: tuple[int, ...] = ()
    kind: str = "render"
    pixels: int = 0
    samples: int = 0
    log: str = ""
    piece_bytes: int = 0
    piece_sha256: str = ""
    piece_stored: bool = False

    @property
    def busy_seconds(self) -> float:
        """Seconds the worker spent on the call (wall clock: open, render, write)."""
        if self.finished > self.started > 0:
            return self.finished - self.started
        return self.task_seconds or self.render_seconds

    @property
    def members(self) -> tuple[int, ...]:
        """The task indices this result stands for."""
        return self.covers or (self.task_index,)

    @classmethod
    def _convert(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["covers"] = tuple(data.get("covers", ()))
        data["tiles"] = tuple(data.get("tiles", ()))
        return data


@dataclass(frozen=True)
class JobResult(_Json):
    """What a finished job returns.

    Attributes:
        job_id: the job's id.
        spec: the job as asked.
        scene: the scene facts it was planned from.
        frames: the frames rendered.
        outputs: ``{frame: output file}``: the frame's first file (its first view's);
            :attr:`frame_files` lists every file of each frame, :attr:`files` all of them.
        tasks: the result of every task attempt that finished (retries included).
        wall_seconds: time from submission to the last frame written.
        device: the device the job ran on (``cpu`` or ``gpu``).
        workers: number of workers used.
        warnings: things the user should know (fallbacks, ignored settings).
        tiles: the grid the frames were split into (what ``--tiles auto`` chose).
        hashes: ``{frame: SHA-256}`` of each output file as the farm wrote it.
        extra_outputs: ``{frame: {file: SHA-256}}`` of the other files written for each
            frame: views after the first (``shot_0001_R.png``), the compositor's File Output
            nodes' files, and (listed with the first frame) the job's video.
        checks: the verification of pieces (``--verify``): each check's frame, tile,
            workers, outcome and suspects (see :class:`~renderfarm.state.Check`).
        suspects: workers found to disagree with the majority (no more tasks sent to them).
        verify: the share of pieces the job checked.
        worker_cpus: CPUs each worker held (a CPU worker's device-seconds are core-seconds).
        started_at: when the job started (seconds since the epoch).
        estimate: the job's estimate, when it asked for one
            (:class:`~renderfarm.estimate.Estimate` as a dict).
        elastic: on a farm that asks Ray's autoscaler for its workers, what that cost
            (:func:`renderfarm.elastic.summary`: the render nodes' seconds up against the
            seconds they were busy, the time to the first task on a new node); else None.
        pieces: where the job's pieces were kept: ``{"kept_on": "head" | "nodes",
            "merged_on": [node ids frames were merged on], "lost": pieces lost with their
            node and rendered again, "stored": pieces their nodes also stored for a restart,
            "restored": pieces lost with their node and merged from those copies}``
            (:mod:`renderfarm.pieces`).
    """

    job_id: str
    spec: JobSpec
    scene: SceneInfo
    frames: tuple[int, ...]
    outputs: dict[int, Path]
    tasks: tuple[TaskResult, ...] = ()
    wall_seconds: float = 0.0
    device: str = "cpu"
    workers: int = 1
    warnings: tuple[str, ...] = ()
    tiles: tuple[int, int] = (1, 1)
    hashes: dict[int, str] = field(default_factory=dict)
    extra_outputs: dict[int, dict[str, str]] = field(default_factory=dict)
    checks: tuple[dict[str, Any], ...] = ()
    suspects: tuple[str, ...] = ()
    verify: float = 0.0
    worker_cpus: float = 1.0
    started_at: float = 0.0
    estimate: dict[str, Any] | None = None
    elastic: dict[str, Any] | None = None
    pieces: dict[str, Any] | None = None

    @property
    def renders(self) -> tuple[TaskResult, ...]:
        """The results of the job's own render tasks (not checks, finishing or opening)."""
        return tuple(t for t in self.tasks if t.kind == "render")

    @property
    def files(self) -> list[Path]:
        """Every file the job delivered: its frames, each view's, the File Output nodes',
        its video."""
        found = [*self.outputs.values(),
                 *(Path(p) for files in self.extra_outputs.values() for p in files)]
        return sorted(set(found))

    @property
    def frame_files(self) -> dict[int, list[Path]]:
        """Every file each frame produced, ``{frame: [files]}``: its output (``outputs``)
        first, then each other view's file and each File Output node's, sorted (the job's
        video is listed with its first frame)."""
        frames = sorted({*self.outputs, *self.extra_outputs})
        return {frame: [*([self.outputs[frame]] if frame in self.outputs else []),
                        *sorted(Path(p) for p in self.extra_outputs.get(frame, {}))]
                for frame in frames}

    @property
    def render_seconds(self) -> float:
        """Sum of the time workers spent inside Blender's render call."""
        return sum(t.render_seconds for t in self.tasks)

    @classmethod
    def _convert(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["spec"] = JobSpec.from_dict(data["spec"])
        data["scene"] = SceneInfo.from_dict(data["scene"])
        data["frames"] = tuple(data["frames"])
        data["outputs"] = {int(k): Path(v) for k, v in data["outputs"].items()}
        data["extra_outputs"] = {int(k): dict(v)
                                 for k, v in (data.get("extra_outputs") or {}).items()}
        data["tasks"] = tuple(TaskResult.from_dict(t) for t in data.get("tasks", ()))
        data["warnings"] = tuple(data.get("warnings", ()))
        data["tiles"] = tuple(data.get("tiles", (1, 1)))
        data["hashes"] = {int(k): str(v) for k, v in data.get("hashes", {}).items()}
        data["checks"] = tuple(data.get("checks", ()))
        data["suspects"] = tuple(data.get("suspects", ()))
        return data


def new_job_id() -> str:
    """A short unique job id: ``20261207-065501-4e39a0`` (when, and 3 random bytes)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"


def scene_info_from(reply: dict[str, Any]) -> SceneInfo:
    """The :class:`SceneInfo` in a worker's ``inspect`` reply, or the error it carries."""
    from renderfarm.errors import error_from

    if reply.get("ok"):
        return SceneInfo.from_dict(reply["info"])
    raise error_from(reply.get("error") or {"message": "inspection failed"})
