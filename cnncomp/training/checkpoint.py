"""Checkpoints: enough to rebuild the run (state_dicts, model args, compression and resolved config)
and to resume it (optimizer, schedule, RNG, loop state), refused for another config's hash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

import cnncomp.atomic as atomic
from cnncomp.errors import ConfigError
from cnncomp.training import distributed


def save(path: Path, obj: Any) -> int | None:
    """Write `obj` atomically on rank 0 only (every rank holds the same state); bytes written."""
    return atomic.torch_save(path, obj) if distributed.is_main() else None


def meta(config: dict[str, Any], config_hash: str, model_args: dict[str, Any]) -> dict[str, Any]:
    """What every checkpoint carries besides the weights: how to rebuild the model and the run."""
    compression = config["kernel"] | {"method": config["method"], "layers": config["layers"]}
    return {"model_args": model_args, "compression": compression, "config": config, "config_hash": config_hash}


def training_state(model, optimizer, schedule, state: dict, meta: dict) -> dict[str, Any]:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": None if schedule is None else schedule.state_dict(),
        "rng": rng,
        "state": state,
        **meta,
    }


def read(path: Path, config_hash: str) -> dict[str, Any]:
    """A `training_state` checkpoint, refused (ConfigError) when another config wrote it."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt["config_hash"] != config_hash:
        raise ConfigError(
            f"{path} holds a checkpoint of another configuration (hash {ckpt['config_hash']}, this run "
            f"{config_hash}); it is left untouched: run in a new directory or remove it"
        )
    return ckpt


def load_into(ckpt: dict[str, Any], model, optimizer, schedule) -> dict[str, Any]:
    """Load a `read` checkpoint into the run's objects (of its structure); returns the loop state."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if schedule is not None:
        schedule.load_state_dict(ckpt["schedule"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    return ckpt["state"]


def resume(path: Path, model, optimizer, schedule, config_hash: str) -> dict[str, Any]:
    """Load a `training_state` checkpoint into the run's objects; returns the loop state."""
    return load_into(read(path, config_hash), model, optimizer, schedule)


def completed_record(run_dir: Path, config_hash: str) -> dict[str, Any] | None:
    """The record of a run of the same config that already completed in `run_dir`, if any."""
    path = run_dir / "result.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if record["status"] == "completed" and record["config_hash"] == config_hash else None
