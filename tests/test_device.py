"""Device choice and pool sizing with fake device lists and cluster resources."""

from __future__ import annotations

import pytest

from renderfarm.blender.device import DeviceInfo, choose_gpu_devices
from renderfarm.errors import ResourceError
from renderfarm.executor import plan_pool

CPU = DeviceInfo("CPU", "Xeon", "CPU")
CUDA0 = DeviceInfo("CUDA", "NVIDIA A10", "CUDA_NVIDIA A10_0000:65:00")
CUDA1 = DeviceInfo("CUDA", "NVIDIA A10", "CUDA_NVIDIA A10_0001:66:00")
OPTIX0 = DeviceInfo("OPTIX", "NVIDIA A10", "CUDA_NVIDIA A10_0000:65:00_OptiX")
HIP0 = DeviceInfo("HIP", "AMD W7900", "HIP_AMD W7900_0000:03:00")


def test_optix_beats_cuda_and_cpu_is_never_enabled() -> None:
    choice = choose_gpu_devices([CPU, CUDA0, CUDA1, OPTIX0])
    assert choice.backend == "OPTIX" and choice.devices == (OPTIX0,)
    assert choice.describe() == "OPTIX:NVIDIA A10"


def test_falls_back_through_backends() -> None:
    assert choose_gpu_devices([CPU, HIP0]).backend == "HIP"
    assert choose_gpu_devices([CUDA0, HIP0], order=("HIP", "CUDA")).backend == "HIP"
    metal = DeviceInfo("METAL", "Apple M2", "METAL_Apple M2")
    assert choose_gpu_devices([CPU, metal]).devices == (metal,)


def test_assigned_gpus_filter_devices_when_ray_did_not_restrict_visibility() -> None:
    choice = choose_gpu_devices([CUDA0, CUDA1], assigned=[1], visible_restricted=False)
    assert choice.devices == (CUDA1,)
    # Ray set CUDA_VISIBLE_DEVICES: the listed devices are already the worker's own
    assert choose_gpu_devices([CUDA0], assigned=[1]).devices == (CUDA0,)


def test_no_gpu_is_a_clear_error() -> None:
    with pytest.raises(ResourceError, match="no usable GPU.*CPU.*--device cpu"):
        choose_gpu_devices([CPU])


def test_pool_shape_for_gpus_is_one_worker_per_gpu() -> None:
    shape = plan_pool("gpu", [16, 16], 4)
    assert (shape.workers, shape.num_gpus, shape.num_cpus) == (4, 1.0, 1.0)
    assert plan_pool("gpu", [16], 4, workers=2).workers == 2
    with pytest.raises(ResourceError, match="has no GPU.*--device cpu"):
        plan_pool("gpu", [2], 0)
    with pytest.raises(ResourceError, match="5 GPU workers asked"):
        plan_pool("gpu", [2], 4, workers=5)


def test_pool_shape_for_cpus() -> None:
    assert plan_pool("cpu", [2], 0) == plan_pool("cpu", [2], 0, workers=1)
    one = plan_pool("cpu", [2], 0)
    assert (one.workers, one.num_cpus, one.threads) == (1, 2.0, 2)
    two = plan_pool("cpu", [2], 0, workers=2)
    assert (two.workers, two.num_cpus, two.threads) == (2, 1.0, 1)
    many = plan_pool("cpu", [2], 0, workers=4)
    assert many.num_cpus == 0.5 and many.threads == 1
    nodes = plan_pool("cpu", [8, 8, 4], 0)
    assert nodes.workers == 3 and nodes.num_cpus <= 8
    with pytest.raises(ResourceError, match="largest node has 2"):
        plan_pool("cpu", [2], 0, cpus_per_worker=4)
