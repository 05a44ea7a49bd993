"""The ``renderfarm`` command.

Exit codes: 0 done, 2 usage, 3 bad input, 4 render failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from renderfarm import __version__
from renderfarm.errors import RenderFarmError
from renderfarm.options import add_autoscale_options, autoscale_settings, positive_int

logger = logging.getLogger("renderfarm")

EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 4, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``renderfarm`` command."""
    parser = _Parser(prog="renderfarm", description="Render Blender scenes on a Ray cluster.")
    parser.add_argument("--version", action="version", version=f"renderfarm {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging; show tracebacks")
    common.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    jobs = argparse.ArgumentParser(add_help=False)
    jobs.add_argument("--frames", help="frames, e.g. '1-8' or '1-10,15,20-30x2' "
                        "(default: the scene's range)")
    jobs.add_argument("--tiles", default="1x1", help="'auto' (picked from the frame size, "
                        "the frames and the workers) or split each frame in COLSxROWS tiles "
                        "(default 1x1)")
    jobs.add_argument("-o", "--output", default=None,
                        help="output pattern; '#' runs are the frame, the extension picks the "
                        "format (.exr: multilayer with every pass unless the scene writes "
                        "single-layer EXR; .png, .jpg, .tif, .webp, .tga, .dpx, .cin, .hdr, "
                        ".bmp), keeping the scene's other settings for it; a folder ending "
                        "with / keeps the scene's file names; default: the scene's own output "
                        "path and settings, // relative to the .blend's folder")
    jobs.add_argument("--samples", type=positive_int, help="render samples override")
    jobs.add_argument("--percentage", type=positive_int,
                        help="resolution percentage override")
    jobs.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="render device (default: auto, GPU when the cluster has one)")
    jobs.add_argument("--scene", help="scene to render (default: the file's active scene)")
    jobs.add_argument("--retries", type=int, default=2, help="tries again for a failed task")
    jobs.add_argument("--task-timeout", type=float, dest="timeout",
                      help="seconds a task may take")
    jobs.add_argument("--overscan", type=int,
                        help="pixels rendered around each tile (default: from the scene)")
    jobs.add_argument("--split", choices=("tiles", "samples"), default="tiles",
                        help="'samples' renders each frame (or tile) as sample ranges on "
                        "several workers and combines them exactly (Cycles)")
    jobs.add_argument("--chunks", type=positive_int,
                        help="sample ranges per frame or tile (default with --split samples: "
                        "one per worker)")
    jobs.add_argument("--denoise", choices=("auto", "post", "render"), default="auto",
                        help="scenes that denoise: 'auto' denoises split frames once after the "
                        "merge (seam-free), 'post' always after the merge, 'render' keeps "
                        "Blender's render-time denoise (whole frames)")
    jobs.add_argument("--one-call-per-tile", action="store_true",
                        help="never let a worker render neighbouring tiles in one call")
    jobs.add_argument("--allow-scripts", action="store_true",
                        help="run Python embedded in the file (needs --permit-scripts)")
    jobs.add_argument("--files", choices=("bundle", "shared"), default="bundle",
                      help="'bundle' (default) sends the .blend and every file it uses "
                      "(libraries, textures, caches), so workers need not see this disk; "
                      "'shared': workers read the same paths (a studio file server)")
    jobs.add_argument("--keep-frames", action="store_true",
                      help="a video job (the scene writes FFMPEG, or -o shot.mp4) also keeps "
                      "its frames, as 32-bit float EXRs next to the video")
    jobs.add_argument("--allow-missing", action="store_true",
                      help="render although the scene needs files that cannot be found "
                      "(each is a warning); default: the job fails naming them")
    jobs.add_argument("--project", help="the project folder the bundle keeps relative "
                      "paths from (default: the .blend's folder)")
    jobs.add_argument("--max-job-workers", dest="job_workers", type=positive_int,
                      metavar="N", help="on a farm that asks Ray's autoscaler for workers: "
                      "the most this job asks for (default: as many as its tasks can use)")
    jobs.add_argument("--blender", metavar="VERSION", default="auto",
                      help="the Blender to render with: auto (the one the file was saved with, "
                      "default), newest, a version (4.5, 4.5.3: the farm prepares it on first "
                      "use) or the path of a Blender the farm has")
    jobs.add_argument("--require", metavar="TERMS",
                      help="what the job's workers must offer, e.g. 'vram>=16,tag=lighting' "
                      "(from their Ray nodes' labels and resources); a job no worker can take "
                      "says so at once")
    jobs.add_argument("--notify", metavar="URL",
                      help="POST the job's summary as JSON to this http(s) URL when it ends "
                      "(a farm service takes URLs its administrator allows)")
    jobs.add_argument("--verify", type=float, metavar="SHARE",
                      help="render this share of pieces again on another worker and compare "
                      "them (0.1: a tenth); a worker whose pixels disagree with the majority "
                      "is suspect, gets no more tasks and its pieces are rendered again "
                      "(default: the farm's, 0)")
    farm = argparse.ArgumentParser(add_help=False)
    farm.add_argument("--farm", default=os.environ.get("RENDERFARM_ADDRESS",
                                                       "tcp://127.0.0.1:5555"),
                      help="the farm service's address (default: $RENDERFARM_ADDRESS or "
                      "tcp://127.0.0.1:5555)")
    farm.add_argument("--server-key", default=os.environ.get("RENDERFARM_SERVER_KEY"),
                      help="the service's public key (Z85 text or .key file; default "
                      "$RENDERFARM_SERVER_KEY); none for a loopback farm without keys")
    farm.add_argument("--client-key", default=os.environ.get("RENDERFARM_CLIENT_KEY"),
                      help="this client's secret key file (.key_secret; default "
                      "$RENDERFARM_CLIENT_KEY)")
    farm.add_argument("--reply-timeout", type=float, default=15.0,
                      help="seconds to wait for each reply (default 15)")

    # a farm of this process's own (render, estimate)
    local = argparse.ArgumentParser(add_help=False)
    local.add_argument("blend", help="the .blend file")
    local.add_argument("--timeout", type=float, help="the same as --task-timeout")
    local.add_argument("--address", help="Ray cluster address ('auto', 'ray://head:10001'); "
                       "default: start Ray on this machine")
    local.add_argument("--workers", type=positive_int,
                       help="number of workers (default: one per GPU, or one per node)")
    local.add_argument("--permit-scripts", action="store_true",
                       help="let this farm run jobs that allow scripts")
    local.add_argument("--price", action="append", default=[], metavar="DEVICE=PRICE",
                       help="price per device-hour for the report or estimate (CPU per "
                       "core-hour; repeatable)")
    add_autoscale_options(local)

    render = sub.add_parser("render", parents=[common, jobs, local],
                            help="render a .blend on the farm",
                            description="Render a .blend on a Ray cluster (a local one by "
                            "default) and write one merged image per frame.")
    render.add_argument("--json", action="store_true",
                        help="print a machine-readable summary on stdout")
    render.add_argument("--no-progress", action="store_true", help="no progress bar")
    render.add_argument("--report", metavar="OUT", help="write the job's report (.html: a "
                        "page with a timeline and contact sheet; else JSON)")

    estimate = sub.add_parser(
        "estimate", parents=[common, jobs, local], help="predict a job's time and cost",
        description="Render a low-sample probe of a few frames (the job's own tiles) on the "
        "farm and predict the job's wall time on the current workers, its device-seconds and "
        "its cost; nothing else is rendered.")
    estimate.add_argument("--json", action="store_true", help="print the estimate as JSON")

    inspect = sub.add_parser("inspect", parents=[common], help="show what a .blend holds",
                             description="Show engine, resolution, frame range, camera, view "
                             "layers and passes, linked and missing files of a .blend.")
    inspect.add_argument("blend", help="the .blend file")
    inspect.add_argument("--json", action="store_true", help="print JSON")

    blenders = sub.add_parser(
        "blenders", parents=[common], help="list this machine's or a farm's Blenders, "
        "or add one",
        description="List the Blenders this machine renders with (its own bpy and the "
        "versions prepared in its cache, $RENDERFARM_BLENDERS), or with --farm those of a "
        "farm service's workers and the machines that have each; or prepare one on this "
        "machine ahead of the first job that needs it: 'renderfarm blenders add 4.5' "
        "installs bpy 4.5 from this machine's package index into the cache.")
    blenders.add_argument("action", nargs="?", choices=("list", "add"), default="list")
    blenders.add_argument("version", nargs="?", help="with add: the version (4.5, 4.5.3)")
    blenders.add_argument("--json", action="store_true", help="print JSON")
    blenders.add_argument("--farm", help="a farm service's address: list its workers' "
                          "Blenders and their machines instead of this machine's")
    blenders.add_argument("--server-key", default=os.environ.get("RENDERFARM_SERVER_KEY"),
                          help="with --farm: the farm's public key file")
    blenders.add_argument("--client-key", default=os.environ.get("RENDERFARM_CLIENT_KEY"),
                          help="with --farm: this client's secret key file")
    blenders.add_argument("--reply-timeout", type=float, default=15.0, help=argparse.SUPPRESS)

    local_farm = sub.add_parser(
        "local-farm", parents=[common], help="show or stop the local farm commands reuse",
        description="render and estimate, without --address, keep a local farm (Ray and "
        "its workers, Blender started, the last scene loaded) for the next command; it "
        "stops after $RENDERFARM_LOCAL_FARM_IDLE seconds unused (default 300). "
        "RENDERFARM_LOCAL_FARM=off does without it.")
    local_farm.add_argument("action", nargs="?", choices=("status", "stop"), default="status")

    from renderfarm.service_cli import add_commands

    add_commands(sub, common, jobs, farm)
    sub.add_parser("bench", help="run the benchmarks (benchmarks/run.py of a source checkout)",
                   add_help=False)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else
                                         logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # Blender Asset Tracer logs each missing file; the job's error names them
        logging.getLogger("blender_asset_tracer").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        if args.command == "render":
            return _render(args)
        if args.command == "estimate":
            return _estimate(args)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "blenders":
            return _blenders(args)
        if args.command == "local-farm":
            return _local_farm_command(args)
        from renderfarm.service_cli import run

        return run(args)
    except KeyboardInterrupt:
        print("renderfarm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RenderFarmError as exc:
        if args.verbose:
            logger.exception("details")
        print(f"renderfarm: error: {exc.one_line()}", file=sys.stderr)
        if exc.log_tail and args.verbose:
            print(exc.log_tail, file=sys.stderr)
        return exc.exit_code


def _local_farm_command(args: argparse.Namespace) -> int:
    """``renderfarm local-farm [status|stop]``."""
    import time

    from renderfarm import local_farm

    if args.action == "stop":
        if local_farm.status() is not None and local_farm.in_use():
            print("renderfarm: error: a command is rendering on the local farm; it was not "
                  "stopped (stop that command first, or let the farm stop itself once "
                  "unused)", file=sys.stderr)
            return EXIT_INPUT
        print("stopped the local farm" if local_farm.stop() else "no local farm runs")
        return EXIT_OK
    info = local_farm.status()
    if info is None:
        print("no local farm runs" + ("" if local_farm.enabled() else
                                      " (RENDERFARM_LOCAL_FARM is off)"))
        return EXIT_OK
    idle = float(info.get("idle", local_farm.idle_seconds()))
    print(f"a local farm runs at {info['address']} (keeper pid {info['pid']}), up "
          f"{time.time() - float(info.get('started', time.time())):.0f} s; it stops after "
          f"{idle:g} s unused" + (" (a command uses it now)" if local_farm.in_use() else ""))
    return EXIT_OK


def _blenders(args: argparse.Namespace) -> int:
    """``renderfarm blenders [list|add VERSION]``."""
    import json

    from renderfarm.blender_envs import cache_root, local_blenders, prepare
    from renderfarm.blenders import Version
    from renderfarm.errors import InputError

    if args.action == "add":
        if not args.version:
            raise InputError("renderfarm blenders add needs a version, e.g. 4.5 or 4.5.3, "
                             "or the path of a Blender executable")
        if os.sep in args.version:
            from renderfarm.blender_envs import register

            found = register(args.version)
            print(f"Blender {found.version} ({found.kind}): {found.path}")
            return 0
        found = prepare(Version.parse(args.version),
                        progress=lambda line: print(f"renderfarm: {line}", file=sys.stderr))
        print(f"Blender {found.version} ({found.kind}): {found.path}")
        return 0
    if args.farm:
        return _farm_blenders(args)
    have = local_blenders()
    if args.json:
        print(json.dumps([{"version": str(b.version), "kind": b.kind, "path": b.path}
                          for b in have], indent=1))
        return 0
    if not have:
        print(f"no Blender here: install bpy, or prepare one (renderfarm blenders add 4.5; "
              f"cache: {cache_root()})")
        return 0
    for blender in have:
        print(f"{str(blender.version):<10} {blender.kind:<11} {blender.path}")
    return 0


def _farm_blenders(args: argparse.Namespace) -> int:
    """``renderfarm blenders --farm ADDR``: the Blenders of a farm service's workers, each
    with the machines (Ray nodes) that have it."""
    import json

    from renderfarm.client import FarmClient

    with FarmClient(args.farm, server_key=args.server_key, client_key=args.client_key,
                    timeout=args.reply_timeout) as client:
        workers = client.request("workers")[0]["workers"]
    found: dict[tuple[str, str, str], set[str]] = {}
    for worker in workers:
        for build in worker.get("blender_builds") or []:
            key = (str(build.get("version")), str(build.get("kind")), str(build.get("path")))
            found.setdefault(key, set()).add(str(worker.get("node") or "?"))
    listed = [{"version": v, "kind": k, "path": p, "machines": sorted(nodes)}
              for (v, k, p), nodes in sorted(found.items())]
    if args.json:
        print(json.dumps(listed, indent=1))
    elif not listed:
        print("the farm has no started worker now (its Blenders are listed once one starts)")
    for entry in [] if args.json else listed:
        machines = ", ".join(m[:12] for m in entry["machines"])
        print(f"{entry['version']:<10} {entry['kind']:<11} {entry['path']}  on {machines}")
    return 0


def _bench(argv: list[str]) -> int:
    """Run ``benchmarks/run.py`` of the checkout this package was installed from."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks", "run.py")
    if not os.path.isfile(script):
        print("renderfarm: error: the benchmarks ship with the source checkout, not the "
              "package; run 'pip install -e .' in a clone", file=sys.stderr)
        return EXIT_USAGE
    return subprocess.call([sys.executable, script, *argv])


def _farm_config(args: argparse.Namespace) -> Any:
    """The :class:`~renderfarm.farm.FarmConfig` of ``render`` and ``estimate``."""
    from renderfarm.farm import FarmConfig
    from renderfarm.report import parse_prices

    return FarmConfig(address=args.address, workers=args.workers,
                      permit_scripts=args.permit_scripts,
                      ray_log_level=logging.INFO if args.verbose else logging.ERROR,
                      prices=parse_prices(args.price), **autoscale_settings(args))


@contextlib.contextmanager
def _local_farm(config: Any, spec: Any, quiet: bool = False) -> Iterator[Any]:
    """``config``, on the local farm later commands reuse when it names no cluster (see
    :mod:`renderfarm.local_farm`; unchanged when another command holds it). A job that runs
    the file's scripts, or reads its files in place (``--files shared``: a texture changed
    since would not be read again by a worker that kept the scene loaded), gets a Ray of
    its own."""
    from dataclasses import replace

    from renderfarm import local_farm

    if config.address or os.environ.get("RAY_ADDRESS") or config.autoscale \
            or not local_farm.enabled() or spec.allow_scripts or spec.files == "shared":
        yield config
        return

    def started(idle: float) -> None:
        if not quiet:
            print(f"renderfarm: started a local farm that your next commands reuse; it stops "
                  f"after {idle:g} s unused ('renderfarm local-farm stop' stops it now, "
                  "RENDERFARM_LOCAL_FARM=off does without)", file=sys.stderr)

    with local_farm.use(started=started) as address:
        yield config if address is None else replace(config, address=address,
                                                     keep_warm=True)


def _render(args: argparse.Namespace) -> int:
    from renderfarm.farm import Farm, check_spec
    from renderfarm.options import job_spec

    spec = job_spec(args, args.output)  # None: the scene's own output path and settings
    check_spec(spec, _farm_config(args))  # bad input fails here, before Ray starts
    with _local_farm(_farm_config(args), spec, args.quiet or args.json) as config, \
            Farm(config=config) as farm:
        handle = farm.submit(spec)
        try:
            _follow(handle, show_bar=not (args.no_progress or args.quiet or args.json))
            result = handle.result()
        except KeyboardInterrupt:
            print("renderfarm: cancelling...", file=sys.stderr)
            handle.cancel()
            handle.wait(60)
            raise
        finally:
            if args.report and handle.done():
                _write_report(handle, args.report)
            if spec.notify and handle.done():
                _notify(handle, spec.notify)
    if args.json:
        summary = result.to_dict()
        summary["render_seconds"] = result.render_seconds
        # every file each frame produced (views, File Output nodes', the video), not only
        # its first view's ("outputs")
        summary["frame_files"] = {str(frame): [str(p) for p in files]
                                  for frame, files in result.frame_files.items()}
        summary["files"] = [str(p) for p in result.files]
        summary["transfer"] = handle.transfer  # what bundling stored: files, bytes
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(_rendered(result))
    return EXIT_OK


def _rendered(result: Any) -> str:
    """The line ``render`` ends with: the frames, and the other files (views, File
    Output nodes', a video)."""
    where = f"in {result.wall_seconds:.1f} s on {result.workers} {result.device} worker(s)"
    others = [p for files in result.extra_outputs.values() for p in files]
    line = f"rendered {len(result.frames)} frame(s) {where}"
    if result.outputs:
        first, last = min(result.outputs), max(result.outputs)
        line += f": {result.outputs[first]}" + (f" .. {result.outputs[last]}"
                                                 if last != first else "")
    if others:
        line += (f"; {others[0]}" if len(others) == 1 else
                 f"; and {len(others)} other file(s): {others[0]} ..")
    return line


def _estimate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from renderfarm.farm import Farm, check_spec
    from renderfarm.options import job_spec

    spec = replace(job_spec(args, args.output), estimate="only", budget=None)
    check_spec(spec, _farm_config(args))
    with _local_farm(_farm_config(args), spec, args.json) as config, \
            Farm(config=config) as farm:
        handle = farm.submit(spec)
        _follow(handle, show_bar=False, say=("info",))  # the estimate is printed once, below
        result = handle.result()
    estimate = result.estimate or {}
    if args.json:
        print(json.dumps(estimate, indent=2))
        return EXIT_OK
    cost = estimate.get("cost")
    print(f"{estimate['wall_seconds']:.1f} s on {estimate['workers']} worker(s), "
          f"{estimate['device_seconds']:.1f} device-s, cost "
          f"{'no price set (--price)' if cost is None else f'{cost:.4f}'} "
          f"({estimate['tasks']} tasks; probe of frames "
          f"{', '.join(map(str, estimate['probe_frames']))} took "
          f"{estimate['probe_seconds']:.1f} s)")
    return EXIT_OK


def _notify(handle: Any, url: str) -> None:
    """Tell the job's webhook that it ended (a failed notification is a warning)."""
    from renderfarm.notify import send, summary

    report = handle.report()
    error = None
    try:
        handle.result(timeout=0)
    except RenderFarmError as exc:
        error = exc.one_line()
    job = {"job_id": handle.job_id, "name": handle.spec.name, "owner": "", "state":
           report["state"], "error": error, "frames_done": len(report["outputs"]),
           "frames_total": len(report["frames"]), "elapsed": report["wall_seconds"],
           "warnings": report["warnings"]}
    if not send(url, summary(job, report)):
        print(f"renderfarm: warning: the notification to {url} failed", file=sys.stderr)


def _write_report(handle: Any, target: str) -> None:
    """Write a local job's report: an HTML page (``.html``) or JSON."""
    from pathlib import Path

    report = handle.report()
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".html", ".htm"):
        from renderfarm.merge import thumbnail
        from renderfarm.report import render_html

        thumbnails = {}
        for frame, output in handle.snapshot().get("outputs", {}).items():
            try:
                thumbnails[int(frame)] = thumbnail(Path(output))
            except (RenderFarmError, OSError) as exc:
                logger.info("no thumbnail of %s: %s", output, exc)
        path.write_text(render_html(report, thumbnails), encoding="utf-8")
    else:
        path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"renderfarm: report written to {path}", file=sys.stderr)


def _follow(handle: Any, show_bar: bool, say: tuple[str, ...] = ("info", "estimate")) -> None:
    """Show a job's progress bar, or print its events of the kinds ``say`` and its
    warnings."""
    if show_bar:
        from renderfarm.progress import show_progress

        show_progress(handle)
        return
    for event in handle.events():
        if event.kind in say:
            print(f"renderfarm: {event.message}", file=sys.stderr)
        elif event.kind in ("warning", "task_retry", "task_failed"):
            print(f"renderfarm: {event.kind.replace('_', ' ')}: {event.message}",
                  file=sys.stderr)


def inspect_file(path: str) -> dict[str, Any]:
    """Inspect a ``.blend`` in a child process (a crashing file cannot take the caller down).

    Raises:
        BlendFileError: the file is missing, not a ``.blend``, or Blender cannot open it.
    """
    from renderfarm.blendfile import check_blend_file
    from renderfarm.errors import BlendFileError, error_from

    check_blend_file(path)
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "report.json")
        proc = subprocess.run(
            [sys.executable, "-m", "renderfarm.blender.inspect", path, out],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        if not os.path.exists(out):
            tail = "\n".join(proc.stdout.splitlines()[-10:])
            raise BlendFileError(f"Blender crashed while opening the file (exit code "
                                 f"{proc.returncode})", path=path, log_tail=tail)
        with open(out, encoding="utf-8") as handle:
            report: dict[str, Any] = json.load(handle)
    if "error" in report:
        raise error_from(report["error"])
    return report


def _inspect(args: argparse.Namespace) -> int:
    report = inspect_file(args.blend)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return EXIT_OK
    print(format_report(report))
    return EXIT_OK


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of an inspection report."""
    lines = [f"file: {report['file']} (saved by Blender {report['blender_version']})"]
    for scene in report["scenes"]:
        active = " (active)" if scene["scene"] == report["active_scene"] else ""
        res = scene["resolution"]
        lines += [
            f"scene {scene['scene']}{active}",
            f"  engine: {scene['engine']}",
            f"  resolution: {res[0]}x{res[1]} at {scene['percentage']}%",
            f"  frames: {scene['frame_start']}-{scene['frame_end']} step {scene['frame_step']}"
            f" at {scene['fps']:g} fps",
            f"  camera: {scene['camera'] or 'NONE (cannot render; set a camera)'}",
        ]
        if scene.get("blender"):
            lines.append(f"  read by: Blender {scene['blender']}")
        if scene["use_border"]:
            lines.append(f"  border: {scene['border']} crop={scene['crop_to_border']}")
        if scene["samples"] is not None:
            lines.append(f"  samples: {scene['samples']} adaptive={scene['adaptive_sampling']}"
                         f" denoising={scene['denoising']}")
        lines.append(f"  compositing: {'yes' if scene['compositing'] else 'no'}")
        output = scene.get("output_path") or "//"
        lines.append(f"  output: {output} as {scene.get('file_format', '?')}")
        if scene.get("views"):
            how = {"INDIVIDUAL": "a file per view", "STEREO_3D": "one stereo 3D file",
                   "MULTIVIEW": "one multilayer EXR"}.get(scene.get("views_format", ""),
                                                          scene.get("views_format"))
            views = ", ".join(f"{name} ({suffix})" for name, suffix in
                              zip(scene["views"], scene.get("view_suffixes") or [], strict=False))
            lines.append(f"  views: {views}; written as {how}")
        for node, folder in zip(scene.get("file_outputs") or [],
                                scene.get("file_output_dirs") or [], strict=False):
            lines.append(f"  File Output node {node}: writes into {folder}")
        for layer, passes in scene["view_layers"].items():
            lines.append(f"  view layer {layer}: {', '.join(passes) or 'combined'}")
    lines.append("linked files: " + (", ".join(report["libraries"]) or "none"))
    missing = report["missing_files"]
    lines.append("missing files: " + (", ".join(missing) if missing else "none"))
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
