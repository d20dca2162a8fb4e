"""Sweep plumbing: job-dir naming, resumable multiruns, the end-of-sweep summary, launcher helpers.

Hydra's multirun leaves holes that this module closes (see the README, "Sweeps and clusters"):

- job dirs are named from the overrides that *vary* in the sweep (hydra#1607), and an auto-named
  sweep dir is claimed atomically so two sweeps started together never share it;
- `SweepCallback.on_multirun_end` reads every cell's `result.json` and prints a summary of
  completed / skipped / failed cells, and ends the process with exit code 1 when any cell failed
  (hydra#1928: a failed job must not look successful);
- the launchers in `hydra_plugins.cnncomp_launchers` (submitit local with a concurrency cap and
  round-robin GPUs, submitit SLURM) report a job that died without a result (scancel, OOM kill)
  as a failed cell instead of aborting the sweep.

Hydra itself skips nothing: `cnncomp.train.train` skips a job dir holding a completed run of the
same config hash and resumes from `last.pt`, so rerunning a sweep in the same sweep dir redoes
only what did not complete.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger("cnncomp.sweep")

SUMMARY_FILE = "sweep_summary.json"
# JobReturns of the current multirun by job number, filled by the launchers of this process
# (submitit jobs run elsewhere) and by `SweepCallback.on_job_end` (the basic launcher runs jobs here).
_RETURNS: dict[int, JobReturn] = {}


def record_return(num: int, job_return: JobReturn) -> None:
    """Remember what a cell returned (called in the sweep driver's process)."""
    _RETURNS[int(num)] = job_return


def failed_return(overrides: list[str], error: str) -> JobReturn:
    """A JobReturn for a cell whose job died without a result (so the sweep goes on).

    Its status is COMPLETED so that Hydra's sweeper does not abort the remaining batches; the
    record inside says `failed`, and the summary counts it as failed.
    """
    record = {"status": "failed", "error": error, "overrides": list(overrides), "lost": True}
    return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=record)


# --------------------------------------------------------------------------------- sweep overrides


def sweep_cells(
    arguments: Sequence[str], params: Mapping[str, Any] | None = None, config_loader: Any = None
) -> list[list[str]]:
    """The job overrides of every cell of a sweep, expanded exactly as Hydra's BasicSweeper does:
    `hydra.sweeper.params` first, then the command-line task overrides (a later key wins), then
    the cartesian product of the comma lists. `config_loader` is needed only for `glob(...)` sweeps."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parser = OverridesParser.create(config_loader=config_loader)
    return BasicSweeper.split_arguments(parser.parse_overrides(_override_strings(arguments, params)), None)[0]


def _override_strings(arguments: Sequence[str], params: Mapping[str, Any] | None) -> list[str]:
    return [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)


def _sweep_params(cfg: DictConfig) -> tuple[list[str], dict[str, Any]]:
    """A multirun's command-line task overrides and its `hydra.sweeper.params`."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    return list(OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False)), dict(params)


def varying_keys(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """(keys swept over, keys set to one value) among a multirun's task overrides."""
    last: dict[str, Any] = {}
    for o in OverridesParser.create().parse_overrides(_override_strings(*_sweep_params(cfg))):
        last[o.key_or_group] = o  # the command line wins over hydra.sweeper.params
    vary = [k for k, o in last.items() if o.is_sweep_override()]
    fixed = [k for k, o in last.items() if not o.is_sweep_override()]
    return vary, fixed


def expected_cells(cfg: DictConfig) -> list[list[str]] | None:
    """Every cell's overrides in job-number order, as the basic sweeper expands them (else None)."""
    target = str(OmegaConf.select(cfg, "hydra.sweeper._target_") or "")
    if not target.endswith("BasicSweeper"):
        return None
    try:
        return sweep_cells(*_sweep_params(cfg))
    except Exception:  # a sweep type the basic sweeper rejects: it will say so itself
        return None


def _quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _pin(cfg: DictConfig, key: str, value: Any, override: str) -> None:
    """Set a hydra key in the master config and in the overrides every job config is rebuilt from."""
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        OmegaConf.update(cfg, key, value, merge=False)
        cfg.hydra.overrides.hydra.append(override)


def _claim_sweep_dir(cfg: DictConfig) -> Path:
    """Create the sweep dir; an auto-named (`${now:}`) one that exists already gets a suffix."""
    raw = cfg.hydra.sweep._get_node("dir")._value()
    path = Path(str(cfg.hydra.sweep.dir))
    if "${now:" not in str(raw):  # chosen by the user: reusing it is how a sweep is resumed
        path.mkdir(parents=True, exist_ok=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 0
    while True:
        try:
            candidate.mkdir()  # atomic: exactly one process creates a given dir
            break
        except FileExistsError:
            n += 1
            candidate = path.with_name(f"{path.name}-{n}")
    if candidate != path:
        _pin(cfg, "hydra.sweep.dir", str(candidate), f"hydra.sweep.dir={_quote(str(candidate))}")
    return candidate


# ---------------------------------------------------------------------------------------- callback


class SweepCallback(Callback):
    """Names job dirs, claims the sweep dir, and summarizes the cells at the end of a multirun.

    Configured in `conf/config.yaml` under `hydra.callbacks.sweep`. `exit_on_failure: false` keeps
    the exit code 0 when cells failed (the summary still lists them).
    """

    def __init__(self, exit_on_failure: bool = True) -> None:
        self.exit_on_failure = exit_on_failure
        self.sweep_dir: Path | None = None
        self.cells: list[list[str]] | None = None
        self._prior: tuple[Path, Any] | None = None

    # -- driver
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _RETURNS.clear()
        self.sweep_dir = _claim_sweep_dir(config)
        vary, fixed = varying_keys(config)
        if vary:
            # name job dirs from the overrides that vary: everything else set on the command line is
            # the same in every cell and only makes the names long
            exclude = list(OmegaConf.select(config, "hydra.job.config.override_dirname.exclude_keys") or [])
            exclude = [k for k in exclude if k not in vary] + [k for k in fixed if k not in exclude]
            items = ",".join(_quote(k) for k in exclude)
            _pin(
                config,
                "hydra.job.config.override_dirname.exclude_keys",
                exclude,
                f"hydra.job.config.override_dirname.exclude_keys=[{items}]",
            )
        self.cells = expected_cells(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = self.sweep_dir or Path(str(config.hydra.sweep.dir))
        summary = summarize(sweep_dir, self.cells, dict(_RETURNS))
        print(format_summary(summary), flush=True)
        from cnncomp import atomic

        atomic.write_json(sweep_dir / SUMMARY_FILE, summary)
        if summary["counts"].get("failed", 0) and self.exit_on_failure:
            sys.stdout.flush()
            raise SystemExit(1)  # not an Exception: Hydra's callback runner would swallow that

    # -- the job's process (the driver for the basic launcher, a worker for submitit)
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        path = Path(config.hydra.runtime.output_dir) / "result.json"
        self._prior = (path, _ended_at(path))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED:
            # an exception escaped the task (train records its own failures and returns): keep it
            # from aborting the sweeper's remaining batches; the summary reports the cell failed
            err = job_return._return_value
            log.error("cell %s raised", list(job_return.overrides or []), exc_info=err)
            job_return.status = JobStatus.COMPLETED
            job_return._return_value = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        value = job_return._return_value
        if self._prior is not None and isinstance(value, dict):
            path, ended = self._prior
            # train returns the old record unchanged when the cell had completed already
            job_return.skipped = ended is not None and value.get("ended_at") == ended  # type: ignore[attr-defined]
        num = OmegaConf.select(config, "hydra.job.num")
        if num is not None:
            record_return(num, job_return)


def _ended_at(path: Path) -> Any:
    try:
        return json.loads(path.read_text()).get("ended_at")
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------- summary


def _classify(job_return: JobReturn | None) -> tuple[str, dict[str, Any]]:
    if job_return is None:
        return "failed", {"error": "no result came back from this cell's job"}
    if job_return.status == JobStatus.FAILED:
        return "failed", {"error": f"{type(job_return._return_value).__name__}: {job_return._return_value}"}
    value = job_return._return_value
    if not isinstance(value, dict):
        return "completed", {}
    if value.get("status") == "completed":
        return ("skipped" if getattr(job_return, "skipped", False) else "completed"), value
    return "failed", value


def summarize(sweep_dir: Path, cells: list[list[str]] | None, returns: dict[int, JobReturn]) -> dict[str, Any]:
    """Per-cell outcome of a multirun: completed (trained now), skipped (done before), failed.

    `failed` covers records with status failed, diverged or interrupted and jobs that died without
    a record. The cell's own `result.json` is read for its metrics when its job dir is known.
    """
    nums = range(len(cells)) if cells is not None else sorted(returns)
    rows = []
    for num in nums:
        jr = returns.get(num)
        outcome, value = _classify(jr)
        overrides = cells[num] if cells is not None else list(getattr(jr, "overrides", None) or [])
        run_dir = value.get("run_dir")
        if run_dir is None and jr is not None and jr.hydra_cfg is not None:
            run_dir = OmegaConf.select(jr.hydra_cfg, "hydra.runtime.output_dir")
        record: dict[str, Any] = {}
        if run_dir and (Path(run_dir) / "result.json").exists():
            record = json.loads((Path(run_dir) / "result.json").read_text())
        status = record.get("status") or value.get("status")
        if outcome != "failed" and status not in (None, "completed"):
            outcome = "failed"  # the record on disk says otherwise
        rows.append(
            {
                "num": num,
                "outcome": outcome,
                "status": "lost" if value.get("lost") else status,
                "overrides": overrides,
                "run_dir": run_dir,
                "test_acc": record.get("test_acc"),
                "config_hash": record.get("config_hash"),
                "error": value.get("error") or record.get("error"),
            }
        )
    counts = Counter(r["outcome"] for r in rows)
    return {"sweep_dir": str(sweep_dir), "cells": len(rows), "counts": dict(counts), "rows": rows}


def format_summary(summary: dict[str, Any]) -> str:
    c = summary["counts"]
    lines = [
        f"sweep {summary['sweep_dir']}: {summary['cells']} cells: {c.get('completed', 0)} completed, "
        f"{c.get('skipped', 0)} skipped (done before), {c.get('failed', 0)} failed"
    ]
    for r in summary["rows"]:
        if r["outcome"] == "failed":
            error = (r["error"] or "").strip().splitlines()
            lines.append(
                f"  FAILED #{r['num']} {' '.join(r['overrides'])}: {r['status']}"
                + (f": {error[0][:200]}" if error else "")
            )
    if c.get("failed"):
        lines.append("  rerun the same command with hydra.sweep.dir=" + summary["sweep_dir"] + " to redo only those")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- launcher helpers


def importable_task(fn: Any) -> Any:
    """The task function as one a job process can import: `python -m cnncomp.train` defines it in
    `__main__`, which cloudpickle would pickle by value (with torch modules in its globals)."""
    if getattr(fn, "__module__", None) != "__main__":
        return fn
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None or not spec.name or spec.name == "__main__":
        return fn
    import importlib

    found = getattr(importlib.import_module(spec.name), fn.__name__, None)
    found = getattr(found, "__wrapped__", found)  # @hydra.main's wrapper -> the task function
    return found if callable(found) else fn


def visible_gpus() -> list[int]:
    """GPU indices this process may hand out (CUDA_VISIBLE_DEVICES order), empty without CUDA."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [s for s in env.split(",") if s.strip()]
        if all(s.strip().isdigit() for s in ids):
            return [int(s) for s in ids]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:
        return []


class GpuPool:
    """Hands out GPUs to concurrent jobs: the least-loaded first, ties broken round-robin."""

    def __init__(self, gpus: list[int], per_job: int) -> None:
        self.gpus, self.per_job = list(gpus), per_job
        self.load = dict.fromkeys(self.gpus, 0)
        self._next = 0

    @property
    def slots(self) -> int:
        return max(1, len(self.gpus) // self.per_job) if self.gpus and self.per_job else 0

    def take(self) -> list[int]:
        if not self.gpus or not self.per_job:
            return []
        n = len(self.gpus)
        order = [self.gpus[(self._next + i) % n] for i in range(n)]
        chosen = sorted(order, key=lambda g: self.load[g])[: self.per_job]  # stable: round-robin ties
        self._next = (self.gpus.index(chosen[-1]) + 1) % n
        for g in chosen:
            self.load[g] += 1
        return chosen

    def give(self, gpus: list[int]) -> None:
        for g in gpus:
            self.load[g] -= 1
