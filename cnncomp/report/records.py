"""Finding and reading the run records (`result.json`) under sweep dirs, and the cells the sweeps
should hold (each sweep's `multirun.yaml`, expanded through `cnncomp.sweep`)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cnncomp.sweep import cell_key, expected_cells
from cnncomp.training.record import RunRecord

log = logging.getLogger("cnncomp.report")

RESULT = "result.json"
# the fields a record must name to be built; records of older versions (or crafted ones) may lack them
_REQUIRED = {
    f.name: None
    for f in dataclasses.fields(RunRecord)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
}


class NoRecords(FileNotFoundError):
    """A sweep dir that does not exist or holds no run record: nothing to report."""


def check_dirs(dirs: Sequence[Path]) -> None:
    """Raise `NoRecords` naming every dir that does not exist, is not a dir or holds no record."""
    problems = []
    for d in dirs:
        if not d.exists():
            problems.append(f"{d}: no such directory")
        elif not d.is_dir():
            problems.append(f"{d}: not a directory")
        elif next(d.rglob(RESULT), None) is None:
            problems.append(f"{d}: no run record ({RESULT}) under it")
    if problems:
        raise NoRecords("; ".join(problems))


def sweep_dir_cells(sweep_dir: Path) -> list[list[str]]:
    """Cells that the sweeps under `sweep_dir` should produce: `cnncomp.sweep.expected_cells` of
    each saved `multirun.yaml` (its task overrides and sweeper params); [] where there is none."""
    cells: list[list[str]] = []
    for path in sorted(Path(sweep_dir).rglob("multirun.yaml")):
        expanded = expected_cells(OmegaConf.load(path))
        if expanded is None:  # another sweeper, or a glob() sweep, which needs the config repository
            log.warning("cannot expand the sweep of %s as the basic sweeper does", path)
        cells += expanded or []
    return cells


def as_record(data: dict[str, Any]) -> dict[str, Any]:
    """A record read back through `RunRecord.from_dict` (the writer's schema): keys it does not
    know are dropped, every field is present (None, or its default, where the record lacks it)."""
    return RunRecord.from_dict({**_REQUIRED, **data}).as_dict()


def load_results(dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every run record under `dirs` (atomic writes leave only `.result.json.*.tmp` files beside a
    record being written, which the exact name skips), as `as_record` dicts with `_path` added.
    Unreadable files are skipped with a warning."""
    records = []
    for d in dirs:
        for path in sorted(Path(d).rglob(RESULT)):
            try:
                data = json.loads(path.read_text())
                if not isinstance(data, dict):
                    raise ValueError(f"a {type(data).__name__}, not a run record")
            except (OSError, ValueError) as err:
                log.warning("skipping %s: %s", path, err)
                continue
            record = as_record(data)
            record["_path"] = str(path)
            records.append(record)
    return records


def newest_best(records: list[dict]) -> dict:
    """Of several records of one cell: a completed one first, then the one that ended last."""
    return max(records, key=lambda r: (r.get("status") == "completed", r.get("ended_at") or ""))


def started_cells(dirs: Iterable[Path]) -> set[frozenset[str]]:
    """Cells whose job has started (Hydra wrote `.hydra/overrides.yaml` into its job dir)."""
    started = set()
    for d in dirs:
        for path in Path(d).rglob("overrides.yaml"):
            if path.parent.name == ".hydra":
                try:
                    started.add(cell_key(OmegaConf.to_container(OmegaConf.load(path))))
                except Exception:  # a file being written
                    continue
    return started
