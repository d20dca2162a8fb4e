# ruff: noqa: UP006, UP035, UP045  (typing forms for OmegaConf structured configs)
"""cnncomp's Hydra launchers: thin subclasses of hydra-submitit-launcher's.

Hydra only instantiates launchers defined under the `hydra_plugins` namespace package, hence this
module; the logic lives in `cnncomp.sweep`. Their configs replace the plugin's own
`hydra/launcher=submitit_local` and `submitit_slurm` (same keys, plus `max_parallel` and `gpus` for
the local one); the profiles in `conf/hydra/launcher/` build on them.

- `LocalLauncher`: at most `max_parallel` jobs at a time (the plugin starts every job at once,
  hydra#2323), each given its own GPUs (least-loaded first, round-robin) via CUDA_VISIBLE_DEVICES.
- `SlurmLauncher`: one job array (`array_parallelism` at a time); requeue on preemption/time-out
  through submitit's checkpoint mechanism (`checkpoint()` resubmits the same cell, which resumes
  from its `last.pt`).

Both turn a job that died without a result (scancel, OOM kill, node failure) into a failed cell
instead of an exception that aborts the sweep, so every other cell still runs and the end-of-sweep
summary (cnncomp.sweep.SweepCallback) lists it.
"""

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class _Launcher(BaseSubmititLauncher):
    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from cnncomp.sweep import importable_task

        super().setup(hydra_context=hydra_context, task_function=importable_task(task_function), config=config)

    def _executor(self) -> Any:
        """The submitit executor, built from the launcher config as the plugin does."""
        import submitit

        assert self.config is not None
        init_keys = {"max_num_timeout"}
        init_params = {f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k in init_keys}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"], **init_params)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        params = {
            k if k in base else f"{self._EXECUTOR}_{k}": v
            for k, v in self.params.items()
            if k not in init_keys | {"submitit_folder"}
        }
        executor.update_parameters(**params)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        return executor

    def _job_params(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[tuple]:
        out = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            out.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        return out

    @staticmethod
    def _collect(job: Any, overrides: Sequence[str], num: int) -> JobReturn:
        from cnncomp.sweep import failed_return, record_return

        try:
            result = job.results()[0]
        except Exception as err:  # died without a result: scancel, OOM kill, time-out without requeue
            state = getattr(job, "state", "?")
            log.error("cell #%d (%s) ended without a result (job %s, %s)", num, " ".join(overrides), job.job_id, state)
            result = failed_return(list(overrides), f"job {job.job_id} ended without a result ({state}): {err}")
        record_return(num, result)
        return result


class LocalLauncher(_Launcher):
    """submitit local executor with a cap on concurrent jobs and GPUs handed out per job."""

    _EXECUTOR = "local"

    def __init__(self, max_parallel: int | None = None, gpus: Sequence[int] | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.max_parallel = max_parallel
        self.gpus = None if gpus is None else [int(g) for g in gpus]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from cnncomp.sweep import GpuPool, visible_gpus

        executor = self._executor()
        per_job = self.params.get("gpus_per_node")
        gpus = self.gpus if self.gpus is not None else visible_gpus()
        pool = GpuPool(gpus, per_job=(1 if gpus else 0) if per_job is None else int(per_job))
        cpus = os.cpu_count() or 1
        cap = self.max_parallel or pool.slots or max(1, cpus // (self.params.get("cpus_per_task") or 1))
        if "OMP_NUM_THREADS" not in os.environ:  # concurrent CPU jobs must not each use every core
            threads = self.params.get("cpus_per_task") or max(1, cpus // cap)
            setup = list(self.params.get("setup") or []) + [f"export OMP_NUM_THREADS={threads}"]
            executor.update_parameters(local_setup=setup)
        params = self._job_params(job_overrides, initial_job_idx)
        log.info("submitit local: %d jobs, at most %d at a time, GPUs %s", len(params), cap, gpus or "none")

        results: list[JobReturn | None] = [None] * len(params)
        pending = list(range(len(params)))
        running: dict[Any, tuple[int, list[int]]] = {}
        try:
            while pending or running:
                while pending and len(running) < cap:
                    i = pending.pop(0)
                    devices = pool.take()
                    # submitit's LocalExecutor reads these when it starts the job (CUDA_VISIBLE_DEVICES)
                    executor._executor.parameters.update(gpus_per_node=len(devices), visible_gpus=tuple(devices))
                    job = executor.submit(self, *params[i])
                    running[job] = (i, devices)
                    lst = " ".join(filter_overrides(params[i][0]))
                    log.info(f"\t#{params[i][2]} : {lst}  (job {job.job_id}, GPUs {devices or '-'})")
                time.sleep(0.2)
                for job in [j for j in running if j.done()]:
                    i, devices = running.pop(job)
                    pool.give(devices)
                    results[i] = self._collect(job, params[i][0], params[i][2])
        except BaseException:
            for job in running:  # do not leave orphans behind on Ctrl-C
                job.cancel(check=False)
            raise
        return results  # type: ignore[return-value]


class SlurmLauncher(_Launcher):
    """submitit SLURM executor: one array per batch; lost jobs become failed cells."""

    _EXECUTOR = "slurm"

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        executor = self._executor()
        params = self._job_params(job_overrides, initial_job_idx)
        jobs = executor.map_array(self, *zip(*params, strict=True))
        for p, job in zip(params, jobs, strict=True):
            log.info(f"\t#{p[2]} : {' '.join(filter_overrides(p[0]))}  (job {job.job_id})")
        return [self._collect(job, p[0], p[2]) for p, job in zip(params, jobs, strict=True)]


# ------------------------------------------------------------------------------------------ configs


@dataclass
class LocalConf(LocalQueueConf):
    """hydra/launcher=submitit_local: the plugin's keys plus the concurrency cap and GPU list."""

    _target_: str = "hydra_plugins.cnncomp_launchers.LocalLauncher"
    # concurrent jobs; null = one per GPU slot (GPUs // gpus_per_node), or on a CPU-only machine
    # cores // cpus_per_task; OMP_NUM_THREADS is set per job unless already in the environment
    max_parallel: Optional[int] = "${oc.decode:${oc.env:CNNCOMP_MAX_PARALLEL,null}}"  # type: ignore[assignment]
    gpus: Optional[List[int]] = None  # GPU indices to hand out; null = all visible
    # GPUs per job; null = 1 when there are GPUs, else 0 (0 = CPU-only jobs)
    gpus_per_node: Optional[int] = None
    timeout_min: int = 10080  # the local controller ends a job after this (a week)


@dataclass
class SlurmConf(SlurmQueueConf):
    """hydra/launcher=submitit_slurm: cluster specifics from the environment (unset: cluster default)."""

    _target_: str = "hydra_plugins.cnncomp_launchers.SlurmLauncher"
    partition: Optional[str] = "${oc.env:CNNCOMP_PARTITION,null}"
    account: Optional[str] = "${oc.env:CNNCOMP_ACCOUNT,null}"
    qos: Optional[str] = "${oc.env:CNNCOMP_QOS,null}"
    cpus_per_task: Optional[int] = 2
    mem_gb: Optional[int] = 8
    max_num_timeout: int = 5  # requeues after time-outs (preemptions do not count)
    array_parallelism: int = 64


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/launcher", name="submitit_local", node=LocalConf(), provider="cnncomp")
    cs.store(group="hydra/launcher", name="submitit_slurm", node=SlurmConf(), provider="cnncomp")


class CnncompLauncherConfigs(SearchPathPlugin):
    """Registers the configs above once every plugin module has been imported.

    Hydra's plugin scan imports (and re-executes) hydra_submitit_launcher's config module in an
    order that depends on how things are installed; this hook runs after the scan and before any
    config is composed, so `submitit_local`/`submitit_slurm` are always ours.
    """

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        register_configs()


register_configs()
