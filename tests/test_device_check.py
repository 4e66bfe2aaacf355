"""The device check (`python -m bench.device`): its tiny-shape run on the CPU, with the packages
a lent GPU machine lacks hidden, reports every section; a failing or late configuration is
recorded and the others still run; targets are judged on the best runs."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench.device import TINY, Check, after_words, asr_configurations, measure_asr
from bench.device_models import WhisperShape
from bench.device_report import AsrRun, EmbedRun, Report, Timing, device_info, judge, stack
from tests.conftest import isolated_environment

ROOT = Path(__file__).resolve().parents[1]
# What the lent machines lack (pyannote stands for pyannote.audio).
MISSING = ("faster_whisper", "ctranslate2", "pyannote", "speechbrain", "asyncpg", "yt_dlp",
           "pgserver", "av")  # fmt: skip
# A module set to None in sys.modules is one Python cannot import and find_spec does not find,
# as if it were not installed.
HIDE_AND_RUN = """
import runpy, sys
for name in {missing!r}:
    sys.modules[name] = None
sys.argv = ["bench.device", "--quick", "--out", {out!r}]
runpy.run_module("bench.device", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def hidden_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One tiny-shape run in a process that cannot import the rest of the project's stack:
    the JSON it wrote, and what it printed."""
    out = tmp_path_factory.mktemp("device") / "device.json"
    code = HIDE_AND_RUN.format(missing=MISSING, out=str(out))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=isolated_environment(),
                            capture_output=True, text=True, timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.read_text())
    return report, result.stdout


def test_the_check_reports_every_section_with_sane_figures(
    hidden_run: tuple[dict[str, Any], str],
) -> None:
    report, printed = hidden_run
    assert json.loads(printed) == report
    assert report["scale"] == "tiny" and report["new_tokens"] == 5
    assert report["device"]["device"] == "cpu" and report["device"]["torch"]
    shapes = {(r["shape"], r["dtype"], r["words"], r["attention"]) for r in report["asr"]}
    for shape in ("tiny-turbo-layout", "tiny-distil-layout"):
        for dtype in ("bfloat16", "float16"):
            assert {(shape, dtype, False, "sdpa"), (shape, dtype, True, "eager")} <= shapes
        assert (shape, "bfloat16", False, "eager") in shapes
    for run in report["asr"]:
        assert run["status"] == "ok", run
        assert run["tokens_per_window"] == 5 and run["x_realtime"] > 0, run
        assert run["timing"]["seconds"] > 0 and run["timing"]["busy_percent"] is None
    assert {(r["shape"], r["dtype"]) for r in report["embeddings"]} == {
        (shape, dtype)
        for shape in ("tiny-minilm", "tiny-1536")
        for dtype in ("bfloat16", "float16", "float32")
    }
    for run in report["embeddings"]:
        assert run["status"] == "ok", run
        assert run["chunks_per_s"] > 0 and run["tokenize_chunks_per_s"] > 0, run
        # ~200 words: MiniLM's 256 tokens are full, the 512 of the wider one are not.
        assert 200 < run["tokens_per_chunk"] <= (256 if run["shape"] == "tiny-minilm" else 400)
    assert {r["dimension"] for r in report["embeddings"]} == {64, 96}
    assert report["targets_judged"] is False and "not judged" in report["note"]
    targets = {t["name"]: t for t in report["targets"]}
    assert set(targets) == {"asr_x_realtime", "asr_words_x_realtime", "embed_chunks_per_s",
                            "gpu_busy_asr", "gpu_busy_embed"}  # fmt: skip
    assert all(t["met"] is None for t in targets.values())
    assert targets["asr_x_realtime"]["value"] > 0 and targets["embed_chunks_per_s"]["value"] > 0
    assert report["seconds"] > 0 and report["method"]


def test_the_check_runs_without_the_rest_of_the_project_stack(
    hidden_run: tuple[dict[str, Any], str],
) -> None:
    report, _ = hidden_run
    found = {p["module"]: p for p in report["stack"]}
    assert all(not found[m]["importable"] for m in found if m.split(".")[0] in MISSING)
    assert {m for m in found if m.split(".")[0] in MISSING} == {*MISSING} - {"pyannote"} | {
        "pyannote.audio"
    }
    for module in ("torch", "transformers", "sentence_transformers", "pynvml"):
        assert found[module]["importable"] and found[module]["version"], found[module]


def test_a_failing_or_late_configuration_is_recorded_and_the_rest_still_run(
    tmp_path: Path,
) -> None:
    out = tmp_path / "device.json"
    report = Report(scale="tiny", device=device_info("cpu", None), stack=stack(), new_tokens=5)
    check = Check("cpu", None, report, out)
    broken = WhisperShape("broken", d_model=64, encoder_layers=1, decoder_layers=1, heads=3,
                          alignment_heads=((0, 0),))  # fmt: skip
    measure_asr(check, TINY, broken, asr_configurations(TINY))
    late = replace(TINY, asr_budget_s=0)
    measure_asr(check, late, broken, after_words(late))
    statuses = [run.status for run in check.report.asr]
    assert len(statuses) == 5
    assert all(s.startswith("error: ValueError") and "divisible" in s for s in statuses[:4])
    assert statuses[4:] == ["skipped: time budget"]
    written = json.loads(out.read_text())
    assert [run["status"] for run in written["asr"]] == statuses


def _asr(x_realtime: float, words: bool = False, busy: float = 95.0) -> AsrRun:
    return AsrRun("large-v3-turbo", "bfloat16", 64, words, "eager" if words else "sdpa",
                  windows=128, status="ok", timing=Timing(1.0, busy, 10.0),
                  x_realtime=x_realtime)  # fmt: skip


def test_the_targets_are_judged_on_the_best_runs() -> None:
    base = Report(scale="full", device=device_info("cpu", None), stack=(), new_tokens=90)
    minilm = EmbedRun("minilm-l6", "float16", 256, 384, 16384, status="ok",
                      timing=Timing(0.5, 60.0, 1.0), chunks_per_s=25_000.0)  # fmt: skip
    failed = replace(_asr(0.0), status="out of memory", x_realtime=None, timing=None)
    runs = (_asr(500.0, busy=99.0), _asr(700.0), _asr(300.0, words=True), failed)
    judged = judge(replace(base, asr=runs, embeddings=(minilm,)), True, "large-v3-turbo",
                   "minilm-l6")  # fmt: skip
    targets = {t.name: t for t in judged.targets}
    assert judged.targets_judged and judged.note == "targets judged"
    assert (targets["asr_x_realtime"].value, targets["asr_x_realtime"].met) == (700.0, True)
    assert (targets["asr_words_x_realtime"].value, targets["asr_words_x_realtime"].met) == (
        300.0,
        False,
    )
    assert targets["gpu_busy_asr"].met is True and targets["gpu_busy_embed"].met is False
    assert targets["embed_chunks_per_s"].met is True
    nothing = judge(replace(base, asr=(failed,)), True, "large-v3-turbo", "minilm-l6")
    assert all(t.value is None and t.met is None for t in nothing.targets)
    assert {t.basis for t in nothing.targets} == {"nothing measured"}
