"""The training app: `python -m cnncomp.train model=alexnet kernel=dst layers=conv`.

`main` is a thin @hydra.main; `train(cfg)` does the work and returns the run record, which is also
written to `<job dir>/result.json` on every ending (completed, failed, diverged, interrupted).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cloudpickle
import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import configure_log
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from cnncomp import atomic, distributed, engine, sparsevd
from cnncomp.compress import check_options, fold, index_bits, layer_summary, stored_params
from cnncomp.data import DataNotFoundError, build_data, list_datasets
from cnncomp.loggers import LOGGERS, build_loggers
from cnncomp.measure import count_macs, state_dict_bytes
from cnncomp.models import build_model, list_models
from cnncomp.record import config_hash, environment, redact
from cnncomp.surgery import KERNELS, compress_model, format_summary, layer_types

log = logging.getLogger("cnncomp")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
EXIT_CODES = {"completed": 0, "failed": 1, "diverged": 3, "interrupted": 130}


class ConfigError(ValueError):
    """A config value cnncomp cannot run with; the message names it and the allowed values."""


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived; the run stops and records status `interrupted`."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_config(c: dict[str, Any]) -> None:
    """Reject bad values before anything is loaded or trained."""
    t = c["trainer"]
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
    _require(isinstance(t["lr"], (int, float)) and t["lr"] > 0, f"trainer.lr must be > 0, got {t['lr']!r}")
    _require(
        isinstance(t["val_fraction"], (int, float)) and 0 <= t["val_fraction"] < 1,
        f"trainer.val_fraction must be in [0, 1), got {t['val_fraction']!r}",
    )
    choices = {
        "optimizer": engine.OPTIMIZERS,
        "schedule": engine.SCHEDULES,
        "precision": engine.PRECISIONS,
        "device": ("auto", "cpu", "cuda"),
    }
    for key, allowed in choices.items():
        _require(str(t[key]) in allowed, f"trainer.{key}={t[key]!r} is not allowed; allowed: {', '.join(allowed)}")
    _require(
        c["model"]["name"] in list_models(),
        f"unknown model {c['model']['name']!r}; allowed: {', '.join(list_models())}",
    )
    _require(
        c["dataset"]["name"] in list_datasets(),
        f"unknown dataset {c['dataset']['name']!r}; allowed: {', '.join(list_datasets())}",
    )
    _require(
        c["logger"]["name"] in LOGGERS,
        f"unknown logger {c['logger']['name']!r}; allowed: {', '.join(LOGGERS)}",
    )
    k = c["kernel"]
    _require(k["name"] in KERNELS, f"unknown kernel {k['name']!r}; allowed: {', '.join(KERNELS)}")
    if k["name"] != "none" and k["selection"] == "learned":
        _require(
            isinstance(k["threshold"], (int, float)) and not isinstance(k["threshold"], bool),
            f"kernel.threshold must be a number (log alpha), got {k['threshold']!r}",
        )
        _require(
            isinstance(k["kl_scale"], (int, float)) and not isinstance(k["kl_scale"], bool) and k["kl_scale"] > 0,
            f"kernel.kl_scale must be a number > 0, got {k['kl_scale']!r}",
        )
        for key in ("kl_warmup_epochs", "finetune_epochs"):
            _require(
                isinstance(k[key], int) and not isinstance(k[key], bool) and k[key] >= 0,
                f"kernel.{key} must be an integer >= 0, got {k[key]!r}",
            )
        _require(
            k["finetune_epochs"] < t["max_epochs"],
            f"kernel.finetune_epochs={k['finetune_epochs']} leaves no sparse VD epoch: it must be below "
            f"trainer.max_epochs={t['max_epochs']}",
        )
    try:
        layer_types(c["layers"]["name"])
        if k["name"] != "none":
            check_options(k["name"], k["keep"], k["selection"], k["init"], k["method"], **_kernel_opts(k))
    except ValueError as err:
        raise ConfigError(f"kernel/layers: {err}") from None


def _selection_label(k: dict[str, Any]) -> str | None:
    """What picks the stored values, for the record and the report (None for the dense model):
    the selection, or the method when the weight is not stored as selected coefficients."""
    if k["name"] == "none":
        return None
    return k["selection"] if k["method"] == "transform" else k["method"]


def _kernel_opts(k: dict[str, Any]) -> dict[str, Any]:
    opts = {"seed": k["seed"]}
    if k["name"] == "wavelet":
        opts["wavelet"] = k["wavelet"]
    if k["selection"] == "learned":
        opts["threshold"] = k["threshold"]
        opts["log_sigma2_init"] = k["log_sigma2_init"]
    return opts


def _compression_kwargs(k: dict[str, Any]) -> dict[str, Any]:
    """compress_model's keyword arguments from the kernel config node."""
    names = ("keep", "selection", "axes", "init", "method", "skip_first", "skip_last")
    return {"kernel": k["name"], **{n: k[n] for n in names}, **_kernel_opts(k)}


def build_run_model(
    config: dict[str, Any], *, num_classes: int, in_channels: int, image_size: int
) -> tuple[torch.nn.Module, list[dict], dict[str, Any], int]:
    """The run's model, compressed as configured and untrained: (model, per-layer summary, the
    build_model arguments, the dense model's parameter count)."""
    model_args = {
        "name": config["model"]["name"],
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
    }
    model = build_model(**model_args)
    if config["model"].get("pretrained"):
        load_pretrained(model, config["model"]["pretrained"])
    dense_params = stored_params(model)
    model, summary = compress_model(model, layers=config["layers"]["name"], **_compression_kwargs(config["kernel"]))
    return model, summary, model_args, dense_params


def load_pretrained(model: torch.nn.Module, path: str | Path) -> None:
    """Load a dense checkpoint of a cnncomp run into `model` (before compression): a model.pt or
    model_folded.pt state_dict, or the "model" entry of best.pt/last.pt."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.pretrained={str(path)!r}: no such file (give a model.pt of a kernel=none run)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(
            f"model.pretrained={str(path)!r} does not fit this model (a dense {type(model).__name__} with the "
            f"dataset's classes and channels is needed; compressed checkpoints are not accepted): {err}"
        ) from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is available; use trainer.device=cpu or auto")
    return torch.device(name)


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


def compose_config(overrides: list[str]) -> DictConfig:
    """The app's config for `overrides`, composed without running the app (tests, bench)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train and test one configuration; returns the run record (also written to result.json)."""
    config = redact(OmegaConf.to_container(cfg, resolve=True))
    run_dir, overrides, group, name = _hydra_context(None if run_dir is None else Path(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    k = config["kernel"]
    result: dict[str, Any] = {
        "status": "failed",
        "error": None,
        "overrides": overrides,
        "config": config,
        "config_hash": config_hash(config),
        "run_dir": str(run_dir),
        "model": config["model"]["name"],
        "kernel": k["name"],
        "layers": config["layers"]["name"],
        "keep": 1.0 if k["name"] == "none" else k["keep"],
        "selection": _selection_label(k),
        "method": None if k["name"] == "none" else k["method"],
        "dataset": config["dataset"]["name"],
        "started_at": datetime.now(timezone.utc).isoformat(),
    }
    done = _completed_record(run_dir, result["config_hash"])
    if done is not None:
        log.info("%s already holds a completed run of this config; skipping", run_dir)
        return done
    loggers: list = []
    records = distributed.is_main()  # rank 0 writes and prints the record, no other rank
    with _signals_interrupt():
        try:
            check_config(config)
            device = resolve_device(config["trainer"]["device"])
            result["world_size"] = _world_size(config["trainer"], device)
            if result["world_size"] > 1 and distributed.environment() is None:
                result.update(_train_ranks(cfg, run_dir, result["world_size"]))
                records = False  # the spawned rank 0 has written and printed this record
            else:
                with _deterministic(config["trainer"]["deterministic"]), distributed.process_group(device) as device:
                    if not distributed.is_main():
                        log.setLevel(logging.WARNING)  # rank 0 logs the run; the others only what goes wrong
                    run_dir = Path(distributed.broadcast_object(str(run_dir)))  # torchrun: one dir per process
                    result.update(environment(device))
                    _run(config, run_dir, device, result, loggers, name=name, group=group)
        except (Interrupted, KeyboardInterrupt) as err:
            result["status"], result["error"] = "interrupted", f"interrupted by {err or 'SIGINT'}"
            if (run_dir / "last.pt").exists():
                log.warning("run interrupted (%s); last.pt holds the last finished epoch", err or "SIGINT")
            else:
                log.warning(
                    "run interrupted (%s) before its first epoch finished: nothing can be resumed yet", err or "SIGINT"
                )
        except SystemExit:  # a launcher (submitit) ending the job, e.g. to requeue it
            result["status"], result["error"] = "interrupted", "the job was ended by its launcher"
            raise
        except (ConfigError, DataNotFoundError) as err:
            result["error"] = str(err)
            log.error("%s", err)
        except Exception as err:
            result["error"] = f"{type(err).__name__}: {err}"
            log.exception("run failed")
            if not distributed.is_main():
                raise  # a non-zero exit makes the launcher end the other ranks, which would wait forever
        finally:
            result["ended_at"] = datetime.now(timezone.utc).isoformat()
            if records:
                atomic.write_json(run_dir / "result.json", result)
            for logger in loggers:
                with contextlib.suppress(Exception):
                    logger.finish(result)
    if records:
        _print_summary(result)
    return result


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


def _completed_record(run_dir: Path, chash: str) -> dict[str, Any] | None:
    """The record of a run of the same config that already completed in `run_dir`, if any."""
    path = run_dir / "result.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if record["status"] == "completed" and record["config_hash"] == chash else None


def _checkpoint_meta(config: dict, result: dict, model_args: dict) -> dict[str, Any]:
    return {
        "model_args": model_args,
        "compression": config["kernel"] | {"layers": config["layers"]["name"]},
        "config": config,
        "config_hash": result["config_hash"],
    }


def _run(
    config: dict, run_dir: Path, device: torch.device, result: dict, loggers: list, *, name: str, group: str | None
) -> None:
    t, k = config["trainer"], config["kernel"]
    learned = _selection_label(k) == "learned"
    precision = str(t["precision"])
    torch.manual_seed(t["seed"])
    dataset_opts = {key: v for key, v in config["dataset"].items() if key != "name"}
    data = build_data(
        config["dataset"]["name"],
        **dataset_opts,
        batch_size=t["batch_size"],
        val_fraction=t["val_fraction"],
        seed=t["seed"],
        device=device,
        num_workers=t["num_workers"],
        rank=distributed.rank(),
        world_size=distributed.world_size(),
    )
    info = data.info
    model, summary, model_args, result["dense_params"] = build_run_model(
        config, num_classes=info.num_classes, in_channels=info.in_channels, image_size=info.image_size
    )
    model.to(device)
    channels_last = bool(t.get("channels_last", False))
    if channels_last:
        model.to(memory_format=torch.channels_last)  # 4-d weights and buffers in NHWC order
    log.info("%s on %s, %s\n%s", model_args["name"], info.name, device, format_summary(summary))
    result.update(_size_fields(model, result["dense_params"]))
    result.update(layers_summary=summary, macs=count_macs(model, (info.in_channels, info.image_size, info.image_size)))

    steps = min(len(data.train), t["limit_train_batches"] or len(data.train))
    optimizer = engine.build_optimizer(
        model, name=t["optimizer"], lr=t["lr"], weight_decay=t["weight_decay"], momentum=t["momentum"]
    )
    schedule = engine.build_schedule(optimizer, name=t["schedule"], total_steps=max(1, steps * t["max_epochs"]))
    meta = _checkpoint_meta(config, result, model_args)
    state = {"epoch": 0, "history": [], "best": None, "train_time_s": 0.0, "train_images": 0}
    last = run_dir / "last.pt"
    distributed.barrier()  # every rank resumes from the last.pt rank 0 wrote
    if last.exists():
        state = _resume(last, model, optimizer, schedule, result["config_hash"])
        log.info("resumed from %s after epoch %d", last, state["epoch"])
    if distributed.is_main():
        loggers += build_loggers(config["logger"], run_dir, config, name=name, group=group)
    # the ranks' validation shards together (one may be empty)
    has_val = distributed.all_reduce_sum(torch.tensor(len(data.val), device=device)).item() > 0
    evaluate = {"device": device, "precision": precision, "limit": t["limit_eval_batches"]}
    evaluate.update(channels_last=channels_last, reduce=distributed.all_reduce_sum)
    step_model = _step_model(model, device, t["compile"])
    finetune_from = t["max_epochs"] - k["finetune_epochs"] + 1  # sparse VD: the first epoch of a fixed kept set
    frozen = False

    for epoch in range(state["epoch"] + 1, t["max_epochs"] + 1):
        data.train.set_epoch(epoch)
        start = time.perf_counter()
        interactive = sys.stderr.isatty() and distributed.is_main()
        if learned and epoch >= finetune_from and not frozen:  # this epoch or, resumed, an earlier one
            sparsevd.freeze(model)
            frozen = True
            step_model = _step_model(model, device, t["compile"])  # log σ² no longer trains
            log.info("sparse VD: the kept set is fixed; fine-tuning it for %d epochs", t["max_epochs"] - epoch + 1)
        penalty = _kl_penalty(model, k, epoch, steps * t["batch_size"]) if learned and not frozen else None
        with tqdm(total=steps, desc=f"epoch {epoch}", leave=False, disable=not interactive) as bar:
            fit = engine.train_epoch(
                step_model,
                data.train,
                optimizer,
                schedule,
                device=device,
                precision=precision,
                limit=t["limit_train_batches"],
                progress=bar,
                channels_last=channels_last,
                penalty=penalty,
                reduce=distributed.all_reduce_sum,
            )
        state["train_time_s"] += time.perf_counter() - start
        state["train_images"] += fit["images"]
        if not math.isfinite(fit["loss"]):
            result["status"], result["error"] = "diverged", f"non-finite training loss in epoch {epoch}"
            log.error("%s", result["error"])
            return
        distributed.broadcast_buffers(model)  # rank 0's BatchNorm statistics, the ones it saves
        val = engine.evaluate(model, data.val, **evaluate) if has_val else {"loss": None, "acc": None}
        row = {
            "epoch": epoch,
            "train_loss": fit["loss"],
            "train_acc": fit["acc"],
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_time_s": time.perf_counter() - start,
        }
        if learned:
            row["kept_coefficients"], total = sparsevd.sparsity(model)
            log.info("sparse VD: %d of %d coefficients below the log alpha threshold", row["kept_coefficients"], total)
        state["history"].append(row)
        log.info(
            "epoch %d/%d  train loss %.4f acc %.4f  val loss %s acc %s  (%.1fs)",
            epoch,
            t["max_epochs"],
            fit["loss"],
            fit["acc"],
            _fmt(val["loss"]),
            _fmt(val["acc"]),
            row["epoch_time_s"],
        )
        state["epoch"] = epoch
        # sparse VD keeps the last epoch: an earlier one with a better validation accuracy is a
        # denser model, picked by a criterion blind to size
        if learned or not has_val or state["best"] is None or val["acc"] > state["best"]["val_acc"]:
            state["best"] = {"epoch": epoch, "val_acc": val["acc"], "val_loss": val["loss"]}
            _save(run_dir / "best.pt", {"model": model.state_dict(), "epoch": epoch, **meta})
        _save(last, _checkpoint(model, optimizer, schedule, state, meta))
        for logger in loggers:
            logger.log_epoch(state["history"])

    distributed.barrier()  # rank 0 has written best.pt
    best = torch.load(run_dir / "best.pt", map_location=device, weights_only=True)
    model.load_state_dict(best["model"])
    if learned:
        sparsevd.prune(model)
        _refresh_summary(model, summary)
        result.update(_size_fields(model, result["dense_params"]))
    test = engine.evaluate(model, data.test, **evaluate)
    result["model_bytes"] = _save(run_dir / "model.pt", model.state_dict())
    dense = fold(model)
    result["dense_model_bytes"] = state_dict_bytes(dense.state_dict())
    if config["save_folded"]:
        _save(run_dir / "model_folded.pt", dense.state_dict())
    result.update(
        status="completed",
        test_acc=test["acc"],
        test_loss=test["loss"],
        best_epoch=state["best"]["epoch"],
        val_acc=state["best"]["val_acc"],
        val_loss=state["best"]["val_loss"],
        epochs_completed=state["epoch"],
        train_time_s=state["train_time_s"],
        images_per_s=state["train_images"] / state["train_time_s"] if state["train_time_s"] else None,
    )


def _step_model(model: torch.nn.Module, device: torch.device, compile: bool) -> torch.nn.Module:
    """What the training step calls: `model` in DDP when data-parallel, compiled when asked. Both
    share `model`'s parameters; checkpoints and evaluation use `model` itself."""
    step_model = distributed.wrap(model, device)
    return torch.compile(step_model) if compile else step_model


def _save(path: Path, obj: Any) -> int | None:
    """Write `obj` atomically on rank 0 only (every rank holds the same state); bytes written."""
    return atomic.torch_save(path, obj) if distributed.is_main() else None


def _size_fields(model: torch.nn.Module, dense_params: int) -> dict[str, Any]:
    """Stored values, the bits that say which coefficients a mask kept, and the compression ratio
    without and with that index cost (counted in 32-bit values)."""
    stored, bits = stored_params(model), index_bits(model)
    return {
        "stored_params": stored,
        "index_bits": bits,
        "compression_ratio": dense_params / stored,
        "compression_ratio_with_index": dense_params / (stored + bits / 32),
    }


def _kl_penalty(model: torch.nn.Module, k: dict[str, Any], epoch: int, num_train: int):
    """Sparse VD's KL term per training example (the ELBO's KL/N), warmed up over the first epochs;
    kl_scale > 1 tempers the posterior (more sparsity in a short schedule, no longer the ELBO)."""
    weight = sparsevd.kl_weight(epoch, k["kl_warmup_epochs"]) * k["kl_scale"] / num_train
    return lambda: weight * sparsevd.kl_divergence(model)


def _refresh_summary(model: torch.nn.Module, rows: list[dict]) -> None:
    """Update the per-layer rows from the layers' summaries (after pruning changed what they store)."""
    modules = dict(model.named_modules())
    for row in rows:
        summary = layer_summary(modules[row["name"]])
        if summary is not None:
            row.update(summary.as_dict())


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _checkpoint(model, optimizer, schedule, state: dict, meta: dict) -> dict[str, Any]:
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


def _resume(path: Path, model, optimizer, schedule, chash: str) -> dict[str, Any]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt["config_hash"] != chash:
        raise ConfigError(
            f"{path} holds a checkpoint of another configuration (hash {ckpt['config_hash']}, this run "
            f"{chash}); it is left untouched: run in a new directory or remove it"
        )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if schedule is not None:
        schedule.load_state_dict(ckpt["schedule"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    return ckpt["state"]


def _print_summary(r: dict[str, Any]) -> None:
    lines = [f"cnncomp: {r['status']}  {r['model']} / {r['kernel']} / layers={r['layers']} / {r['dataset']}"]
    if r.get("error"):
        lines.append(f"  error: {r['error']}")
    if r.get("test_acc") is not None:
        lines.append(f"  test accuracy {r['test_acc']:.4f}  (best val {_fmt(r['val_acc'])} at epoch {r['best_epoch']})")
    if r.get("stored_params"):
        lines.append(
            f"  parameters {r['dense_params']:,} dense -> {r['stored_params']:,} stored ({r['compression_ratio']:.2f}x)"
        )
    if r.get("dense_model_bytes"):
        lines.append(
            f"  size on disk {r['model_bytes'] / 1024:.1f} KiB (dense {r['dense_model_bytes'] / 1024:.1f} KiB)"
        )
    if r.get("train_time_s"):
        lines.append(f"  train time {r['train_time_s']:.1f}s, {r['images_per_s']:.0f} images/s on {r['device']}")
    lines.append(f"  record: {Path(r['run_dir']) / 'result.json'}")
    print("\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    result = train(cfg)
    if HydraConfig.get().mode == RunMode.RUN and result["status"] != "completed":
        sys.exit(EXIT_CODES[result["status"]])
    return result


if __name__ == "__main__":
    main()
