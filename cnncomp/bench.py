"""Speed benchmarks: `python -m cnncomp.bench [--model resnet18 --input 3x32x32 --batch 512 ...]`.

Every figure is paired with a baseline measured in the same run, on the same device, and reported
with ratio = figure / baseline (and which way is better). Timing follows airbench: warm up, then
the median of repeats, synchronizing the device around each timed block. Sections:

- pipeline: our `TensorLoader` (uint8 on the device, batched crop/flip/normalize) against a
  torchvision `DataLoader` with PIL transforms over the same uint8 images, in images/s;
- step:     the bare training step (forward, backward, optimizer) of each kernel at keep 1, 0.25,
  0.1 against the dense model, in ms per step;
- infer:    `engine.evaluate` of the parametrized model (weights rebuilt once, cached) and of the
  folded model against the dense model, in ms per batch;
- e2e:      training images/s of an epoch through `cnncomp.train.train` (the real function, on
  synthetic data) against the bare step (framework overhead);
- target:   a LeNet-5 Fashion-MNIST epoch through `train` against a plain torchvision
  `datasets.FashionMNIST` + `DataLoader` + ToTensor/Normalize loop, same model and optimizer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnncomp import data
from cnncomp.compression import compress_model, fold, stored_params
from cnncomp.config import compose_config
from cnncomp.models import build_model, list_models
from cnncomp.training import engine

SECTIONS = ("pipeline", "step", "infer", "e2e", "target")
KEEPS = (1.0, 0.25, 0.1)
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))


@dataclass
class Row:
    """One figure and its baseline; ratio = value / baseline."""

    section: str
    name: str
    unit: str
    value: float
    baseline_name: str
    baseline: float
    better: str  # "higher" or "lower": which direction of value is an improvement
    ratio: float = field(init=False)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ratio = self.value / self.baseline


@dataclass
class Timer:
    """Warm-up calls, then the median seconds of `repeats` timed calls (device synchronized)."""

    device: torch.device
    warmup: int
    repeats: int

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _once(self, fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def __call__(self, fn: Callable[[], Any]) -> float:
        return self.pair(fn)[0]

    def pair(self, *fns: Callable[[], Any]) -> list[float]:
        """Median seconds of each function, timed in alternation (fn, baseline, fn, baseline, …) so
        that a change of load on a shared machine hits both alike; the order rotates every repeat
        so that no function always runs right after the same other one."""
        for _ in range(self.warmup):
            for fn in fns:
                fn()
        self.sync()
        times: list[list[float]] = [[] for _ in fns]
        for r in range(self.repeats):
            for i in [(r + j) % len(fns) for j in range(len(fns))]:
                times[i].append(self._once(fns[i]))
        return [statistics.median(t) for t in times]


# ---------------------------------------------------------------------------------------------
# (a) input pipeline


class _PILDataset(torch.utils.data.Dataset):
    """The same uint8 images served the torchvision way: one PIL image per sample, transformed."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.labels[i])


def bench_pipeline(args: argparse.Namespace, device: torch.device, timer: Timer) -> list[Row]:
    from torchvision import transforms as T

    c, h, w = args.input
    n = args.pipeline_images
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    mean, std, pad = (0.5,) * c, (0.25,) * c, h // 8
    ours = data.TensorLoader(
        images, labels, batch_size=args.batch, shuffle=True, mean=mean, std=std, device=device, crop_padding=pad
    )
    ours.flip = True

    def epoch(loader) -> None:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)

    ours_s = timer(lambda: epoch(ours))
    crop = T.RandomCrop((h, w), padding=pad)
    transform = T.Compose([T.ToPILImage(), crop, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    rows = []
    for workers in args.workers:
        loader = torch.utils.data.DataLoader(
            _PILDataset(images, labels, transform),
            batch_size=args.batch,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=device.type == "cuda",
        )
        # worker start-up is paid in the warm-up epoch (persistent workers); few repeats: it is slow
        base_s = Timer(device, max(1, timer.warmup), max(1, min(timer.repeats, 3)))(partial(epoch, loader))
        rows.append(
            Row("pipeline", "TensorLoader (on device)", "images/s", n / ours_s,
                f"DataLoader+PIL, {workers} workers", n / base_s, "higher",
                info={"images": n, "batch": args.batch, "crop_padding": pad, "flip": True})
        )  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------
# (b) train step, (c) inference


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
    dense = _model(args, device, "none", 1.0)
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

    dense = evaluate(_model(args, device, "none", 1.0))
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


# ---------------------------------------------------------------------------------------------
# (d) end-to-end through train(), and the CPU target


def _train(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """The training app (`python -m cnncomp.train`, its own process) on `overrides`; returns its
    record and the epoch history."""
    command = [sys.executable, "-m", "cnncomp.train", *overrides, f"hydra.run.dir={run_dir}"]
    subprocess.run(command, capture_output=True, text=True, check=False)
    record = json.loads((run_dir / "result.json").read_text())
    if record["status"] != "completed":
        raise RuntimeError(f"bench run {' '.join(overrides)} ended {record['status']}: {record.get('error')}")
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["state"]
    record["history"] = state["history"]
    return record


def _trainer_overrides(args: argparse.Namespace, device: torch.device) -> list[str]:
    return [
        f"trainer.device={device.type}",
        f"trainer.precision={args.precision}",
        f"trainer.channels_last={str(args.channels_last).lower()}",
        f"trainer.compile={str(args.compile).lower()}",
        "trainer.val_fraction=0",
        "logger=none",
    ]


def bench_e2e(args: argparse.Namespace, device: torch.device, timer: Timer, tmp: Path) -> list[Row]:
    c, h, _ = args.input
    steps = args.e2e_steps
    overrides = [
        f"model={args.model}",
        "kernel=none",
        "dataset=synthetic",
        f"dataset.in_channels={c}",
        f"dataset.image_size={h}",
        f"dataset.num_classes={args.classes}",
        f"dataset.num_train={steps * args.batch}",
        f"dataset.num_test={args.batch}",
        f"trainer.batch_size={args.batch}",
        f"trainer.max_epochs={args.e2e_epochs}",
        *_trainer_overrides(args, device),
    ]
    _train([*overrides, "trainer.max_epochs=1", "trainer.limit_train_batches=2"], tmp / "e2e-warmup")
    bare = make_steps(args, device, _model(args, device, "none", 1.0))
    before = timer(bare)
    record = _train(overrides, tmp / "e2e")
    dense_s = (before + timer(bare)) / 2 / args.steps  # the bare step, timed before and after
    # epoch times of the epochs after the first (the first pays allocator/autotune/compile warm-up);
    # with val_fraction=0 an epoch's time is its training pass
    times = [r["epoch_time_s"] for r in record["history"]]
    epoch_s = statistics.median(times[1:] if len(times) > 1 else times)
    images = steps * args.batch
    return [
        Row("e2e", f"epoch through train() ({args.model}, dense)", "images/s", images / epoch_s,
            "bare train step", args.batch / dense_s, "higher",
            info={"epochs": len(times), "epoch_times_s": times, "images_per_epoch": images,
                  "bare_step_ms": 1e3 * dense_s})
    ]  # fmt: skip


def bench_target(args: argparse.Namespace, tmp: Path, timer: Timer) -> list[Row]:
    """LeNet-5 Fashion-MNIST on the CPU: an epoch through train() vs a plain torchvision loop."""
    from torchvision import datasets
    from torchvision import transforms as T

    root = Path(args.data_root).expanduser() if args.data_root else data.default_root()
    try:  # cnncomp prepares (decompresses) the files into root, where torchvision reads them too
        data.build_data(data.DataSpec("fashion_mnist", data.DatasetOptions(root=root, download=False), val_fraction=0))
    except data.DataNotFoundError as err:
        print(f"target: skipped, {err}", file=sys.stderr)
        return []
    batch, limit = args.target_batch, args.target_batches
    cfg = compose_config([])
    lr, wd, momentum = cfg.trainer.lr, cfg.trainer.weight_decay, cfg.trainer.momentum
    overrides = [
        "model=lenet",
        "kernel=none",
        "dataset=fashion_mnist",
        f"dataset.root={root}",
        "dataset.download=false",
        f"trainer.batch_size={batch}",
        "trainer.max_epochs=1",
        "trainer.device=cpu",
        "trainer.precision=32",
        "trainer.val_fraction=0",
        "logger=none",
    ]
    _train([*overrides, "trainer.limit_train_batches=3"], tmp / "target-warmup")
    if limit:
        overrides.append(f"trainer.limit_train_batches={limit}")
    ours = [_train(overrides, tmp / f"target-{i}")["history"][0]["epoch_time_s"] for i in range(args.target_repeats)]

    dataset = datasets.FashionMNIST(
        root, train=True, download=False, transform=T.Compose([T.ToTensor(), T.Normalize(*FASHION_MNIST_STATS)])
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=args.target_workers)
    steps = min(len(loader), limit or len(loader))

    def plain_epoch(steps: int = steps) -> None:  # a tutorial's loop, with the same model and optimizer
        torch.manual_seed(0)
        model = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True, weight_decay=wd)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=steps, pct_start=0.3 if steps == 4 else 0.25
        )
        model.train()
        running = 0.0
        for i, (x, y) in enumerate(loader):
            if i >= steps:
                break
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += loss.item()

    plain_epoch(3)  # warm-up, as train() had its own
    plain_s = Timer(torch.device("cpu"), 0, args.target_repeats)(plain_epoch)
    ours_s = statistics.median(ours)
    return [
        Row("target", "LeNet-5 Fashion-MNIST epoch through train()", "s/epoch", ours_s,
            f"torchvision FashionMNIST+DataLoader ({args.target_workers} workers) loop", plain_s, "lower",
            info={"images": steps * batch if limit else len(dataset), "batch": batch, "ours_s": ours,
                  "threads": torch.get_num_threads()})
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# driver


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]


def _strs(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cnncomp.bench", description=__doc__.split("\n\n")[0])
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
        args.keeps, args.kernels = args.keeps, args.kernels[:1]
        args.target_batches, args.target_repeats = args.target_batches or 4, 1
    return device


def machine(device: torch.device) -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": load,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }


def markdown(rows: list[Row]) -> str:
    lines = [
        "| section | figure | value | baseline | baseline value | ratio | better |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.section} | {r.name} | {_fmt(r.value)} {r.unit} | {r.baseline_name} | "
            f"{_fmt(r.baseline)} {r.unit} | {r.ratio:.3f} | {r.better} |"
        )
    return "\n".join(lines)


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


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
                rows += bench_target(args, Path(tmp), timer)
            else:
                print("target: skipped (it is a CPU target; run with --device cpu)", file=sys.stderr)
    settings = {k: v for k, v in vars(args).items() if k not in ("out",)}
    for r in rows:
        if not (math.isfinite(r.ratio) and r.ratio > 0):
            raise RuntimeError(f"bad ratio in {r}")
    return {"machine": machine(device), "settings": settings, "rows": [asdict(r) for r in rows]}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
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
    return result


if __name__ == "__main__":
    main()
