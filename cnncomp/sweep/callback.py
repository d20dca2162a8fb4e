"""The sweep callback (`hydra.callbacks.sweep` in `conf/config.yaml`): names job dirs from the overrides
that vary, claims the sweep dir, and summarizes the cells at the end of a multirun."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cnncomp.sweep.cells import expected_cells, varying_keys
from cnncomp.sweep.launcher import clear_returns, record_return, recorded_returns
from cnncomp.training.record import EXIT_CODES

log = logging.getLogger("cnncomp.sweep")

SUMMARY_FILE = "sweep_summary.json"
NOT_RUN = "no result came back from this cell's job"
NOT_STARTED = "not started: the sweep was interrupted"


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
        self._driver_pid: int | None = None

    # -- driver
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        clear_returns()
        self._driver_pid = os.getpid()
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
        summary = self._summarize(config, NOT_RUN)
        if summary["counts"].get("failed", 0) and self.exit_on_failure:
            raise SystemExit(1)  # not an Exception: Hydra's callback runner would swallow that

    def _summarize(self, config: DictConfig, missing: str) -> dict[str, Any]:
        """Print the summary and write it to the sweep dir; `missing` is the error of a cell with no return."""
        import cnncomp.atomic as atomic

        sweep_dir = self.sweep_dir or Path(str(config.hydra.sweep.dir))
        summary = summarize(sweep_dir, self.cells, recorded_returns(), missing)
        print(format_summary(summary), flush=True)
        atomic.write_json(sweep_dir / SUMMARY_FILE, summary)
        return summary

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
        if isinstance(value, dict) and value.get("status") == "interrupted" and os.getpid() == self._driver_pid:
            # Ctrl-C or SIGTERM reached the process that runs the cells (the basic launcher): the
            # user stops the sweep, not only this cell, so the next cell must not start
            self._summarize(config, NOT_STARTED)
            raise SystemExit(EXIT_CODES["interrupted"])


def _ended_at(path: Path) -> Any:
    try:
        return json.loads(path.read_text()).get("ended_at")
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------- summary


def _classify(job_return: JobReturn | None, missing: str) -> tuple[str, dict[str, Any]]:
    if job_return is None:
        return "failed", {"error": missing}
    if job_return.status == JobStatus.FAILED:
        return "failed", {"error": f"{type(job_return._return_value).__name__}: {job_return._return_value}"}
    value = job_return._return_value
    if not isinstance(value, dict):
        return "completed", {}
    if value.get("status") == "completed":
        return ("skipped" if getattr(job_return, "skipped", False) else "completed"), value
    return "failed", value


def summarize(
    sweep_dir: Path, cells: list[list[str]] | None, returns: dict[int, JobReturn], missing: str = NOT_RUN
) -> dict[str, Any]:
    """Per-cell outcome of a multirun: completed (trained now), skipped (done before), failed.

    `failed` covers records with status failed, diverged or interrupted and cells with no return
    (a job that died without a record, or one not started: `missing` is their error). The cell's
    own `result.json` is read for its metrics when its job dir is known.
    """
    nums = range(len(cells)) if cells is not None else sorted(returns)
    rows = []
    for num in nums:
        jr = returns.get(num)
        outcome, value = _classify(jr, missing)
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
