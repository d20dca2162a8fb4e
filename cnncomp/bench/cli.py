"""The driver: the command line, the defaults per device, the sections in order, the printed table
and the JSON (`--out`)."""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from cnncomp.bench.e2e import bench_e2e, bench_target
from cnncomp.bench.pipeline import bench_pipeline
from cnncomp.bench.step import bench_infer, bench_step
from cnncomp.bench.timer import Row, Timer, machine, markdown
from cnncomp.config import compose_config
from cnncomp.models import list_models
from cnncomp.training import engine

SECTIONS = ("pipeline", "step", "infer", "e2e", "target")
KEEPS = (1.0, 0.25, 0.1)

DESCRIPTION = "Speed benchmarks: every figure with a baseline measured in the same run (ratio = figure / baseline)."


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]


def _strs(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cnncomp.bench", description=DESCRIPTION)
    p.add_argument("--model", choices=list_models(), help="default: resnet18 on CUDA, lenet on the CPU")
    p.add_argument("--input", type=_ints, help="C x H x W; default 3x32x32 on CUDA, 1x28x28 on the CPU")
    p.add_argument("--batch", type=int, help="training batch; default 512 on CUDA, 64 on the CPU")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", choices=engine.PRECISIONS, help="default: bf16 on CUDA, 32 on the CPU")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="default: on for CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (step and e2e)")
    p.add_argument("--kernels", type=_strs, default=["dct", "dst", "dft", "wavelet"])
    p.add_argument("--keeps", type=lambda s: [float(v) for v in _strs(s)], default=list(KEEPS))
    p.add_argument("--layers", default="all", help="layers compressed in step/infer: linear, conv, all")
    p.add_argument("--infer-keep", type=float, default=0.25)
    p.add_argument("--sections", type=_strs, default=list(SECTIONS), help=f"any of {','.join(SECTIONS)}")
    p.add_argument("--workers", type=_ints, default=[0, 4], help="DataLoader worker counts of the baseline")
    p.add_argument("--pipeline-images", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=10, help="steps (batches) per timed repeat")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--e2e-steps", type=int, default=50, help="batches per epoch of the e2e train() run")
    p.add_argument("--e2e-epochs", type=int, default=3)
    p.add_argument("--data-root", help="dataset root for the target (default: $CNNCOMP_DATA or ~/.cache/cnncomp/data)")
    p.add_argument("--target-batch", type=int, help="default: the trainer config's batch_size")
    p.add_argument("--target-batches", type=int, help="cap the target epoch at this many batches")
    p.add_argument("--target-repeats", type=int, default=3)
    p.add_argument("--target-workers", type=int, default=0, help="DataLoader workers of the plain loop")
    p.add_argument("--quick", action="store_true", help="tiny sizes for CI (seconds); figures are not meaningful")
    p.add_argument("--out", help="write the JSON here")
    args = p.parse_args(argv)
    bad = set(args.sections) - set(SECTIONS)
    if bad:
        p.error(f"unknown section(s) {', '.join(sorted(bad))}; allowed: {', '.join(SECTIONS)}")
    return args


def _resolve(args: argparse.Namespace) -> torch.device:
    try:
        device = engine.resolve_device(args.device)
    except ValueError as err:
        raise SystemExit(f"--device: {err}") from None
    gpu = device.type == "cuda"
    args.model = args.model or ("resnet18" if gpu else "lenet")
    args.input = args.input or ([3, 32, 32] if gpu else [1, 28, 28])
    if len(args.input) != 3:
        raise SystemExit(f"--input must be CxHxW, got {args.input}")
    args.batch = args.batch or (512 if gpu else 64)
    args.precision = args.precision or ("bf16" if gpu else "32")
    args.channels_last = gpu if args.channels_last is None else args.channels_last
    if args.target_batch is None:
        args.target_batch = int(compose_config([]).trainer.batch_size)
    if args.quick:
        args.batch = min(args.batch, 16)
        args.pipeline_images, args.workers = min(args.pipeline_images, 128), [0]
        args.steps, args.warmup, args.repeats = 2, 1, 3
        args.e2e_steps, args.e2e_epochs = 4, 2
        args.kernels = args.kernels[:1]
        args.target_batches, args.target_repeats = args.target_batches or 4, 1
    return device


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen sections; returns the JSON-able result (machine, settings, rows)."""
    device = _resolve(args)
    timer = Timer(device, args.warmup, args.repeats)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="cnncomp-bench-") as tmp:
        if "pipeline" in args.sections:
            rows += bench_pipeline(args, device, timer)
        if "step" in args.sections:
            rows += bench_step(args, device, timer)
        if "infer" in args.sections:
            rows += bench_infer(args, device, timer)
        if "e2e" in args.sections:
            rows += bench_e2e(args, device, timer, Path(tmp))
        if "target" in args.sections:
            if device.type == "cpu":
                rows += bench_target(args, Path(tmp))
            else:
                print("target: skipped (it is a CPU target; run with --device cpu)", file=sys.stderr)
    settings = {k: v for k, v in vars(args).items() if k not in ("out",)}
    for r in rows:
        if not (math.isfinite(r.ratio) and r.ratio > 0):
            raise RuntimeError(f"bad ratio in {r}")
    return {"machine": machine(device), "settings": settings, "rows": [asdict(r) for r in rows]}


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table, write `--out`; returns the exit status (the `cnncomp-bench` script
    passes it to sys.exit)."""
    args = parse_args(argv)
    result = run(args)
    m = result["machine"]
    load = m["load_average"]
    print(
        f"cnncomp bench: {args.model} {'x'.join(map(str, args.input))} batch {args.batch}, {m['device']} "
        f"({m['cpu_count']} cpus, {m['torch_threads']} torch threads"
        + (f", load {load[0]:.2f}" if load else "")
        + f"), precision {args.precision}, channels_last {args.channels_last}, compile {args.compile}"
    )
    print(markdown([Row(**{k: v for k, v in r.items() if k != "ratio"}) for r in result["rows"]]))
    if args.out:
        from cnncomp.atomic import write_json

        write_json(Path(args.out), result)
    return 0
