"""The CUDA libraries CTranslate2 opens at run time, found without LD_LIBRARY_PATH.

CTranslate2 4.x opens cuBLAS 12 and cuDNN 9 by name the first time a model runs on a GPU. The
`nvidia-cublas-cu12` and `nvidia-cudnn-cu12` wheels put them inside site-packages, where the
dynamic loader never looks; loading them here first, by path and RTLD_GLOBAL, makes the later
lookup by name find the copy already loaded. Without the wheels the system's copies are tried.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Needed:
    name: str  # e.g. "cuBLAS 12"
    package: str  # the wheel's import name, e.g. "nvidia.cublas"
    pip: str  # the wheel's name on PyPI
    required: str  # the file that must load; the wheel's others are loaded when they can be
    patterns: tuple[str, ...]  # the wheel's files, in the order they depend on each other


CTRANSLATE2_LIBRARIES = (
    Needed("cuBLAS 12", "nvidia.cublas", "nvidia-cublas-cu12", "libcublas.so.12",
           ("libcublasLt.so.12", "libcublas.so.12")),
    Needed("cuDNN 9", "nvidia.cudnn", "nvidia-cudnn-cu12==9.*", "libcudnn.so.9",
           ("libcudnn*.so.9",)),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class CudaLibrary:
    name: str  # e.g. "cuBLAS 12"
    source: str | None  # the wheel's folder, or "system"; None when not found
    ok: bool = False  # whether the file the engine opens is loaded
    loaded: tuple[str, ...] = ()  # the files loaded
    error: str | None = None  # why some file could not be loaded

    def describe(self) -> str:
        if self.ok:
            return f"{self.name} ({self.source})"
        return f"{self.name} missing: {self.error}"


def wheel_folder(
    package: str, find_spec: Callable[[str], Any] = importlib.util.find_spec
) -> Path | None:
    """The `lib` folder of an installed nvidia-* wheel, or None."""
    try:
        spec = find_spec(package)
    except (ImportError, ValueError):  # the `nvidia` namespace itself is absent
        return None
    for location in getattr(spec, "submodule_search_locations", None) or ():
        if (folder := Path(location) / "lib").is_dir():
            return folder
    return None


def _load_all(paths: list[str]) -> tuple[list[str], str | None]:
    """Loads every file, retrying those whose dependencies were not loaded yet; the files of
    one wheel depend on each other by name, in an order the wheel does not state."""
    loaded: list[str] = []
    errors: dict[str, str] = {}
    pending = list(paths)
    while pending:
        errors = {}
        for path in pending:
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                loaded.append(path)
            except OSError as exc:
                errors[path] = str(exc)
        if len(errors) == len(pending):
            break
        pending = list(errors)
    return loaded, "; ".join(errors.values()) or None


def load_library(
    needed: Needed, find_spec: Callable[[str], Any] = importlib.util.find_spec
) -> CudaLibrary:
    """The wheel's copy when it is installed, else the system's (found by name)."""
    folder = wheel_folder(needed.package, find_spec)
    if folder is None:
        loaded, error = _load_all([needed.required])
        if error is not None:
            return CudaLibrary(needed.name, None, error=f"pip install {needed.pip} ({error})")
        return CudaLibrary(needed.name, "system", True, tuple(loaded))
    paths = [str(path) for pattern in needed.patterns for path in sorted(folder.glob(pattern))]
    if not paths:
        return CudaLibrary(needed.name, str(folder), error=f"no {needed.required} in {folder}")
    loaded, error = _load_all(paths)
    ok = any(Path(path).name == needed.required for path in loaded)
    return CudaLibrary(needed.name, str(folder), ok, tuple(loaded), error)


@functools.cache
def preload_cuda_libraries() -> tuple[CudaLibrary, ...]:
    """Loads what CTranslate2 needs on a GPU, once per process; never raises."""
    return tuple(load_library(needed) for needed in CTRANSLATE2_LIBRARIES)
