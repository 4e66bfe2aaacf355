"""GPU utilisation and memory from NVML, sampled in the background (never by a subprocess)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from ingest.metrics import Metrics

log = structlog.get_logger()


class GpuSampler:
    """Reads every visible GPU through NVML; without a driver it reports none available."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
        except Exception as exc:  # no driver, no library, no device: a CPU machine
            log.debug("nvml_unavailable", error=str(exc))
        metrics.gpu_available.set(1 if self._handles else 0)

    def sample(self) -> None:
        for index, handle in enumerate(self._handles):
            gpu = str(index)
            rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            self.metrics.gpu_utilization.labels(gpu).set(rates.gpu / 100)
            self.metrics.gpu_memory_used.labels(gpu).set(memory.used)
            self.metrics.gpu_memory_total.labels(gpu).set(memory.total)

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
