"""Choosing the Cycles device a worker renders on.

:func:`choose_gpu_devices` is pure and decides from a list of devices as Cycles reports them;
:func:`configure_device` applies the choice to a scene through ``bpy``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from renderfarm.errors import ResourceError

logger = logging.getLogger(__name__)

#: GPU backends from best to worst, for a worker that has several.
GPU_BACKENDS: tuple[str, ...] = ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL")


@dataclass(frozen=True)
class DeviceInfo:
    """A device as Cycles lists it (``type`` is CPU, CUDA, OPTIX, HIP, ONEAPI or METAL)."""

    type: str
    name: str
    id: str


@dataclass(frozen=True)
class DeviceChoice:
    """The backend and devices a worker enables.

    Attributes:
        backend: ``"CPU"`` or one of :data:`GPU_BACKENDS`.
        devices: the devices to enable (empty for CPU).
    """

    backend: str
    devices: tuple[DeviceInfo, ...] = ()

    def describe(self) -> str:
        """A short label for reports, e.g. ``"OPTIX:NVIDIA A10,NVIDIA A10"`` or ``"CPU"``."""
        if self.backend == "CPU":
            return "CPU"
        return f"{self.backend}:{','.join(d.name for d in self.devices)}"


def choose_gpu_devices(
    devices: Sequence[DeviceInfo],
    assigned: Sequence[int] | None = None,
    order: Sequence[str] = GPU_BACKENDS,
    visible_restricted: bool = True,
) -> DeviceChoice:
    """Pick the best GPU backend a worker has and the devices to enable.

    Args:
        devices: every device Cycles lists, for all backends (CPU entries are ignored).
        assigned: the GPU ids Ray assigned to this worker, or None when Ray does not manage
            GPUs here.
        order: backends from most to least preferred.
        visible_restricted: True when Ray already limited the process to its GPUs (it sets
            ``CUDA_VISIBLE_DEVICES`` and friends), so every listed device is the worker's own.
            When False and ``assigned`` is given, the devices at the assigned positions of the
            backend's list are kept (Cycles lists them in the driver's ordinal order).

    Returns:
        The preferred backend that has at least one device, with all its devices.

    Raises:
        ResourceError: no GPU backend has a device.
    """
    for backend in order:
        found = [d for d in devices if d.type == backend]
        if found and assigned is not None and not visible_restricted:
            found = [found[i] for i in assigned if 0 <= i < len(found)] or found[:len(assigned)]
        if found:
            return DeviceChoice(backend, tuple(found))
    listed = ", ".join(sorted({d.type for d in devices})) or "none"
    raise ResourceError(
        f"this worker has no usable GPU for Cycles (device types found: {listed}); "
        "render with --device cpu or check the GPU drivers on the worker"
    )


def list_devices() -> list[DeviceInfo]:  # pragma: no cover - needs bpy and GPU drivers
    """Every device Cycles can use on this machine, for every backend."""
    import bpy

    prefs = bpy.context.preferences.addons["cycles"].preferences
    result: list[DeviceInfo] = []
    for backend in GPU_BACKENDS:
        try:
            found = prefs.get_devices_for_type(backend)
        except (TypeError, ValueError):
            continue  # backend not compiled into this Blender build
        result.extend(DeviceInfo(d.type, d.name, d.id) for d in found)
    return result


def configure_device(scene: object, device: str, assigned: Sequence[int] | None = None) -> str:
    """Make ``scene`` render on the CPU or the worker's GPUs and return a label for reports.

    Args:
        scene: a ``bpy.types.Scene`` whose engine is Cycles.
        device: ``"cpu"`` or ``"gpu"``.
        assigned: GPU ids Ray assigned to this worker.

    Raises:
        ResourceError: ``gpu`` was asked and no backend has a device.
    """
    import bpy

    cycles = getattr(scene, "cycles", None)
    if device == "cpu":
        if cycles is not None:
            cycles.device = "CPU"
        return "CPU"
    prefs = bpy.context.preferences.addons["cycles"].preferences
    restricted = any(
        os.environ.get(v) for v in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                                    "ROCR_VISIBLE_DEVICES", "ONEAPI_DEVICE_SELECTOR")
    )
    choice = choose_gpu_devices(list_devices(), assigned, visible_restricted=restricted)
    prefs.compute_device_type = choice.backend
    prefs.refresh_devices()
    chosen = {d.id for d in choice.devices}
    for dev in prefs.devices:
        dev.use = dev.id in chosen
    if cycles is not None:
        cycles.device = "GPU"
    logger.info("rendering on %s", choice.describe())
    return choice.describe()
