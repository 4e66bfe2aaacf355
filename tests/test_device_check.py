"""The device check (`python -m bench.device`): its tiny-shape run on the CPU, with the packages
a lent GPU machine lacks hidden, reports every section; it times the transformers engine
itself, built around the model in memory; a failing or late configuration is recorded and the
others still run; targets are judged on the best runs. ~40 s in all: ~30 s the one hidden
run, ~10 s the engine built both ways."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench.device import TINY, Check, asr_configurations, measure_asr
from bench.device_models import (
    ScriptedDecoder,
    WhisperShape,
    asr_engine,
    build_whisper,
    noise_video,
    whisper_processor,
)
from bench.device_report import AsrRun, EmbedRun, Report, Timing, device_info, judge, stack
from tests.conftest import isolated_environment
from workers.asr import AsrOptions
from workers.asr_transformers import TransformersAsrModel

ROOT = Path(__file__).resolve().parents[1]
# What the lent machines lack (pyannote stands for pyannote.audio). Without silero_vad the
# engine cannot detect speech itself: the check hands it the spans.
MISSING = ("faster_whisper", "ctranslate2", "pyannote", "speechbrain", "asyncpg", "yt_dlp",
           "pgserver", "av", "silero_vad")  # fmt: skip
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
    assert sorted((r["shape"], r["dtype"], r["words"]) for r in report["asr"]) == [
        (shape, dtype, words)
        for shape in ("tiny-distil-layout", "tiny-turbo-layout")
        for dtype in ("bfloat16", "float16")
        for words in (False, True)
    ]
    for run in report["asr"]:
        assert run["status"] == "ok" and run["attention"] == "sdpa", run
        assert run["tokens_per_window"] == 5 and run["x_realtime"] > 0, run
        # The script's 5 tokens: a timestamp, 3 text tokens (3 words), a timestamp.
        assert run["segments_per_window"] == 1.0, run
        assert run["words_per_window"] == (3.0 if run["words"] else 0.0), run
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


def test_the_engine_around_the_model_in_memory_is_the_engine_loaded_from_its_folder(
    tmp_path: Path,
) -> None:
    """What the check times is what the service runs: the engine built around the check's
    model and processor transcribes as the engine loaded from them saved as a folder does,
    words included, with the decoder held to the script. ~10 s."""
    model = build_whisper(TINY.whisper[0], "cpu")
    processor = whisper_processor()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = TransformersAsrModel(AsrOptions(str(tmp_path), batch_size=1))
    around = asr_engine(model, processor, "float32", 1)
    audio, speech = noise_video(2)
    found = []
    for engine in (around, loaded):
        decoder = ScriptedDecoder(engine._model, 20)
        found.append(engine.transcribe(audio, words=True, speech=speech))
        assert decoder.tokens == 20
    assert found[0] == found[1]
    # Two segments a window (the script has a timestamp pair at its 16th token), the first
    # from the window's start, the second to its last timestamp, 26.6 s.
    first, second = found[0][:2]
    assert first.start_s == 0.0 and first.end_s == second.start_s < second.end_s == 26.6
    assert len(found[0]) == 4 and [s.text for s in found[0][:2]] == [s.text for s in found[0][2:4]]
    assert found[0][1].text == "w1017 w1018" and [w.text for w in found[0][1].words] == [
        " w1017",
        " w1018",
    ]
    assert all(a.start_s <= w.start_s <= w.end_s <= a.end_s for a in found[0] for w in a.words)


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
    measure_asr(check, late, broken, asr_configurations(late)[:1])
    statuses = [run.status for run in check.report.asr]
    assert len(statuses) == 5
    assert all(s.startswith("error: ValueError") and "divisible" in s for s in statuses[:4])
    assert statuses[4:] == ["skipped: time budget"]
    written = json.loads(out.read_text())
    assert [run["status"] for run in written["asr"]] == statuses


def _asr(x_realtime: float, words: bool = False, busy: float = 95.0) -> AsrRun:
    return AsrRun("large-v3-turbo", "bfloat16", 64, words, windows=128, status="ok",
                  timing=Timing(1.0, busy, 10.0), attention="sdpa",
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
