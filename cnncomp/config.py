"""The app's config: compose it (tests, bench, plan), and check it before anything is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cnncomp.compression import KERNELS, check_options, layer_types
from cnncomp.data import list_datasets
from cnncomp.errors import ConfigError
from cnncomp.models import list_models
from cnncomp.training import engine
from cnncomp.training.loggers import LOGGERS
from cnncomp.training.model import codec_spec, run_method, run_stages

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose_config(overrides: list[str]) -> DictConfig:
    """The app's config for `overrides`, composed without running the app (tests, bench, plan)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_trainer(t: dict[str, Any]) -> None:
    for key in ("max_epochs", "batch_size", "devices", "nodes"):
        _require(
            isinstance(t[key], int) and not isinstance(t[key], bool) and t[key] >= 1,
            f"trainer.{key} must be an integer >= 1, got {t[key]!r}",
        )
    world = t["devices"] * t["nodes"]
    _require(
        t["batch_size"] % world == 0,
        f"trainer.batch_size={t['batch_size']} is the global batch and must be divisible by the number of "
        f"processes, trainer.devices x trainer.nodes = {world}",
    )
    for key in ("limit_train_batches", "limit_eval_batches"):
        _require(
            t[key] is None or (isinstance(t[key], int) and t[key] >= 1),
            f"trainer.{key} must be null or an integer >= 1, got {t[key]!r}",
        )
    for key in ("deterministic", "channels_last", "compile"):
        _require(isinstance(t[key], bool), f"trainer.{key} must be true or false, got {t[key]!r}")
    _require(_number(t["lr"]) and t["lr"] > 0, f"trainer.lr must be > 0, got {t['lr']!r}")
    _require(
        _number(t["val_fraction"]) and 0 <= t["val_fraction"] < 1,
        f"trainer.val_fraction must be in [0, 1), got {t['val_fraction']!r}",
    )
    choices = {
        "optimizer": engine.OPTIMIZERS,
        "schedule": engine.SCHEDULES,
        "precision": engine.PRECISIONS,
        "device": engine.DEVICES,
    }
    for key, allowed in choices.items():
        _require(str(t[key]) in allowed, f"trainer.{key}={t[key]!r} is not allowed; allowed: {', '.join(allowed)}")
    _require(_number(t["distill"]) and t["distill"] >= 0, f"trainer.distill must be >= 0, got {t['distill']!r}")
    _require(
        _number(t["distill_temperature"]) and t["distill_temperature"] > 0,
        f"trainer.distill_temperature must be > 0, got {t['distill_temperature']!r}",
    )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_compression(c: dict[str, Any]) -> None:
    k, m = c["kernel"], c["method"]
    _require(k["name"] in KERNELS, f"unknown kernel {k['name']!r}; allowed: {', '.join(KERNELS)}")
    try:
        layer_types(c["layers"]["name"])
        for key in ("skip_first", "skip_last"):
            _require(
                isinstance(c["layers"][key], bool), f"layers.{key} must be true or false, got {c['layers'][key]!r}"
            )
        if k["name"] == "none":
            return
        method = run_method(c)
        method.stages(c["trainer"]["max_epochs"])
        check_options(k["name"], k["keep"], m["init"], k.get("wavelet", "haar"))
        method.check_kernel(k["name"])
    except ValueError as err:
        raise ConfigError(f"kernel/method/layers: {err}") from None


def check_config(c: dict[str, Any]) -> None:
    """Reject bad values before anything is loaded or trained (ConfigError naming the value)."""
    _check_trainer(c["trainer"])
    _require(
        not c["trainer"]["distill"] or bool(c["model"].get("pretrained")),
        f"trainer.distill={c['trainer']['distill']} needs a teacher: give model.pretrained (a dense model.pt)",
    )
    catalogs = {"model": list_models(), "dataset": list_datasets(), "logger": LOGGERS}
    for group, allowed in catalogs.items():
        name = c[group]["name"]
        _require(name in allowed, f"unknown {group} {name!r}; allowed: {', '.join(allowed)}")
    _check_compression(c)
    try:
        codec_spec(c)
        run_stages(c, run_method(c))  # codec.finetune_epochs, and the method's stages in the rest
    except (ValueError, TypeError) as err:
        raise ConfigError(f"codec: {err}") from None
