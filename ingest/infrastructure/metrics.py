"""Prometheus metrics of a run, in a registry of their own (passed around, never global)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

import ingest

# Stage names used as label values (bounded): download, decode, vad, speaker_check, transcribe,
# diarize, embed, store.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.queue_depth = Gauge(
            "ingest_queue_depth", "Items waiting in a queue between stages.", ["queue"], registry=r
        )
        self.queue_capacity = Gauge(
            "ingest_queue_capacity", "Size bound of a queue between stages.", ["queue"], registry=r
        )
        self.in_flight = Gauge(
            "ingest_stage_in_flight", "Videos a stage is working on now.", ["stage"], registry=r
        )
        self.items = Counter(
            "ingest_stage_items", "Videos a stage finished, by outcome.", ["stage", "outcome"],
            registry=r,
        )  # fmt: skip
        self.failures = Counter(
            "ingest_stage_failures", "Videos failed, by stage and kind of error.",
            ["stage", "kind"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "ingest_stage_duration_seconds", "Time a stage spends on one video.", ["stage"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.audio = Counter("ingest_audio_seconds", "Seconds of audio ingested.", registry=r)
        self.videos = Gauge(
            "ingest_videos", "Videos in the database, by status.", ["status"], registry=r
        )
        self.chunks = Counter("ingest_chunks_written", "Chunks stored.", registry=r)
        self.embed_batch = Histogram(
            "ingest_embed_batch_chunks", "Chunks per embedding batch.", buckets=BATCH_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.flush_rows = Counter(
            "ingest_db_flush_rows", "Chunk rows sent to the database.", registry=r
        )
        self.flush_latency = Histogram(
            "ingest_db_flush_duration_seconds", "Time of one sink transaction.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.speaker_paths = Counter(
            "ingest_speaker_path_decisions", "Speaker paths taken (fast, full, off).", ["path"],
            registry=r,
        )  # fmt: skip
        self.gpu_available = Gauge(
            "ingest_gpu_available", "Whether NVML reports at least one GPU.", registry=r
        )
        self.gpu_utilization = Gauge(
            "ingest_gpu_utilization_ratio", "GPU busy share over the last sample.", ["gpu"],
            registry=r,
        )  # fmt: skip
        self.gpu_memory_used = Gauge(
            "ingest_gpu_memory_used_bytes", "GPU memory in use.", ["gpu"], registry=r
        )
        self.gpu_memory_total = Gauge(
            "ingest_gpu_memory_total_bytes", "GPU memory in all.", ["gpu"], registry=r
        )
        self.leases_lost = Counter(
            "ingest_leases_lost", "Results dropped: another replica had taken the video over.",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.throttle_paused = Gauge(
            "ingest_throttle_paused", "Whether requests to a site are paused (throttled, or "
            "waiting for the user).", ["site"], registry=r,
        )  # fmt: skip
        self.throttle_pauses = Counter(
            "ingest_throttle_pauses", "Pauses of a site after a throttling signal.", ["site"],
            registry=r,
        )  # fmt: skip
        self.throttle_seconds = Counter(
            "ingest_throttle_paused_seconds", "Seconds a site's requests spent paused.", ["site"],
            registry=r,
        )  # fmt: skip
        self.build = Info("ingest_build", "Version and models of this process.", registry=r)
        self.build.info({"version": ingest.__version__, "host": socket.gethostname()})

    def describe_models(self, **models: str) -> None:
        self.build.info({"version": ingest.__version__, "host": socket.gethostname(), **models})

    def watch_queue(self, name: str, depth: Callable[[], int], capacity: int) -> None:
        self.queue_depth.labels(name).set_function(depth)
        self.queue_capacity.labels(name).set(capacity)


def error_kind(exc: BaseException) -> str:
    """A bounded label for what went wrong, from the exception's type and message."""
    text = f"{type(exc).__name__} {exc}".lower()
    kinds = (
        ("http_4xx", ("http error 4", "http 4")),
        ("http_5xx", ("http error 5", "http 5")),
        ("timeout", ("timed out", "timeout")),
        ("network", ("connection", "unreachable", "resolve", "network", "transport")),
        ("out_of_memory", ("out of memory",)),
        ("bad_media", ("invalid data", "no audio", "decod", "codec", "format")),
    )
    for kind, needles in kinds:
        if any(n in text for n in needles):
            return kind
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "other"
