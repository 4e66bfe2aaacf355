"""The benchmark suite's smoke run: every benchmark runs end to end at small sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.export import export


def test_the_benchmarks_run_and_report_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    benches = {f["bench"] for f in figures}
    assert benches == {"pipeline", "memory", "sink", "claims", "downloads", "models", "gpu"}
    for figure in figures:
        assert figure["value"] is not None and figure["value"] > 0, figure
        if figure["target"] is not None:
            assert figure["met"] in (True, False)
    assert len([f for f in figures if f["bench"] == "pipeline"]) == 3
    assert len([f for f in figures if f["bench"] == "sink"]) == 6
    assert len([f for f in figures if f["bench"] == "claims"]) == 10
    end_to_end = [f for f in figures if f["bench"] == "gpu" and "hours" in f["name"]]
    assert [f["name"] for f in end_to_end] == [
        "audio hours per hour, MiniLM embeddings",
        "audio hours per hour, 1536-d embeddings",
    ]
    assert all(f["detail"]["videos"] >= 3 for f in end_to_end)


def test_the_export_benchmark_runs_and_its_memory_stays_flat(pg_uri: str) -> None:
    figures = export(pg_uri, quick=True)
    assert [f.bench for f in figures] == ["export"] * 6
    assert all(f.value is not None and f.value > 0 for f in figures)
    # A leak in the number of chunks would triple the peak; flat is about 1.
    ratios = [f.value for f in figures if "peak RSS" in f.name]
    assert len(ratios) == 3 and all(r is not None and r < 1.5 for r in ratios), ratios
