#!/usr/bin/env bash
# Installs everything ingest needs on a Debian/Ubuntu machine: system packages (ffmpeg for audio;
# for the test suite espeak-ng and sox for synthetic speech, prometheus to check the dashboard's
# queries, docker-compose to validate the compose file, chromium and its driver for the search
# page's browser tests) and the Python environment in .venv.
# With an NVIDIA driver present the normal CUDA wheels are installed; otherwise a CPU-only stack.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

install_system_packages() {
    local missing=()
    for cmd in ffmpeg espeak-ng sox prometheus docker-compose chromium; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    [ ${#missing[@]} -eq 0 ] && return
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

# CTranslate2 4.x opens cuBLAS 12 and cuDNN 9 at run time; their wheels go in the same resolver
# run as torch's own CUDA wheels so the two agree. The service loads them from site-packages
# itself (workers/cuda_libs.py): no LD_LIBRARY_PATH to set.
install_gpu_stack() {
    "$VENV/bin/pip" install -q -e '.[dev]' nvidia-cublas-cu12 'nvidia-cudnn-cu12==9.*'
}

# PyPI's torch, torchaudio and torchcodec default to CUDA builds: pin the CPU torch first, keep it
# pinned, and run torchaudio without its CUDA-linked extension (its pure-Python paths suffice).
install_cpu_stack() {
    local constraints
    constraints=$(mktemp)
    printf 'torch==2.13.0+cpu\ntorchcodec==0.13.0\n' >"$constraints"
    "$VENV/bin/pip" install -q -c "$constraints" torch==2.13.0
    "$VENV/bin/pip" install -q -c "$constraints" -e '.[dev]' torchaudio==2.11.0 torchcodec==0.13.0
    rm -f "$VENV"/lib/python3*/site-packages/torchaudio/lib/*.so
    rm -f "$constraints"
}

install_system_packages
[ -x "$VENV/bin/pip" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q -U pip
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    install_gpu_stack
else
    install_cpu_stack
fi
"$VENV/bin/pip" check
