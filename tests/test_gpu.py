"""The GPU path without a GPU. NVML faults are injected at the library boundary: a stand-in
pynvml module that raises the real pynvml exception classes, as the C library's return codes
would make pynvml raise them. The CUDA libraries are looked for in wheel folders laid out as
the nvidia-* wheels lay them out."""

from __future__ import annotations

import _ctypes
import asyncio
import importlib
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest
from structlog.testing import capture_logs

from ingest.infrastructure.gpu import GpuSampler
from ingest.infrastructure.metrics import Metrics
from workers.cuda_libs import (
    CTRANSLATE2_LIBRARIES,
    Needed,
    load_library,
    preload_cuda_libraries,
    wheel_folder,
)

GIB = 1024**3


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    utilization: int | Exception = 50
    memory: tuple[int, int] | Exception = (10 * GIB, 80 * GIB)
    migs: list[FakeGpu | None] = field(default_factory=list)  # None: an empty MIG slot
    mig: bool = False


class FakeNvml:
    """The pynvml functions GpuSampler calls, on a made-up machine."""

    NVMLError = pynvml.NVMLError

    def __init__(self, gpus: list[FakeGpu], init_error: Exception | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.86.15"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        return gpu.uuid

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> bytes:
        return gpu.name.encode()

    def nvmlDeviceGetMaxMigDeviceCount(self, gpu: FakeGpu) -> int:
        if not gpu.migs:
            raise pynvml.NVMLError_NotSupported()
        return len(gpu.migs)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, gpu: FakeGpu, index: int) -> FakeGpu:
        if (mig := gpu.migs[index]) is None:
            raise pynvml.NVMLError_NotFound()
        return mig

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> Any:
        if isinstance(gpu.utilization, Exception):
            raise gpu.utilization
        return SimpleNamespace(gpu=gpu.utilization, memory=0)

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> Any:
        if isinstance(gpu.memory, Exception):
            raise gpu.memory
        used, total = gpu.memory
        return SimpleNamespace(used=used, total=total, free=total - used)


def mig_slice(uuid: str) -> FakeGpu:
    return FakeGpu(uuid, "NVIDIA H100 MIG 3g.40gb", pynvml.NVMLError_NotSupported(),
                   (2 * GIB, 40 * GIB), mig=True)  # fmt: skip


def machine() -> FakeNvml:
    """GPU 0 plain, GPU 1 split into two MIG slices (slot 1 empty), GPU 2 plain."""
    migs = [mig_slice("MIG-aaaa-0000"), None, mig_slice("MIG-bbbb-2222")]
    return FakeNvml([
        FakeGpu("GPU-1111-0000", utilization=10),
        FakeGpu("GPU-2222-0000", migs=migs),
        FakeGpu("GPU-3333-0000", utilization=30, memory=(3 * GIB, 80 * GIB)),
    ])  # fmt: skip


def sampler(nvml: Any, visible: str | None) -> GpuSampler:
    return GpuSampler(Metrics(), nvml, lambda: visible)


def gauge(metrics: Metrics, name: str, gpu: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"gpu": gpu})


def test_no_library_or_driver_means_no_gpus_and_no_warning() -> None:
    for error in (pynvml.NVMLError_LibraryNotFound(), pynvml.NVMLError_DriverNotLoaded()):
        with capture_logs() as logs:
            gpus = sampler(FakeNvml([], error), None)
        assert gpus.devices == [] and gpus.read() == []
        assert gpus.unavailable
        assert gpus.metrics.registry.get_sample_value("ingest_gpu_available") == 0
        assert [entry["log_level"] for entry in logs] == ["debug"]
        gpus.sample()
        asyncio.run(gpus.run(0.01))  # returns at once: nothing to sample


def test_no_driver_where_cuda_sees_a_gpu_is_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ingest.infrastructure.gpu.cuda_device_count", lambda: 1)
    with capture_logs() as logs:
        gpus = sampler(FakeNvml([], pynvml.NVMLError_LibraryNotFound()), None)
    assert gpus.read() == []
    assert [entry["log_level"] for entry in logs] == ["warning"]


def test_missing_pynvml_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    gpus = GpuSampler(Metrics(), visible=lambda: None)
    assert gpus.devices == [] and gpus.unavailable


def test_any_other_init_failure_is_one_warning() -> None:
    with capture_logs() as logs:
        gpus = sampler(FakeNvml([], pynvml.NVMLError_NoPermission()), None)
    assert gpus.read() == []
    assert [(e["event"], e["log_level"]) for e in logs] == [("gpu_metrics_unavailable", "warning")]


def test_unset_means_every_physical_gpu_in_nvml_order() -> None:
    gpus = sampler(machine(), None)
    assert [(d.gpu, d.uuid) for d in gpus.devices] == [
        ("0", "GPU-1111-0000"), ("1", "GPU-2222-0000"), ("2", "GPU-3333-0000")
    ]  # fmt: skip
    assert gpus.driver_version() == "570.86.15"
    assert gpus.names()[0] == "NVIDIA H100 80GB HBM3"


def test_indices_are_remapped_to_the_process_cuda_index() -> None:
    gpus = sampler(machine(), "2,0")
    assert [(d.gpu, d.uuid) for d in gpus.devices] == [("0", "GPU-3333-0000"),
                                                      ("1", "GPU-1111-0000")]  # fmt: skip
    gpus.sample()
    metrics = gpus.metrics
    assert gauge(metrics, "ingest_gpu_utilization_ratio", "0") == pytest.approx(0.3)
    assert gauge(metrics, "ingest_gpu_memory_used_bytes", "0") == 3 * GIB
    assert gauge(metrics, "ingest_gpu_utilization_ratio", "1") == pytest.approx(0.1)
    assert gauge(metrics, "ingest_gpu_utilization_ratio", "2") is None


def test_gpu_uuids_and_their_prefixes() -> None:
    gpus = sampler(machine(), "GPU-3333, GPU-1111-0000")
    assert [d.uuid for d in gpus.devices] == ["GPU-3333-0000", "GPU-1111-0000"]


def test_mig_uuids_read_memory_and_leave_utilisation_absent_with_one_warning() -> None:
    gpus = sampler(machine(), "MIG-bbbb-2222,MIG-aaaa-0000")
    assert [(d.gpu, d.uuid) for d in gpus.devices] == [("0", "MIG-bbbb-2222"),
                                                      ("1", "MIG-aaaa-0000")]  # fmt: skip
    with capture_logs() as logs:
        for _ in range(3):
            gpus.sample()
    metrics = gpus.metrics
    assert gauge(metrics, "ingest_gpu_utilization_ratio", "0") is None
    assert gauge(metrics, "ingest_gpu_memory_used_bytes", "0") == 2 * GIB
    assert gauge(metrics, "ingest_gpu_memory_total_bytes", "1") == 40 * GIB
    warnings = [(e["event"], e["gpu"], e["field"]) for e in logs]
    assert warnings == [("gpu_metric_unavailable", "0", "utilization"),
                        ("gpu_metric_unavailable", "1", "utilization")]  # fmt: skip


def test_uuids_not_found_are_left_out_and_reported() -> None:
    with capture_logs() as logs:
        gpus = sampler(machine(), "GPU-9999,1,MIG-cccc,7")
    assert [(d.gpu, d.uuid) for d in gpus.devices] == [("1", "GPU-2222-0000")]
    assert [e["cuda_visible_device"] for e in logs if e["event"] == "gpu_not_found"] == [
        "GPU-9999", "MIG-cccc", "7"
    ]  # fmt: skip


def test_a_gpu_lost_mid_run_drops_its_metrics_and_keeps_sampling() -> None:
    nvml = machine()
    gpus = sampler(nvml, "0,2")
    gpus.sample()
    nvml.gpus[0].utilization = pynvml.NVMLError_GpuIsLost()
    nvml.gpus[0].memory = pynvml.NVMLError_Unknown()
    with capture_logs() as logs:
        gpus.sample()
        gpus.sample()
    metrics = gpus.metrics
    assert gauge(metrics, "ingest_gpu_utilization_ratio", "0") is None
    assert gauge(metrics, "ingest_gpu_memory_used_bytes", "0") is None
    assert gauge(metrics, "ingest_gpu_utilization_ratio", "1") == pytest.approx(0.3)
    assert len(logs) == 2  # one per failing field, however many samples


def test_shutdown_failure_is_not_raised() -> None:
    nvml = machine()

    def broken() -> None:
        raise pynvml.NVMLError_Uninitialized()

    nvml.nvmlShutdown = broken  # type: ignore[method-assign]
    sampler(nvml, None).close()


# The CUDA libraries CTranslate2 opens, from the nvidia-* wheels.


def fake_wheel(root: Path, package: str, files: dict[str, Path | None]) -> Path:
    """site-packages/nvidia/<package>/lib as the wheel lays it out; a file is a copy of a real
    shared object, or (None) text that no loader takes."""
    lib = root / "nvidia" / package / "lib"
    lib.mkdir(parents=True)
    for name, source in files.items():
        if source is None:
            (lib / name).write_text("not a shared object")
        else:
            shutil.copy(source, lib / name)
    return lib


@pytest.fixture
def site_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [name for name in sys.modules if name == "nvidia" or name.startswith("nvidia.")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.invalidate_caches()
    return tmp_path


NOWHERE = Needed("cuFAKE 1", "nvidia.cufake", "nvidia-cufake-cu12", "libcufake.so.1",
                 ("libcufake*.so.1",))  # fmt: skip


def test_without_the_wheels_each_library_is_reported_missing() -> None:
    library = load_library(NOWHERE)
    assert (library.ok, library.source, library.loaded) == (False, None, ())
    assert library.error and "pip install nvidia-cufake-cu12" in library.error
    assert "cuFAKE 1 missing" in library.describe()
    assert {lib.name for lib in preload_cuda_libraries()} == {"cuBLAS 12", "cuDNN 9"}


def test_a_file_that_is_not_a_library_is_reported_not_raised(site_packages: Path) -> None:
    lib = fake_wheel(site_packages, "cublas",
                     {"libcublasLt.so.12": None, "libcublas.so.12": None})  # fmt: skip
    assert wheel_folder("nvidia.cublas") == lib
    library = load_library(CTRANSLATE2_LIBRARIES[0])
    assert (library.ok, library.source, library.loaded) == (False, str(lib), ())
    assert library.error and "libcublas.so.12" in library.error


def test_the_wheels_files_are_loaded_by_path(site_packages: Path) -> None:
    real = Path(_ctypes.__file__)  # any shared object the loader takes
    lib = fake_wheel(site_packages, "cudnn",
                     {"libcudnn.so.9": real, "libcudnn_ops.so.9": None})  # fmt: skip
    library = load_library(CTRANSLATE2_LIBRARIES[1])
    assert library.ok and library.loaded == (str(lib / "libcudnn.so.9"),)
    assert library.error and "libcudnn_ops.so.9" in library.error  # reported, not fatal
    assert library.describe() == f"cuDNN 9 ({lib})"


def test_an_empty_wheel_folder(site_packages: Path) -> None:
    lib = fake_wheel(site_packages, "cudnn", {})
    library = load_library(CTRANSLATE2_LIBRARIES[1])
    assert not library.ok and library.error == f"no libcudnn.so.9 in {lib}"
