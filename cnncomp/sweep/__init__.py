"""Sweep plumbing: job-dir naming, resumable multiruns, the end-of-sweep summary, launcher helpers.

Hydra's multirun leaves holes that this package closes (see the README, "Sweeps and clusters"):

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

Modules: `cells` (override parsing through Hydra's parser, the cells a sweep expands to),
`callback` (SweepCallback and its summary), `gpu_pool` (GPUs for concurrent local jobs),
`launcher` (what the launchers share with the callback). `conf/config.yaml` instantiates
`cnncomp.sweep.SweepCallback`.
"""

from cnncomp.sweep.callback import SUMMARY_FILE, SweepCallback, format_summary, summarize
from cnncomp.sweep.cells import (
    cell_key,
    expected_cells,
    override_dict,
    parse_overrides,
    sweep_cells,
    sweep_params,
    varying_keys,
)
from cnncomp.sweep.gpu_pool import GpuPool, visible_gpus
from cnncomp.sweep.launcher import failed_return, importable_task, record_return

__all__ = [
    "SUMMARY_FILE",
    "GpuPool",
    "SweepCallback",
    "cell_key",
    "expected_cells",
    "failed_return",
    "format_summary",
    "importable_task",
    "override_dict",
    "parse_overrides",
    "record_return",
    "summarize",
    "sweep_cells",
    "sweep_params",
    "varying_keys",
    "visible_gpus",
]
