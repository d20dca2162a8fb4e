"""Placing the records of a set of sweeps: one per cell, the missing cells, per (model, dataset)
groups in report order, the dense baseline and Δ of each row, and the Pareto fronts: of accuracy
against the compression ratio (stored values) and against the compressed file's bytes."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnncomp.report.records import load_results, newest_best, started_cells, sweep_dir_cells
from cnncomp.sweep import cell_key, override_dict

FAILED = ("failed", "diverged", "interrupted")
# the overrides that place a cell in a table (model, dataset) or a row (kernel, layers, keep)
PLACED = ("model", "dataset", "kernel", "layers", "kernel.keep", "recipe")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (x, accuracy), larger x better (e.g. the compression ratio), that no
    other point dominates (at least as good in both, better in one), sorted by x. Equal points are
    all kept."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def mark_front(rows: Sequence[dict[str, Any]], key: Callable[[Mapping[str, Any]], Any], flag: str) -> None:
    """Set `flag` on each completed row with a test accuracy and a number for `key` (larger is
    better): True on the Pareto front of (key, test accuracy) among them, else False. Rows without
    (failed, or a record from before `key` existed) get no `flag`."""
    done = [r for r in rows if r.get("status") == "completed" and number(r.get("test_acc")) and number(key(r))]
    front = set(pareto_front([(key(r), r["test_acc"]) for r in done]))
    for i, r in enumerate(done):
        r[flag] = i in front


@dataclass
class Report:
    """Records of a set of sweeps, placed in cells and grouped per (model, dataset)."""

    records: list[dict[str, Any]]  # one per cell (the best record of duplicates), in report order
    missing: list[list[str]]  # expected cells without a record
    started: list[list[str]]  # the missing cells whose job has started
    common: dict[str, str]  # overrides every record shares
    varying: list[str]  # override keys beyond PLACED that differ between records
    duplicates: int = 0
    groups: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("status") in FAILED]


def kernel_order(kernel: str) -> tuple[int, str]:
    """Sort key of methods: the dense model (none) first, then by name."""
    return (kernel != "none", kernel)


def method_label(r: Mapping[str, Any]) -> str:
    """The kernel, with what picked the stored values when that is not the default block: dct,
    dct/learned, identity/magnitude."""
    kernel, selection = str(r.get("kernel")), r.get("selection")
    return kernel if selection in (None, "block", kernel) else f"{kernel}/{selection}"


def ratio(r: Mapping[str, Any]) -> float | None:
    """Compression ratio with the index cost of masks included (older records: without)."""
    with_index = r.get("compression_ratio_with_index")
    return r.get("compression_ratio") if with_index is None else with_index


def number(x: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def file_bytes(r: Mapping[str, Any]) -> int | None:
    """The compressed file's bytes (None for records from before the codec wrote one)."""
    b = r.get("file_bytes")
    return b if number(b) and b > 0 else None


def fewer_bytes(r: Mapping[str, Any]) -> int | None:
    """The Pareto key of the file's size: larger is better, so its bytes negated."""
    b = file_bytes(r)
    return None if b is None else -b


def analyze(dirs: Sequence[str | Path]) -> Report:
    """Read and place every record: deduplicate, find missing cells, baselines, Δ and Pareto fronts."""
    dirs = [Path(d) for d in dirs]
    expected = [c for d in dirs for c in sweep_dir_cells(d)]
    by_cell: dict[Any, list[dict]] = {}
    for r in load_results(dirs):
        # a record of a single run (no overrides) is its own cell
        key = cell_key(r.get("overrides") or []) if r.get("overrides") else ("run", r["_path"])
        by_cell.setdefault(key, []).append(r)
    records = [newest_best(rs) for rs in by_cell.values()]
    duplicates = sum(len(rs) - 1 for rs in by_cell.values())
    seen, missing = set(), []
    for cell in expected:
        key = cell_key(cell)
        if key not in by_cell and key not in seen:
            missing.append(cell)
        seen.add(key)
    started_keys = started_cells(dirs) if missing else set()
    started = [c for c in missing if cell_key(c) in started_keys]

    overrides = [override_dict(r.get("overrides") or []) for r in records]
    keys = sorted({k for o in overrides for k in o})
    common = {k: overrides[0][k] for k in keys if overrides and all(o.get(k) == overrides[0].get(k) for o in overrides)}
    varying = [k for k in keys if k not in common and k not in PLACED]
    for r, o in zip(records, overrides, strict=True):
        r["_others"] = {k: o[k] for k in varying if k in o}
        r["_other"] = " ".join(f"{k}={v}" for k, v in r["_others"].items())

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((str(r.get("model")), str(r.get("dataset"))), []).append(r)
    for key in sorted(groups):
        rows = groups[key]
        rows.sort(key=lambda r: (kernel_order(method_label(r)), str(r.get("layers")), r.get("keep") or 0, r["_other"]))
        _baselines(rows)
        mark_front(rows, ratio, "_pareto")
        mark_front(rows, fewer_bytes, "_pareto_bytes")  # the decoded file's accuracy against its bytes
    records = [r for key in sorted(groups) for r in groups[key]]
    return Report(records, missing, started, common, varying, duplicates, {k: groups[k] for k in sorted(groups)})


def _baselines(rows: list[dict]) -> None:
    """Each row's dense baseline: the mean test accuracy of the completed kernel=none cells of its
    model and dataset closest in its other overrides: the most shared, then the fewest differing (its
    seed's dense cell; the dense run fine-tuned from the row's pretrained model, not the pretraining
    run itself)."""
    dense = [r for r in rows if r.get("kernel") == "none" and r.get("status") == "completed"]
    dense = [r for r in dense if number(r.get("test_acc"))]
    for r in rows:
        mine = r["_others"].items()
        closeness = [(len(d["_others"].items() & mine), -len(d["_others"].items() ^ mine)) for d in dense]
        same = [d for d, c in zip(dense, closeness, strict=True) if c == max(closeness)]
        base = sum(d["test_acc"] for d in same) / len(same) if same else None
        r["_baseline"] = base
        r["_delta"] = r["test_acc"] - base if base is not None and number(r.get("test_acc")) else None


def baseline(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """The dense baseline of a group's rows (None when it has no completed kernel=none cell)."""
    return next((r["_baseline"] for r in rows if r.get("_baseline") is not None), None)
