"""The sections that train through the training app (`python -m cnncomp.train`, run in its own
process; the bench never imports it):

- e2e:    training images/s of an epoch through train() (on synthetic data) against the bare step
  (framework overhead);
- target: a LeNet-5 Fashion-MNIST epoch through train() against a plain torchvision
  `datasets.FashionMNIST` + `DataLoader` + ToTensor/Normalize loop, same model and optimizer."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import cnncomp.data as data
from cnncomp.bench.step import dense_model, make_steps
from cnncomp.bench.timer import Row, Timer
from cnncomp.config import compose_config
from cnncomp.models import build_model

FASHION_MNIST_STATS = ((0.2860,), (0.3530,))


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
    bare = make_steps(args, device, dense_model(args, device))
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


def bench_target(args: argparse.Namespace, tmp: Path) -> list[Row]:
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
