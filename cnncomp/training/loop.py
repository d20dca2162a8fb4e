"""One training run: build, train the method's stages epoch by epoch (resumable), test, save.

The loop calls the method's hooks (stages, start_stage, penalty, epoch_metrics, finish, restore)
and never names a method. With codec.finetune_epochs > 0 the run ends in the "quantize" stage
(quantization-aware fine-tuning, `cnncomp.compression.qat`): the method finishes the model (e.g.
prunes it), fake quantizers go on its stored values, and a fresh optimizer trains the finished
model through them; a last.pt written in that stage says so and is resumed into that structure.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cnncomp.compression import (
    Method,
    Stage,
    codec,
    fold,
    format_summary,
    index_bits,
    kinds,
    match_dense_gain,
    qat,
    refresh_summary,
    stored_params,
)
from cnncomp.data import DataSpec, build_data
from cnncomp.errors import ConfigError
from cnncomp.measure import count_macs, state_dict_bytes
from cnncomp.training import checkpoint, distributed, engine
from cnncomp.training.distill import build_distillation
from cnncomp.training.loggers import build_loggers
from cnncomp.training.model import MODEL_FILE, QUANTIZE, build_run_model, codec_spec, file_meta, run_method, run_stages
from cnncomp.training.record import RunRecord, format_metric

log = logging.getLogger("cnncomp")


def size_fields(model: torch.nn.Module, dense_params: int) -> dict[str, Any]:
    """Stored values, the bits that say which coefficients a mask kept, and the compression ratio
    without and with that index cost (counted in 32-bit values)."""
    stored, bits = stored_params(model), index_bits(model)
    return {
        "stored_params": stored,
        "index_bits": bits,
        "compression_ratio": dense_params / stored,
        "compression_ratio_with_index": dense_params / (stored + bits / 32),
    }


def stage_of(stages: list[Stage], epoch: int) -> Stage:
    """The stage that `epoch` (1-based) belongs to."""
    end = 0
    for stage in stages:
        end += stage.epochs
        if epoch <= end:
            return stage
    raise ValueError(f"epoch {epoch} is past the stages' {end} epochs")


class Run:
    """The objects of one run and its loop state; `run` drives it."""

    def __init__(self, config: dict, run_dir: Path, device: torch.device, record: RunRecord) -> None:
        t = config["trainer"]
        self.config, self.t, self.run_dir, self.device, self.record = config, t, run_dir, device, record
        torch.manual_seed(t["seed"])
        self.method: Method = run_method(config)
        self.stages = run_stages(config, self.method)
        self.quantize_epochs = self.stages[-1].epochs if self.stages[-1].name == QUANTIZE else 0
        spec = DataSpec.from_config(config["dataset"], t, rank=distributed.rank(), world_size=distributed.world_size())
        self.data = build_data(spec, device=device)
        self._build_model()
        self.distill = build_distillation(config, self.model_args, device, channels_last=self.channels_last)
        if config["method"]["init"] == "gain":
            self._match_gain()
        elif config["method"]["init"] == "project" and not config["model"].get("pretrained"):
            log.warning(
                "method.init=project without model.pretrained projects a random init: the projection keeps part "
                "of its energy per layer (a random row's best one-term fit ~2 ln n / n of it, recipe=frequency), "
                "and the signal may vanish; use method.init=variance or gain, or give model.pretrained"
            )
        self.steps = min(len(self.data.train), t["limit_train_batches"] or len(self.data.train))
        # the schedule spans the method's epochs: it has annealed when the quantize stage begins
        self.optimizer, self.schedule = self._optimizer(t["lr"], t["schedule"], t["max_epochs"] - self.quantize_epochs)
        self.meta = checkpoint.meta(config, record.config_hash, self.model_args)
        self.state = {"epoch": 0, "history": [], "best": None, "train_time_s": 0.0, "train_images": 0}
        self.eval_opts = {"device": device, "precision": str(t["precision"]), "limit": t["limit_eval_batches"]}
        self.eval_opts.update(channels_last=self.channels_last, reduce=distributed.all_reduce_sum)
        # the ranks' validation shards together (one may be empty)
        self.has_val = distributed.all_reduce_sum(torch.tensor(len(self.data.val), device=device)).item() > 0

    def _build_model(self) -> None:
        info = self.data.info
        self.model, self.summary, self.model_args, dense = build_run_model(
            self.config, self.method, num_classes=info.num_classes, in_channels=info.in_channels,
            image_size=info.image_size,
        )  # fmt: skip
        try:  # before training, not when the file is written at its end
            codec_spec(self.config).check_layers(kinds.value_names(self.model.state_dict()))
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self.model.to(self.device)
        self.channels_last = bool(self.t.get("channels_last", False))
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)  # 4-d weights and buffers in NHWC order
        log.info("%s on %s, %s\n%s", self.model_args["name"], info.name, self.device, format_summary(self.summary))
        macs = count_macs(self.model, (info.in_channels, info.image_size, info.image_size))
        self.record.update(dense_params=dense, layers_summary=self.summary, macs=macs, **size_fields(self.model, dense))

    def _match_gain(self) -> None:
        """init=gain on the first training batch (a resumed run's checkpoint overwrites it; with
        several ranks, DDP starts every replica from rank 0's)."""
        x, _ = next(iter(self.data.train))
        factors = match_dense_gain(self.model, x.to(self.device))
        log.info("init=gain: %s", ", ".join(f"{name} x{f:.3g}" for name, f in factors.items()))

    def _optimizer(self, lr: float, schedule: str, epochs: int) -> tuple[torch.optim.Optimizer, Any]:
        """A fresh optimizer over the model's parameters and a per-step schedule over `epochs`."""
        t = self.t
        optimizer = engine.build_optimizer(
            self.model, name=t["optimizer"], lr=lr, weight_decay=t["weight_decay"], momentum=t["momentum"]
        )
        return optimizer, engine.build_schedule(optimizer, name=schedule, total_steps=max(1, self.steps * epochs))

    def start_quantize(self, finished: dict[str, torch.Tensor] | None = None) -> None:
        """The quantize stage's model and optimizer. The method finishes the model (or, on resume,
        gives it the structure of the `finished` state_dict), fake quantizers go on every stored
        value, and a fresh optimizer (the parameters changed) trains it with a cosine schedule from
        trainer.lr / 10 over the stage: a fine-tuning of an already trained model."""
        if finished is None:
            self.method.finish(self.model)
        else:
            self.method.restore(self.model, finished)
        qat.install(self.model, codec_spec(self.config))
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer, self.schedule = self._optimizer(self.t["lr"] / 10, "cosine", self.quantize_epochs)

    def start_stage(self, stage: Stage) -> None:
        """Called before the first epoch of `stage` that this process trains (also on resume)."""
        if stage.name != QUANTIZE:
            self.method.start_stage(self.model, stage)
        elif not qat.installed(self.model):  # a resume into the stage installed them already
            self.start_quantize()

    def resume(self) -> None:
        last = self.run_dir / "last.pt"
        distributed.barrier()  # every rank resumes from the last.pt rank 0 wrote
        if last.exists():
            ckpt = checkpoint.read(last, self.record.config_hash)
            if ckpt["state"].get("stage") == QUANTIZE:  # written by the quantize stage: its structure first
                self.start_quantize(finished=ckpt["model"])
            self.state = checkpoint.load_into(ckpt, self.model, self.optimizer, self.schedule)
            log.info("resumed from %s after epoch %d", last, self.state["epoch"])

    def step_model(self) -> torch.nn.Module:
        """What the training step calls: the model in DDP when data-parallel, compiled when asked.
        Both share the model's parameters; checkpoints and evaluation use the model itself."""
        step_model = distributed.wrap(self.model, self.device)
        return torch.compile(step_model) if self.t["compile"] else step_model

    def train_epoch(self, epoch: int, stage: Stage, step_model: torch.nn.Module) -> dict[str, Any]:
        self.data.train.set_epoch(epoch)
        penalty = self.method.penalty(self.model, stage=stage, epoch=epoch, num_train=self.steps * self.t["batch_size"])
        interactive = sys.stderr.isatty() and distributed.is_main()
        with tqdm(total=self.steps, desc=f"epoch {epoch}", leave=False, disable=not interactive) as bar:
            return engine.train_epoch(
                step_model,
                self.data.train,
                self.optimizer,
                self.schedule,
                device=self.device,
                precision=str(self.t["precision"]),
                limit=self.t["limit_train_batches"],
                progress=bar,
                channels_last=self.channels_last,
                penalty=penalty,
                reduce=distributed.all_reduce_sum,
                distill=self.distill,
            )

    def end_epoch(self, epoch: int, stage: Stage, fit: dict[str, Any], started: float) -> None:
        """Validate, log and checkpoint a finished epoch of `stage`."""
        distributed.broadcast_buffers(self.model)  # rank 0's BatchNorm statistics, the ones it saves
        val = (
            engine.evaluate(self.model, self.data.val, **self.eval_opts)
            if self.has_val
            else {"loss": None, "acc": None}
        )
        # the method's metrics describe its own stages (after finish, e.g. pruning, they may not apply)
        extra = {} if stage.name == QUANTIZE else self.method.epoch_metrics(self.model)
        row = {
            "epoch": epoch,
            "train_loss": fit["loss"],
            "train_acc": fit["acc"],
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_time_s": time.perf_counter() - started,
            **extra,
        }
        self.state["history"].append(row)
        log.info(
            "epoch %d/%d  train loss %.4f acc %.4f  val loss %s acc %s  (%.1fs)%s",
            epoch, self.t["max_epochs"], fit["loss"], fit["acc"], format_metric(val["loss"]), format_metric(val["acc"]),
            row["epoch_time_s"], "".join(f"  {k} {v}" for k, v in extra.items()),
        )  # fmt: skip
        self.state["epoch"], self.state["stage"] = epoch, stage.name
        best = self.state["best"]
        # a quantize-stage model is chosen among quantize-stage epochs only (an earlier one is another structure)
        first_quantized = stage.name == QUANTIZE and (best or {}).get("stage") != QUANTIZE
        last = self.method.keeps_last_epoch or not self.has_val or best is None or first_quantized
        if last or val["acc"] > best["val_acc"]:
            self.state["best"] = {"epoch": epoch, "val_acc": val["acc"], "val_loss": val["loss"], "stage": stage.name}
            checkpoint.save(self.run_dir / "best.pt", {"model": self.model.state_dict(), "epoch": epoch, **self.meta})
        state = checkpoint.training_state(self.model, self.optimizer, self.schedule, self.state, self.meta)
        checkpoint.save(self.run_dir / "last.pt", state)

    def test(self, save_folded: bool) -> None:
        """Load the chosen epoch, let the method finish the model (e.g. prune), test and save it."""
        distributed.barrier()  # rank 0 has written best.pt
        best = torch.load(self.run_dir / "best.pt", map_location=self.device, weights_only=True)
        self.model.load_state_dict(best["model"])
        if qat.installed(self.model):  # the method finished it when the quantize stage began
            qat.remove(self.model)  # the latent values (uniform) or the codebook values (kmeans)
        else:
            self.method.finish(self.model)
        refresh_summary(self.model, self.summary)
        self.record.update(**size_fields(self.model, self.record.dense_params))
        unquantized = engine.evaluate(self.model, self.data.test, **self.eval_opts)
        model_bytes = checkpoint.save(self.run_dir / "model.pt", self.model.state_dict())
        dense = fold(self.model)
        if save_folded:
            checkpoint.save(self.run_dir / "model_folded.pt", dense.state_dict())
        self.record.update(test_acc_unquantized=unquantized["acc"], **self.write_file())
        test = engine.evaluate(self.model, self.data.test, **self.eval_opts)  # the decoded file's model
        s = self.state
        self.record.update(
            status="completed",
            model_bytes=model_bytes,
            dense_model_bytes=state_dict_bytes(dense.state_dict()),
            test_acc=test["acc"],
            test_loss=test["loss"],
            best_epoch=s["best"]["epoch"],
            val_acc=s["best"]["val_acc"],
            val_loss=s["best"]["val_loss"],
            epochs_completed=s["epoch"],
            train_time_s=s["train_time_s"],
            images_per_s=s["train_images"] / s["train_time_s"] if s["train_time_s"] else None,
        )

    def write_file(self) -> dict[str, Any]:
        """Write model.cnnc (rank 0), decode it back into the model (every rank): its record fields."""
        path = self.run_dir / MODEL_FILE
        stats = None
        if distributed.is_main():
            meta = file_meta(self.config, self.model_args)
            stats = codec.write_file(path, self.model.state_dict(), meta, codec_spec(self.config))
        distributed.barrier()
        _, state = codec.read_file(path)
        self.model.load_state_dict(state)
        if stats is None:
            return {}
        return {
            "file_bytes": stats.total_bytes,
            "file_ratio": 4 * self.record.dense_params / stats.total_bytes,
            "bits_per_value": stats.bits_per_value,
            "file_index_bits": stats.index_bits,
        }


def run(config: dict, run_dir: Path, device: torch.device, record: RunRecord, loggers: list, *, name: str,
        group: str | None) -> None:  # fmt: skip
    """Train, test and save one configuration, filling `record`; `loggers` gets the run's loggers."""
    r = Run(config, run_dir, device, record)
    r.resume()
    if distributed.is_main():
        loggers += build_loggers(config["logger"], run_dir, config, name=name, group=group)
    stage, step_model = None, None
    for epoch in range(r.state["epoch"] + 1, r.t["max_epochs"] + 1):
        started = time.perf_counter()
        if stage_of(r.stages, epoch) is not stage:  # a new stage, or the first epoch after a resume
            stage = stage_of(r.stages, epoch)
            r.start_stage(stage)
            step_model = r.step_model()  # parameters may have stopped training (DDP must know)
            log.info("stage %s: %d epochs from epoch %d", stage.name, stage.epochs, epoch)
        fit = r.train_epoch(epoch, stage, step_model)
        r.state["train_time_s"] += time.perf_counter() - started
        r.state["train_images"] += fit["images"]
        if not math.isfinite(fit["loss"]):
            record.update(status="diverged", error=f"non-finite training loss in epoch {epoch}")
            log.error("%s", record.error)
            return
        r.end_epoch(epoch, stage, fit, started)
        for logger in loggers:
            logger.log_epoch(r.state["history"])
    r.test(config["save_folded"])
