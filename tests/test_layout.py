"""The layers import one way: faces → orchestration → stages → sites → infrastructure → workers
and db, and nothing imports in a circle. Read from the source, so an import inside a function
counts too."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RANK = {
    "faces": 5,
    "orchestration": 4,
    "stages": 3,
    "sites": 2,
    "infrastructure": 1,
    "workers": 0,
    "db": 0,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    folders = [ROOT / "ingest", ROOT / "workers", ROOT / "db"]
    return {module_name(p): p for folder in folders for p in folder.rglob("*.py")}


def imported(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports (`from package import module` names the module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found & known


def rank(module: str) -> int | None:
    """The layer's rank; None for the package roots (`ingest`, `ingest.__main__`)."""
    parts = module.split(".")
    layer = parts[1] if parts[0] == "ingest" and len(parts) > 1 else parts[0]
    return RANK.get(layer)


def test_every_module_sits_in_a_layer() -> None:
    loose = [m for m in project_modules() if rank(m) is None]
    assert sorted(loose) == ["ingest", "ingest.__main__"]


def test_imports_run_one_way() -> None:
    modules = project_modules()
    upward = []
    for name, path in modules.items():
        mine = rank(name)
        for target in imported(path, set(modules)):
            theirs = rank(target)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{name} imports {target}")
    assert upward == []


def test_no_import_cycles() -> None:
    modules = project_modules()
    graph = {name: imported(path, set(modules)) - {name} for name, path in modules.items()}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as cycle:
        raise AssertionError(f"import cycle: {' -> '.join(cycle.args[1])}") from None


def test_the_checks_see_an_upward_import(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("from ingest.orchestration import backfill\nimport db.pool\n")
    found = imported(source, set(project_modules()))
    assert found == {"ingest.orchestration", "ingest.orchestration.backfill", "db.pool"}
    assert (rank("ingest.orchestration.backfill"), rank("ingest.stages.download")) == (4, 3)
