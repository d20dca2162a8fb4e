"""The package's shape, read from its source: imports go one way, no cycle, small files."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cnncomp"
ENTRY_POINTS = {
    "cnncomp.train",
    "cnncomp.plan",
    "cnncomp.bench",
    "cnncomp.report",
    "cnncomp.export",
    "cnncomp.recode",
    "cnncomp.breakdown",
}
LIBRARY = ("cnncomp.transforms", "cnncomp.compression", "cnncomp.models", "cnncomp.data", "cnncomp.training")
METHODS = {f"cnncomp.compression.{m}" for m in ("transform", "sparse_vd", "lowrank", "frequency", "epr", "vae")}
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _owner(name: str) -> str | None:
    """The module of the package that `name` (a module or a name inside one) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(name: str) -> tuple[set[str], set[str]]:
    """(the package's modules that module `name` imports, the top-level names of everything it imports)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inside, tops = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from ._common import y
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]  # `from pkg import x` runs pkg
        else:
            continue
        for target in targets:
            tops.add(target.split(".")[0])
            owner = _owner(target)
            if owner is not None and owner != name and target.startswith("cnncomp"):
                inside.add(owner)
    return inside, tops


GRAPH = {name: imports(name)[0] for name in MODULES}


def _in(name: str, groups) -> bool:
    return any(name == g or name.startswith(g + ".") for g in groups)


def test_the_import_graph_has_no_cycle():
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert len(GRAPH) > 30  # the walk saw the whole package


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _in(n, LIBRARY)))
def test_library_modules_import_no_hydra_and_no_entry_point(name):
    inside, tops = imports(name)
    assert not {"hydra", "omegaconf"} & tops, name
    assert not _in_any(inside, ENTRY_POINTS | {"cnncomp.config", "cnncomp.sweep"}), (name, inside)


def _in_any(names, groups) -> bool:
    return any(_in(n, groups) for n in names)


def test_arrows_go_one_way():
    for name, inside in GRAPH.items():
        if name.startswith("cnncomp.transforms"):
            assert not inside, (name, inside)
        if _in(name, ("cnncomp.compression", "cnncomp.models", "cnncomp.data")):
            assert not _in_any(inside, ("cnncomp.training",)), (name, inside)
        if name in ENTRY_POINTS or _in(name, ENTRY_POINTS):
            others = {e for e in ENTRY_POINTS if not _in(name, {e})}
            assert not _in_any(inside, others), (name, inside)


def test_no_method_imports_another():
    for name in METHODS:
        assert not GRAPH[name] & (METHODS - {name}), (name, GRAPH[name])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_file_is_long(name):
    assert len(MODULES[name].read_text().splitlines()) <= MAX_LINES, name


def test_project_layout(root):
    for path in ["conf", "cnncomp", "tests", "launch", "outputs/.gitkeep", "pyproject.toml", "Makefile"]:
        assert (root / path).exists(), path
    assert not (root / "cnncomp" / "compress.py").exists() and not (root / "cnncomp" / "data.py").exists()
