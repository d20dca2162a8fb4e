"""The `step` and `infer` sections, on synthetic batches:

- step:  the bare training step (forward, backward, optimizer) of each kernel at each keep against
  the dense model, in ms per step;
- infer: `engine.evaluate` of the parametrized model (weights rebuilt once, cached) and of the
  folded model against the dense model, in ms per batch."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from cnncomp.bench.timer import Row, Timer
from cnncomp.compression import compress_model, fold, stored_params
from cnncomp.models import build_model
from cnncomp.training import engine


def _model(args: argparse.Namespace, device: torch.device, kernel: str, keep: float) -> nn.Module:
    c, h, w = args.input
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=args.classes, in_channels=c, image_size=h)
    if kernel != "none":
        compress_model(model, kernel=kernel, layers=args.layers, keep=keep)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def dense_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The uncompressed model of the run's settings: every section's baseline."""
    return _model(args, device, "none", 1.0)


def _batch(args: argparse.Namespace, device: torch.device, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(size, *args.input, generator=g).to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, args.classes, (size,), generator=g).to(device)


def make_steps(args: argparse.Namespace, device: torch.device, model: nn.Module) -> Callable[[], None]:
    """`args.steps` bare training steps on one batch: engine.train_epoch without data loading."""
    x, y = _batch(args, device, args.batch)
    optimizer = engine.build_optimizer(model, name="sgd", lr=0.01, weight_decay=5e-4)
    step_model = torch.compile(model) if args.compile else model
    batches = [(x, y)] * args.steps

    def steps() -> None:
        engine.train_epoch(step_model, batches, optimizer, None, device=device, precision=args.precision)

    return steps


def bench_step(args: argparse.Namespace, device: torch.device, timer: Timer) -> list[Row]:
    rows = []
    dense = dense_model(args, device)
    dense_params, dense_steps = stored_params(dense), make_steps(args, device, dense)
    for kernel in args.kernels:
        for keep in args.keeps:
            model = _model(args, device, kernel, keep)
            s, dense_s = (t / args.steps for t in timer.pair(make_steps(args, device, model), dense_steps))
            rows.append(
                Row("step", f"{kernel} keep {keep:g} ({args.layers})", "ms/step", 1e3 * s,
                    "dense", 1e3 * dense_s, "lower",
                    info={"stored_params": stored_params(model), "dense_params": dense_params})
            )  # fmt: skip
    return rows


def bench_infer(args: argparse.Namespace, device: torch.device, timer: Timer) -> list[Row]:
    x, y = _batch(args, device, 2 * args.batch)  # evaluation batches are twice the training batch
    batches = [(x, y)] * args.steps
    kw = {"device": device, "precision": args.precision, "channels_last": args.channels_last}

    def evaluate(model: nn.Module) -> Callable[[], Any]:
        return partial(engine.evaluate, model, batches, **kw)

    dense = evaluate(dense_model(args, device))
    rows = []
    for kernel in args.kernels:
        model = _model(args, device, kernel, args.infer_keep)
        folded = fold(model)
        s, f, d = (1e3 * t / len(batches) for t in timer.pair(evaluate(model), evaluate(folded), dense))
        name = f"{kernel} keep {args.infer_keep:g}"
        rows.append(Row("infer", f"{name} parametrized (cached)", "ms/batch", s, "dense", d, "lower",
                        info={"batch": 2 * args.batch}))  # fmt: skip
        rows.append(Row("infer", f"{name} folded", "ms/batch", f, "dense", d, "lower",
                        info={"batch": 2 * args.batch}))  # fmt: skip
    return rows
