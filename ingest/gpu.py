"""GPU utilisation and memory from NVML, sampled in the background (never by a subprocess)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import structlog

from ingest.metrics import Metrics

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class GpuReading:
    utilization: float  # 0..1 of the last sample period
    memory_used: int  # bytes
    memory_total: int


class GpuSampler:
    """Reads every visible GPU through NVML; without a driver it reports none available."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._nvml: Any = None
        self._handles: list[Any] = []
        self.unavailable: str | None = None  # why NVML sees no GPU, when it does not
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
        except Exception as exc:  # no driver, no library, no device: a CPU machine
            log.debug("nvml_unavailable", error=str(exc))
            self.unavailable = str(exc) or type(exc).__name__
        metrics.gpu_available.set(1 if self._handles else 0)

    def read(self) -> list[GpuReading]:
        """One reading per visible GPU, in index order (none without a driver)."""
        readings = []
        for handle in self._handles:
            rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            readings.append(GpuReading(rates.gpu / 100, memory.used, memory.total))
        return readings

    def names(self) -> list[str]:
        return [str(self._nvml.nvmlDeviceGetName(handle)) for handle in self._handles]

    def sample(self) -> None:
        for index, reading in enumerate(self.read()):
            gpu = str(index)
            self.metrics.gpu_utilization.labels(gpu).set(reading.utilization)
            self.metrics.gpu_memory_used.labels(gpu).set(reading.memory_used)
            self.metrics.gpu_memory_total.labels(gpu).set(reading.memory_total)

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml = None

    async def run(self, interval_s: float) -> None:
        """Samples until cancelled."""
        try:
            while self._handles:
                await asyncio.to_thread(self.sample)
                await asyncio.sleep(interval_s)
        finally:
            self.close()
