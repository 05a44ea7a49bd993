"""Build the "Render on Network" Blender extension: one zip per platform.

    python blender_addon/build_extension.py                      # this machine's platform
    python blender_addon/build_extension.py --platform linux-x64 --platform windows-x64

Each zip holds the add-on, a wheel of renderfarm (its client is what the add-on imports),
Blender Asset Tracer (bundles) and the pyzmq and zstandard wheels for Blender's Python (3.11)
on that platform, listed in the manifest's
``wheels`` with ``platforms`` set to match. Install it in Blender with Edit > Preferences >
Get Extensions > Install from Disk. pyzmq wheels come from PyPI (``pip download``) unless
``--pyzmq-wheel`` gives one.
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: Blender 4.2 to 5.0 ship Python 3.11
PYTHON_VERSION = "3.11"
#: Blender platform -> pip platform tags of the pyzmq wheels that run there
PLATFORMS = {
    "linux-x64": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"],
    "linux-arm64": ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64",
                    "manylinux2014_aarch64"],
    "windows-x64": ["win_amd64"],
    "windows-arm64": ["win_arm64"],
    "macos-x64": ["macosx_10_15_x86_64", "macosx_10_15_universal2"],
    "macos-arm64": ["macosx_11_0_arm64", "macosx_10_15_universal2"],
}
#: files of the add-on folder that are not part of the extension
EXCLUDE = {"build_extension.py"}


def current_platform() -> str:
    """This machine's Blender platform name."""
    machine = platform.machine().lower()
    arch = "arm64" if machine in ("arm64", "aarch64") else "x64"
    system = {"linux": "linux", "win32": "windows", "darwin": "macos"}.get(sys.platform)
    if system is None:
        raise SystemExit(f"unknown platform {sys.platform}; give --platform")
    return f"{system}-{arch}"


def build_renderfarm_wheel(folder: Path) -> Path:
    """A wheel of this checkout's renderfarm (no dependencies: the add-on needs its client)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(folder), str(REPO)], check=True)
    return next(folder.glob("renderfarm-*.whl"))


def download_pyzmq(folder: Path, blender_platform: str) -> Path:
    """The pyzmq wheel for Blender's Python on ``blender_platform`` (same version as here)."""
    import zmq

    tags = [arg for tag in PLATFORMS[blender_platform] for arg in ("--platform", tag)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", PYTHON_VERSION,
                    "--implementation", "cp", *tags, f"pyzmq=={zmq.pyzmq_version()}",
                    "-d", str(folder)], check=True)
    return next(folder.glob("pyzmq-*.whl"))


def download_bundling(folder: Path, blender_platform: str) -> list[Path]:
    """Blender Asset Tracer (pure Python) and zstandard for Blender's Python on
    ``blender_platform`` (Blender 5 saves zstd-compressed files), as installed here."""
    from importlib.metadata import version

    tags = [arg for tag in PLATFORMS[blender_platform] for arg in ("--platform", tag)]
    for requirement in (f"blender-asset-tracer=={version('blender-asset-tracer')}",
                        f"zstandard=={version('zstandard')}"):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "--python-version", PYTHON_VERSION,
                        "--implementation", "cp", *tags, requirement, "-d", str(folder)],
                       check=True)
    return [next(folder.glob("blender_asset_tracer-*.whl")),
            next(folder.glob("zstandard-*.whl"))]


def manifest(wheels: list[str], blender_platform: str) -> str:
    """The add-on's manifest with ``wheels`` and ``platforms`` filled in."""
    text = (HERE / "blender_manifest.toml").read_text()
    listed = ", ".join(f'"./wheels/{name}"' for name in wheels)
    text, count = re.subn(r"^wheels = \[.*?\]$", f"wheels = [{listed}]\n"
                          f'platforms = ["{blender_platform}"]', text, flags=re.M)
    if count != 1:
        raise SystemExit("blender_manifest.toml has no 'wheels = [...]' line to fill")
    return text


def build(blender_platform: str, out: Path, pyzmq_wheel: Path | None = None) -> Path:
    """Build the extension zip for one platform; returns its path."""
    if blender_platform not in PLATFORMS:
        raise SystemExit(f"unknown platform {blender_platform}; known: {', '.join(PLATFORMS)}")
    from renderfarm import __version__

    with tempfile.TemporaryDirectory() as tmp:
        wheels_dir = Path(tmp)
        wheels = [build_renderfarm_wheel(wheels_dir),
                  pyzmq_wheel or download_pyzmq(wheels_dir, blender_platform),
                  *download_bundling(wheels_dir, blender_platform)]
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"renderfarm-{__version__}-{blender_platform.replace('-', '_')}.zip"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(HERE.iterdir()):
                if path.suffix == ".py" and path.name not in EXCLUDE:
                    archive.write(path, path.name)
            archive.writestr("blender_manifest.toml",
                             manifest([w.name for w in wheels], blender_platform))
            for wheel in wheels:
                archive.write(wheel, f"wheels/{wheel.name}")
    return target


def main(argv: list[str] | None = None) -> int:
    """Build the zips asked for on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", action="append",
                        help=f"one of {', '.join(PLATFORMS)} (default: this machine's)")
    parser.add_argument("--out", default=str(REPO / "dist"), help="output folder (dist/)")
    parser.add_argument("--pyzmq-wheel", help="use this pyzmq wheel instead of downloading")
    args = parser.parse_args(argv)
    for name in args.platform or [current_platform()]:
        print(build(name, Path(args.out), Path(args.pyzmq_wheel) if args.pyzmq_wheel else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
