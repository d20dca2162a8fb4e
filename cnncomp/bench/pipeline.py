"""The `pipeline` section: our `TensorLoader` (uint8 on the device, batched crop/flip/normalize)
against a torchvision `DataLoader` with PIL transforms over the same uint8 images, in images/s."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial

import torch

import cnncomp.data as data
from cnncomp.bench.timer import Row, Timer


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
