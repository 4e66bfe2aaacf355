"""Which event loop runs a command: uvloop where it is installed and supported, asyncio's own
otherwise. The pipeline hands every item between stages through the loop, so a faster loop
leaves more of a small machine's cores to the stages themselves."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Callable
from typing import Literal

import structlog

from ingest.infrastructure.config import ConfigError, EventLoop

log = structlog.get_logger()

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def uvloop_usable() -> bool:
    # uvloop builds for Linux and macOS only; auto keeps to Linux, where it is tested.
    return sys.platform == "linux" and importlib.util.find_spec("uvloop") is not None


def resolve(choice: EventLoop) -> Literal["uvloop", "asyncio"]:
    if choice == "asyncio":
        return "asyncio"
    if choice == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigError("INGEST_EVENT_LOOP=uvloop, but uvloop is not installed")
    if choice == "uvloop" or uvloop_usable():
        return "uvloop"
    return "asyncio"


def loop_factory(choice: EventLoop = "auto") -> LoopFactory:
    """For `asyncio.Runner(loop_factory=...)`; each loop it makes is logged (`event_loop`)."""
    name = resolve(choice)

    def new_loop() -> asyncio.AbstractEventLoop:
        if name == "uvloop":
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        log.info("event_loop", loop=name)
        return loop

    return new_loop
