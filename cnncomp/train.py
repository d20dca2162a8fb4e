"""The training app: `python -m cnncomp.train model=alexnet kernel=dst layers=conv`.

`main` is a thin @hydra.main; `train(cfg)` does the work and returns the run record, which is also
written to `<job dir>/result.json` on every ending (completed, failed, diverged, interrupted).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cloudpickle
import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import configure_log
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import cnncomp.atomic as atomic
from cnncomp.config import check_config
from cnncomp.data import DataNotFoundError
from cnncomp.errors import ConfigError
from cnncomp.training import checkpoint, distributed, engine, loop
from cnncomp.training.model import run_method
from cnncomp.training.record import EXIT_CODES, RunRecord, config_hash, environment, redact

log = logging.getLogger("cnncomp")


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived; the run stops and records status `interrupted`."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@contextlib.contextmanager
def _signals_interrupt():
    """Turn SIGTERM/SIGINT into `Interrupted` for the duration (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    signals = [signal.SIGTERM, signal.SIGINT]
    owner = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if type(owner).__module__.startswith("submitit"):
        # a submitit job: SLURM sends SIGTERM on scancel/requeue/preemption, and submitit ignores it
        # on purpose; its own signal (USR2) checkpoints and requeues the job, which then resumes
        # from last.pt. Turning SIGTERM into a normal return would report the job as finished.
        signals.remove(signal.SIGTERM)
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _deterministic(enabled: bool):
    previous = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    if enabled:
        # cuBLAS is deterministic only with a fixed workspace; without this variable every CUDA
        # matmul raises under torch's deterministic mode (set before this process's first cuBLAS call)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


def _hydra_context(run_dir: Path | None) -> tuple[Path, list[str], str | None, str]:
    """Job dir, overrides, wandb group (the sweep) and a run name, from Hydra when it runs us."""
    if not HydraConfig.initialized():
        if run_dir is None:
            raise ValueError("train(cfg) outside a Hydra app needs run_dir")
        return Path(run_dir), [], None, Path(run_dir).name
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return (
        Path(run_dir or hc.runtime.output_dir),
        list(hc.overrides.task),
        Path(hc.sweep.dir).name if multirun else None,
        hc.job.override_dirname or Path(hc.runtime.output_dir).name,
    )


def new_record(config: dict[str, Any], run_dir: Path, overrides: list[str]) -> RunRecord:
    """The record of a run that has not started yet (status failed until it ends otherwise)."""
    k, dense = config["kernel"], config["kernel"]["name"] == "none"
    label = None
    if not dense:
        with contextlib.suppress(ValueError):  # a bad method option: check_config reports it
            label = run_method(config).label()
    return RunRecord(
        config=config,
        config_hash=config_hash(config),
        run_dir=str(run_dir),
        model=config["model"]["name"],
        kernel=k["name"],
        layers=config["layers"]["name"],
        keep=1.0 if dense else k["keep"],
        selection=label,
        method=None if dense else config["method"]["name"],
        dataset=config["dataset"]["name"],
        started_at=datetime.now(timezone.utc).isoformat(),
        overrides=overrides,
    )


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train and test one configuration; returns the run record (also written to result.json)."""
    config = redact(OmegaConf.to_container(cfg, resolve=True))
    run_dir, overrides, group, name = _hydra_context(None if run_dir is None else Path(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    record = new_record(config, run_dir, overrides)
    done = checkpoint.completed_record(run_dir, record.config_hash)
    if done is not None:
        log.info("%s already holds a completed run of this config; skipping", run_dir)
        return done
    loggers: list = []
    records = distributed.is_main()  # rank 0 writes and prints the record, no other rank
    with _signals_interrupt():
        try:
            check_config(config)
            device = _device(config["trainer"]["device"])
            record.world_size = _world_size(config["trainer"], device)
            if record.world_size > 1 and distributed.environment() is None:
                record = RunRecord.from_dict(_train_ranks(cfg, run_dir, record.world_size))
                records = False  # the spawned rank 0 has written and printed this record
            else:
                with _deterministic(config["trainer"]["deterministic"]), distributed.process_group(device) as device:
                    if not distributed.is_main():
                        log.setLevel(logging.WARNING)  # rank 0 logs the run; the others only what goes wrong
                    run_dir = Path(distributed.broadcast_object(str(run_dir)))  # torchrun: one dir per process
                    record.update(**environment(device))
                    loop.run(config, run_dir, device, record, loggers, name=name, group=group)
        except (Interrupted, KeyboardInterrupt) as err:
            record.update(status="interrupted", error=f"interrupted by {err or 'SIGINT'}")
            if (run_dir / "last.pt").exists():
                log.warning("run interrupted (%s); last.pt holds the last finished epoch", err or "SIGINT")
            else:
                log.warning(
                    "run interrupted (%s) before its first epoch finished: nothing can be resumed yet", err or "SIGINT"
                )
        except SystemExit:  # a launcher (submitit) ending the job, e.g. to requeue it
            record.update(status="interrupted", error="the job was ended by its launcher")
            raise
        except (ConfigError, DataNotFoundError) as err:
            record.error = str(err)
            log.error("%s", err)
        except Exception as err:
            record.error = f"{type(err).__name__}: {err}"
            log.exception("run failed")
            if not distributed.is_main():
                raise  # a non-zero exit makes the launcher end the other ranks, which would wait forever
        finally:
            record.ended_at = datetime.now(timezone.utc).isoformat()
            if records:
                atomic.write_json(run_dir / "result.json", record.as_dict())
            for logger in loggers:
                with contextlib.suppress(Exception):
                    logger.finish(record.as_dict())
    if records:
        print(record.summary(), flush=True)
    return record.as_dict()


def _device(name: str) -> torch.device:
    try:
        return engine.resolve_device(name)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _world_size(t: dict[str, Any], device: torch.device) -> int:
    """How many processes train together: trainer.devices x trainer.nodes, which must match a
    launcher's distributed environment (torchrun, a multi-task SLURM job) when there is one;
    without one, this process will spawn trainer.devices processes on this node."""
    world = t["devices"] * t["nodes"]
    env = distributed.environment()
    if env is not None:
        _require(
            env.world_size == world,
            f"trainer.devices x trainer.nodes = {world} but the launcher started {env.world_size} processes "
            "(WORLD_SIZE); set them to match",
        )
        return world
    _require(
        t["nodes"] == 1,
        f"trainer.nodes={t['nodes']} needs a multi-node launcher (hydra/launcher=slurm_multigpu, or torchrun "
        "--nnodes); started alone, a run spawns trainer.devices processes on this node, so nodes must be 1",
    )
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        _require(visible >= world, f"trainer.devices={world} but only {visible} CUDA devices are visible")
    return world


def _train_ranks(cfg: DictConfig, run_dir: Path, devices: int) -> dict[str, Any]:
    """Train in `devices` new processes on this node, one per device; rank 0's record."""
    log.info("data-parallel run: starting %d processes, one per device", devices)
    # Hydra's state holds OmegaConf's resolvers, closures only cloudpickle can carry (as submitit does)
    hydra_state = cloudpickle.dumps(Singleton.get_state()) if HydraConfig.initialized() else None
    distributed.spawn(_train_rank, devices, (cfg, run_dir, hydra_state))
    return json.loads((run_dir / "result.json").read_text())


def _train_rank(cfg: DictConfig, run_dir: Path, hydra_state: bytes | None) -> None:
    """One spawned rank: Hydra's state as in the parent (overrides, run name, rank 0's train.log)."""
    if hydra_state is not None:
        Singleton.set_state(cloudpickle.loads(hydra_state))
        if distributed.is_main():
            hc = HydraConfig.get()
            configure_log(hc.job_logging, hc.verbose)
    train(cfg, run_dir)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    result = train(cfg)
    if HydraConfig.get().mode == RunMode.RUN and result["status"] != "completed":
        sys.exit(EXIT_CODES[result["status"]])
    return result


if __name__ == "__main__":
    main()
