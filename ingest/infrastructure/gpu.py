"""GPU utilisation and memory from NVML, sampled in the background (never by a subprocess).

NVML is optional and partial: a CPU machine has no library or driver, a MIG slice answers its
memory but not its utilisation, and a GPU can fall off the bus mid-run. Each of these leaves a
metric absent and is logged once; nothing NVML raises ever leaves the sampler.

The GPUs watched are the ones this process uses (CUDA_VISIBLE_DEVICES: indices, GPU- or MIG-
UUIDs, or unset for all), matched to NVML's devices by UUID, since NVML numbers every GPU of the
machine while CUDA numbers only the visible ones. Each is labelled with its CUDA index.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import structlog

from ingest.infrastructure.config import cuda_device_count, cuda_visible_devices
from ingest.infrastructure.metrics import Metrics

log = structlog.get_logger()
T = TypeVar("T")
# No NVML library or no driver: an ordinary CPU machine, unless CUDA sees a GPU.
_NO_DRIVER = ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded")


@dataclass(frozen=True, slots=True)
class GpuReading:
    gpu: str  # the process's CUDA index
    utilization: float | None  # 0..1 of the last sample period; None where NVML cannot say
    memory_used: int | None  # bytes
    memory_total: int | None


@dataclass(frozen=True, slots=True)
class GpuDevice:
    gpu: str  # the process's CUDA index
    uuid: str
    handle: Any


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _mig_devices(nvml: Any, handle: Any) -> Iterator[Any]:
    """The MIG slices of a physical GPU (none when MIG is off or unsupported)."""
    try:
        slots = int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))
    except Exception:  # NotSupported: a GPU without MIG
        return
    for slot in range(slots):
        try:
            yield nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except Exception:  # NotFound: an empty slot
            log.debug("mig_slot_empty", slot=slot)


def nvml_devices(nvml: Any) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """(UUID, handle) of every physical GPU in NVML order, and every MIG slice by UUID."""
    physical: list[tuple[str, Any]] = []
    slices: dict[str, Any] = {}
    for index in range(int(nvml.nvmlDeviceGetCount())):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        physical.append((_text(nvml.nvmlDeviceGetUUID(handle)), handle))
        for mig in _mig_devices(nvml, handle):
            slices[_text(nvml.nvmlDeviceGetUUID(mig))] = mig
    return physical, slices


def _resolve(entry: str, physical: list[tuple[str, Any]], slices: dict[str, Any]) -> Any:
    """One CUDA_VISIBLE_DEVICES entry as an NVML (UUID, handle), or None. CUDA accepts any
    unambiguous prefix of a UUID, so prefixes match too."""
    if entry.isdigit():
        index = int(entry)
        return physical[index] if index < len(physical) else None
    pool = list(slices.items()) if entry.startswith("MIG-") else physical
    found = [(uuid, handle) for uuid, handle in pool if uuid.startswith(entry)]
    return found[0] if len(found) == 1 else None


def visible_gpus(nvml: Any, visible: str | None) -> list[GpuDevice]:
    """The NVML devices behind the process's CUDA devices; an entry that matches none is
    logged and left out (CUDA itself ignores such entries and those after them)."""
    physical, slices = nvml_devices(nvml)
    if visible is None:
        return [GpuDevice(str(i), uuid, handle) for i, (uuid, handle) in enumerate(physical)]
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    devices = []
    for position, entry in enumerate(entries):
        if (match := _resolve(entry, physical, slices)) is None:
            log.warning("gpu_not_found", cuda_visible_device=entry, gpu=str(position))
            continue
        devices.append(GpuDevice(str(position), match[0], match[1]))
    return devices


class GpuSampler:
    """Reads the process's GPUs through NVML; without a driver it reports none available.
    `nvml` is the pynvml module (imported when not given), `visible` gives
    CUDA_VISIBLE_DEVICES."""

    def __init__(
        self,
        metrics: Metrics,
        nvml: Any = None,
        visible: Callable[[], str | None] = cuda_visible_devices,
    ) -> None:
        self.metrics = metrics
        self._nvml: Any = None
        self.devices: list[GpuDevice] = []
        self.unavailable: str | None = None  # why NVML sees no GPU, when it does not
        self._warned: set[tuple[str, str]] = set()
        try:
            library = nvml if nvml is not None else importlib.import_module("pynvml")
            library.nvmlInit()
            self._nvml = library
            self.devices = visible_gpus(library, visible())
        except Exception as exc:
            self._unavailable(exc)
        metrics.gpu_available.set(1 if self.devices else 0)

    def _unavailable(self, exc: Exception) -> None:
        self.unavailable = str(exc) or type(exc).__name__
        no_driver = type(exc).__name__ in _NO_DRIVER or isinstance(exc, ImportError)
        if no_driver and cuda_device_count() == 0:  # a CPU machine: nothing to warn about
            log.debug("gpu_metrics_unavailable", reason=self.unavailable)
        else:
            log.warning("gpu_metrics_unavailable", reason=self.unavailable)
        self.close()

    def _ask(self, gpu: str, field: str, call: Callable[[], T]) -> T | None:
        """One NVML query; a failure makes the field absent, with one warning per GPU and field
        however often it recurs."""
        try:
            return call()
        except Exception as exc:
            if (gpu, field) not in self._warned:
                self._warned.add((gpu, field))
                log.warning("gpu_metric_unavailable", gpu=gpu, field=field,
                            reason=str(exc) or type(exc).__name__)  # fmt: skip
            return None

    def read(self) -> list[GpuReading]:
        """One reading per watched GPU, in CUDA index order (none without a driver)."""
        nvml = self._nvml
        readings = []
        for device in self.devices if nvml is not None else []:
            get_rates = partial(nvml.nvmlDeviceGetUtilizationRates, device.handle)
            rates = self._ask(device.gpu, "utilization", get_rates)
            memory = self._ask(
                device.gpu, "memory", partial(nvml.nvmlDeviceGetMemoryInfo, device.handle)
            )
            readings.append(GpuReading(
                device.gpu,
                rates.gpu / 100 if rates is not None else None,
                int(memory.used) if memory is not None else None,
                int(memory.total) if memory is not None else None,
            ))  # fmt: skip
        return readings

    def names(self) -> list[str]:
        return [self.name(device) or "unknown GPU" for device in self.devices]

    def name(self, device: GpuDevice) -> str | None:
        nvml = self._nvml
        if nvml is None:
            return None
        return self._ask(device.gpu, "name", lambda: _text(nvml.nvmlDeviceGetName(device.handle)))

    def driver_version(self) -> str | None:
        nvml = self._nvml
        if nvml is None:
            return None
        return self._ask("all", "driver", lambda: _text(nvml.nvmlSystemGetDriverVersion()))

    def sample(self) -> None:
        metrics = self.metrics
        for reading in self.read():
            for gauge, value in (
                (metrics.gpu_utilization, reading.utilization),
                (metrics.gpu_memory_used, reading.memory_used),
                (metrics.gpu_memory_total, reading.memory_total),
            ):
                if value is None:  # absent, rather than a stale or made-up value
                    gauge.remove(reading.gpu)
                else:
                    gauge.labels(reading.gpu).set(value)

    def close(self) -> None:
        if self._nvml is not None:
            nvml, self._nvml = self._nvml, None
            try:
                nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("nvml_shutdown_failed", error=str(exc))

    async def run(self, interval_s: float) -> None:
        """Samples until cancelled."""
        try:
            while self.devices:
                await asyncio.to_thread(self.sample)
                await asyncio.sleep(interval_s)
        finally:
            self.close()
