"""The dry run: `python -m cnncomp.plan [sweep overrides]` prints what a sweep would train and cost.

Takes the same overrides as `python -m cnncomp.train --multirun` (comma lists, `experiment=...`
presets whose `hydra.sweeper.params` define the grid), expands them as Hydra's BasicSweeper does,
composes every cell with `hydra.compose`, builds each cell's model and compression without data or
training, and prints the cell count, stored parameters and compression ratio per cell, an upper
bound on the compressed file's bytes (`cnncomp.compression.file_bound`: what the file holds is
known before training, its entropy-coded size is not), and the cost in device-hours from a measured
step time: a few real training steps on random input of the dataset's shape, once per distinct
compressed architecture, × steps per epoch × epochs.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from torch.nn.utils import parametrize

import cnncomp.data as data
from cnncomp.compression import stored_params
from cnncomp.compression.file_bound import Slot, file_bound, learned_limits, slots
from cnncomp.config import CONF_DIR, check_config
from cnncomp.data import DataShape
from cnncomp.measure import count_macs
from cnncomp.sweep import override_dict, sweep_cells
from cnncomp.training import engine
from cnncomp.training.model import build_run_model, codec_spec, file_meta, run_method
from cnncomp.training.record import device_name, redact

# What build_data would load, known without loading it: (channels, image size, classes, train, test).
# An evaluation image costs about a third of a training image (forward only, vs forward + backward).
EVAL_COST = 1 / 3
_warm = False
# big models are timed on batches of batch_size / PROBE_FRACTION and twice that, then extrapolated
PROBE_FRACTION = 16


def data_shape(options: dict[str, Any]) -> DataShape:
    """The shape and size of a dataset config node, without decoding any image."""
    keys = ("path", "image_size", "stream", "num_classes", "in_channels", "num_train", "num_test")
    return data.describe_data(options["name"], **{k: options[k] for k in keys if k in options})


@dataclass
class Cell:
    overrides: list[str]
    config: dict[str, Any] | None = None
    error: str | None = None
    dense_params: int | None = None
    stored_params: int | None = None
    compression_ratio: float | None = None
    macs: int | None = None
    step_time_s: float | None = None  # one training step of a full batch
    train_steps: int | None = None  # per epoch
    eval_steps: int | None = None  # validation batches per epoch
    test_steps: int | None = None
    hours: float | None = None
    file_bound: int | None = None  # the most bytes model.cnnc can take (file_bound)
    learned_kept: bool = False  # the bound counts a learned kept set at its keep budget

    def field(self, dotted: str) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node


@dataclass
class Plan:
    cells: list[Cell]
    device: str
    unit: str  # "GPU-hours" or "CPU-hours"
    models_built: int = 0
    timings: int = 0  # distinct architectures timed
    wall_s: float = 0.0
    sweep_params: dict[str, str] = field(default_factory=dict)

    @property
    def hours(self) -> float | None:
        hours = [c.hours for c in self.cells if c.hours is not None]
        return sum(hours) if hours else None


def _steps(n: int, batch: int, limit: int | None) -> int:
    steps = math.ceil(n / batch) if n else 0
    return min(steps, limit) if limit else steps


def _time_steps(model: torch.nn.Module, cfg: dict, shape: DataShape, device: torch.device, budget_s: float) -> float:
    """Seconds of one training step (engine.train_epoch on a random full batch), median of the steps
    that fit in `budget_s` (at most 5, the first dropped as warm-up when there are more).

    A step that would not fit in half the budget (a big model on a CPU) is extrapolated instead
    from steps on two small batches b and 2b: t(batch) = fixed + per-image × batch, where the fixed
    part (the weights rebuilt from their coefficients, the optimizer step) does not grow with the batch.
    """
    t = cfg["trainer"]
    model.to(device)
    optimizer = engine.build_optimizer(
        model, name=t["optimizer"], lr=t["lr"], weight_decay=t["weight_decay"], momentum=t["momentum"]
    )

    def step(batch: int) -> float:
        x = torch.randn(batch, shape.in_channels, shape.image_size, shape.image_size, device=device)
        y = torch.randint(shape.num_classes, (batch,), device=device)
        start = time.perf_counter()
        # train_epoch ends with .item(): the step is synchronized on CUDA too
        engine.train_epoch(model, [(x, y)], optimizer, None, device=device, precision=str(t["precision"]))
        return time.perf_counter() - start

    global _warm
    if not _warm:  # the process's first step pays one-off initialization
        step(2)
        _warm = True
    batch = t["batch_size"]
    small = max(1, batch // PROBE_FRACTION)
    if 2 * small < batch and (t1 := step(small)) * batch / small > budget_s / 2:
        t2 = step(2 * small)
        per_image = max(t2 - t1, 0.0) / small
        full = max(t1 - per_image * small, 0.0) + per_image * batch
        if full > budget_s / 2:
            return max(full, t2)  # never below a measured smaller batch
    times: list[float] = []
    while len(times) < 5 and sum(times) < budget_s:
        times.append(step(batch))
    return statistics.median(times[1:] if len(times) > 1 else times)


def _signature(model: torch.nn.Module, cfg: dict, shape: DataShape) -> tuple:
    """What a step's cost depends on: the architecture's parameter and buffer shapes (the bases are
    dense matrices, so dct, dst, dft and wavelet cost the same), the input and the trainer."""
    t = cfg["trainer"]
    tensors = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    tensors += tuple((n, tuple(b.shape)) for n, b in model.named_buffers())
    return (cfg["model"]["name"], shape, tensors, t["batch_size"], str(t["precision"]), t["optimizer"])


# Kinds whose bases are full n x n matrices on every transformed axis: with method=transform and a
# selection that keeps a fixed number of coefficients whatever their values (not selection=learned,
# whose untrained model is counted pruned, nor method=frequency), they compress to the same shapes
# and store the same counts. (A wavelet may leave an axis untransformed: never shared.)
SAME_SHAPES = ("dct", "dst", "dft")


def _build_keys(cfg: dict, shape: DataShape) -> tuple[tuple, tuple]:
    """(the key a cell's built model is shared under, the key of exactly its config): everything the
    counts, MACs and step time depend on (model, dataset shape, layers, every kernel option, the
    trainer's batch, precision and optimizer), with the kind left out where SAME_SHAPES allows and
    only the model, shape and trainer for kernel=none."""
    k = cfg["kernel"]
    rest = (
        repr(sorted(cfg["method"].items())),
        repr(sorted(cfg["model"].items())),
        shape,
        repr(sorted(cfg["layers"].items())),
        *(str(cfg["trainer"][n]) for n in ("batch_size", "precision", "optimizer")),
    )
    exact = (repr(sorted(k.items())), *rest)
    if k["name"] == "none":  # the dense model, whatever the layers, kernel and method options say
        return ("none", rest[1], shape, *rest[4:]), exact
    if k["name"] in SAME_SHAPES and cfg["method"]["name"] == "transform":
        return (repr(sorted({**k, "name": "|".join(SAME_SHAPES)}.items())), *rest), exact
    return exact, exact


def _compose_cells(overrides: Sequence[str], config_dir: str | Path, config_name: str) -> tuple[list[Cell], dict]:
    """Every cell of the sweep, composed (or with the error that stopped it), and the sweep's params."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    hydra_args = [o.input_line for o in parsed if o.is_hydra_override()]
    task_args = [o.input_line for o in parsed if not o.is_hydra_override()]
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        master = compose(config_name=config_name, overrides=fixed, return_hydra_config=True)
        params = OmegaConf.to_container(master.hydra.sweeper, resolve=False).get("params") or {}
        params = {k: str(v) for k, v in params.items()}
        loader = GlobalHydra.instance().config_loader()
        cells = [Cell(c) for c in sweep_cells(task_args, params, config_loader=loader)]
        for cell in cells:
            try:
                cfg = compose(config_name=config_name, overrides=hydra_args + cell.overrides)
                cell.config = OmegaConf.to_container(cfg, resolve=True)
            except Exception as err:
                cell.error = f"{type(err).__name__}: {err}"
    return cells, params


def _plan_device(cells: Sequence[Cell]) -> torch.device:
    devices = {c.config["trainer"]["device"] for c in cells if c.config}
    try:
        return engine.resolve_device("auto" if not devices else sorted(devices)[0])
    except ValueError:
        return torch.device("cpu")


class Built(NamedTuple):
    """What a cell's model is, shared by the cells of one architecture (`_build_keys`)."""

    dense: int | None
    stored: int | None
    macs: int | None
    step: float | None
    tensors: list[Slot] | None  # the state_dict the file would hold, as `file_bound` reads it
    model_args: dict | None
    error: str | None = None


class _Counter:
    """Builds (and times) each distinct architecture once."""

    def __init__(self, plan: Plan, device: torch.device, measure: bool, budget_s: float) -> None:
        self.plan, self.device, self.measure, self.budget_s = plan, device, measure, budget_s
        self.built: dict[tuple, tuple] = {}
        self.timed: dict[tuple, float] = {}
        self.macs_of: dict[tuple, int] = {}

    def counts(self, cfg: dict, shape: DataShape) -> Built:
        shared, key = _build_keys(cfg, shape)
        if shared in self.built:
            return self.built[shared]
        if key not in self.built:
            try:
                self.built[shared] = self._build(cfg, shape)  # a success is shared by every kind
                return self.built[shared]
            except Exception as err:  # an error stays under the exact key: it may name the kind
                self.built[key] = Built(*[None] * 6, f"{type(err).__name__}: {err}")
        return self.built[key]

    def _build(self, cfg: dict, shape: DataShape) -> Built:
        method = run_method(cfg, structure_only=True)
        model, _, model_args, dense = build_run_model(
            cfg, method, num_classes=shape.num_classes, in_channels=shape.in_channels, image_size=shape.image_size
        )
        arch = (cfg["model"]["name"], shape)  # MACs are those of the dense network
        if arch not in self.macs_of:
            with parametrize.cached():
                self.macs_of[arch] = count_macs(model, (shape.in_channels, shape.image_size, shape.image_size))
        self.plan.models_built += 1
        step = None
        if self.measure:
            sig = _signature(model, cfg, shape)
            if sig not in self.timed:
                self.timed[sig] = _time_steps(model, cfg, shape, self.device, self.budget_s)
                self.plan.timings += 1
            step = self.timed[sig]
        method.finish(model)  # what the method stores after training (sparse VD: its keep budget, pruned)
        tensors = slots(model.state_dict(), learned_limits(model) if method.learned_kept else None)
        return Built(dense, stored_params(model), self.macs_of[arch], step, tensors, model_args)


def _cost(cell: Cell, cfg: dict, shape: DataShape, step: float | None) -> None:
    """Steps per epoch and, with a measured step time, device-hours of `cell`."""
    t = cfg["trainer"]
    n_val = round(shape.num_train * t["val_fraction"])
    cell.train_steps = _steps(shape.num_train - n_val, t["batch_size"], t["limit_train_batches"])
    eval_batch = data.DataSpec.from_config(cfg["dataset"], t).held_out_batch_size
    cell.eval_steps = _steps(n_val, eval_batch, t["limit_eval_batches"])
    cell.test_steps = _steps(shape.num_test, eval_batch, t["limit_eval_batches"])
    if step is not None:
        # each held-out image costs about EVAL_COST of a training image
        eval_step = eval_batch / t["batch_size"] * EVAL_COST * step
        seconds = t["max_epochs"] * (cell.train_steps * step + cell.eval_steps * eval_step)
        cell.hours = (seconds + cell.test_steps * eval_step) / 3600


def plan_sweep(
    overrides: Sequence[str],
    *,
    measure: bool = True,
    budget_s: float = 1.0,
    config_dir: str | Path = CONF_DIR,
    config_name: str = "config",
) -> Plan:
    """Compose, build and (with `measure`) time every cell of the sweep `overrides` describe."""
    started = time.perf_counter()
    cells, params = _compose_cells(overrides, config_dir, config_name)
    device = _plan_device(cells)
    where = f": {device_name(device)}" if device.type == "cuda" else f" ({torch.get_num_threads()} threads)"
    unit = "GPU-hours" if device.type == "cuda" else "CPU-hours"
    plan = Plan(cells, device.type + where, unit, sweep_params=params)
    counter = _Counter(plan, device, measure, budget_s)
    for cell in cells:
        if cell.config is None:
            continue
        try:
            check_config(cell.config)
            shape = data_shape(cell.config["dataset"])
        except (ValueError, data.DataNotFoundError) as err:  # ConfigError is a ValueError
            cell.error = str(err)
            continue
        built = counter.counts(cell.config, shape)
        cell.error = built.error
        if cell.error is None:
            cell.dense_params, cell.stored_params, cell.macs, cell.step_time_s = built[:4]
            cell.compression_ratio = built.dense / built.stored
            _cost(cell, cell.config, shape, built.step)
            # the run's file header holds its redacted config (file_meta), so the bound's does
            meta = file_meta(redact(cell.config), built.model_args)
            bound = file_bound(built.tensors, codec_spec(cell.config), meta)
            cell.file_bound, cell.learned_kept = bound.total_bytes, bound.learned
    plan.wall_s = time.perf_counter() - started
    return plan


def _varying(cells: Sequence[Cell]) -> list[str]:
    """Override keys whose value differs between cells (the ones worth a column)."""
    rows = [override_dict(c.overrides) for c in cells]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [k for k in keys if len({r.get(k) for r in rows}) > 1]


def _fmt_hours(h: float | None) -> str:
    if h is None:
        return "–"
    return f"{h * 60:.1f} min" if h < 1 else f"{h:.2f} h"


def _fmt_bound(c: Cell) -> list[str]:
    """The file bound and the ratio of fp32 dense bytes to it (the file's is at least that)."""
    mark = "†" if c.learned_kept else ""
    size = f"{c.file_bound / 2**20:.2f} MiB" if c.file_bound >= 2**20 else f"{c.file_bound / 1024:.1f} KiB"
    return [f"≤ {size}{mark}", f"≥ {4 * c.dense_params / c.file_bound:.1f}x"]


BOUND_NOTE = (
    "file ≤: the most bytes model.cnnc can take, from what is known before training: stored values at "
    "log2(levels) bits each before entropy coding (codec.bits=b: uniform, a grid of at most 2^b + 1 levels; "
    "kmeans, 2^b and the codebook), the count tables at their longest, masks as bitmaps, other tensors at "
    "codec.other, the header at zlib's worst case; trained values entropy-code to fewer bits. "
    "x fp32: the dense model's fp32 bytes over it (the file's ratio is at least that)."
)
LEARNED_NOTE = (
    "† a kept set learned in training (e.g. sparse VD): its count is known only after training; bounded at "
    "the keep budget, ⌈keep·n⌉ of a layer's n values (keep=1: every value and a one-bit-a-value mask)"
)


def format_plan(plan: Plan) -> str:
    cells = plan.cells
    varying = _varying(cells) if cells else []
    head = [
        "#",
        *varying,
        "stored params",
        "dense params",
        "ratio",
        "file ≤",
        "x fp32",
        "MMACs",
        "step ms",
        "steps/epoch",
        "epochs",
        "est. time",
    ]
    rows = []
    for i, c in enumerate(cells, 1):
        values = override_dict(c.overrides)
        row = [str(i), *(values.get(k, "") for k in varying)]
        if c.error:
            row += [f"ERROR: {c.error}"] + [""] * (len(head) - len(row) - 1)
        else:
            row += [
                f"{c.stored_params:,}",
                f"{c.dense_params:,}",
                f"{c.compression_ratio:.2f}x",
                *_fmt_bound(c),
                f"{c.macs / 1e6:.2f}",
                "–" if c.step_time_s is None else f"{1000 * c.step_time_s:.1f}",
                f"{c.train_steps:,}",
                str(c.config["trainer"]["max_epochs"]),
                _fmt_hours(c.hours),
            ]
        rows.append(row)
    widths = [max(len(str(r[j])) for r in [head, *rows] if j < len(r)) for j in range(len(head))]
    widths = [min(w, 60) for w in widths]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=False)).rstrip())
    bad = sum(c.error is not None for c in cells)
    if any(c.file_bound for c in cells):
        notes = [BOUND_NOTE] + ([LEARNED_NOTE] if any(c.learned_kept for c in cells) else [])
        lines += ["", *(textwrap.fill(n, 110, subsequent_indent="  ") for n in notes)]
    lines.append("")
    lines.append(
        f"{len(cells)} cells ({len(cells) - bad} valid, {bad} with errors); {plan.models_built} models built, "
        f"{plan.timings} architectures timed on {plan.device} in {plan.wall_s:.1f}s"
    )
    if plan.hours is not None:
        lines.append(
            f"estimated cost: {plan.hours:.3f} {plan.unit} ({_fmt_hours(plan.hours)} run one after another on "
            f"{plan.device}; step times of random batches, evaluation at 1/3 the cost of a training image)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cnncomp.plan",
        description="Dry run of a sweep: cells, stored parameters, compression ratios, an upper bound on "
        "each compressed file's bytes (before entropy coding) and estimated cost.",
        epilog="Overrides as for `python -m cnncomp.train --multirun`, e.g. experiment=grid_study, or "
        "model=lenet,alexnet kernel=dct,dst layers=linear,conv",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides; comma lists are swept")
    parser.add_argument("-m", "--multirun", action="store_true", help="accepted and ignored (always a sweep)")
    parser.add_argument("--no-time", action="store_true", help="skip the step timing (no cost estimate)")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per distinct architecture")
    parser.add_argument("--config-dir", default=str(CONF_DIR), help="Hydra config dir (default: the package's conf/)")
    parser.add_argument("--config-name", default="config")
    args = parser.parse_args(argv)
    try:
        plan = plan_sweep(
            args.overrides,
            measure=not args.no_time,
            budget_s=args.budget,
            config_dir=args.config_dir,
            config_name=args.config_name,
        )
    except Exception as err:  # a malformed override or config: one message, no traceback
        print(f"cnncomp.plan: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(format_plan(plan))
    return 1 if any(c.error for c in plan.cells) else 0


if __name__ == "__main__":
    sys.exit(main())
