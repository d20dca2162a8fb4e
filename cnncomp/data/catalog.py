"""The dataset catalog: names, known shapes, normalization statistics, and the types datasets are described by."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

DATASETS = ("cifar10", "cifar100", "cub200", "fashion_mnist", "imagefolder", "mnist", "synthetic")
# datasets read with torchvision's dataset classes (found, or downloaded, under the root)
TORCHVISION_DATASETS = ("cifar10", "cifar100", "fashion_mnist", "mnist")
# datasets read from image files, decoded into memory or streamed from disk (`stream`)
FOLDER_DATASETS = ("cub200", "imagefolder")
# augmented (random crop with padding and flip, or random-resized crop when streamed) unless augment=False
AUGMENT_BY_DEFAULT = frozenset({"cifar10", "cifar100", "cub200", "imagefolder"})

# Normalization (mean, std) per channel of the torchvision datasets' training splits; folder and
# synthetic datasets are normalized with the exact statistics of their training images (`channel_stats`)
STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
# Streamed images are normalized with the ImageNet statistics, as torchvision's pretrained models.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataNotFoundError(RuntimeError):
    """The dataset's files are not on disk and could not be fetched."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class DataShape:
    """What a dataset is without its pixels: image shape, classes and split sizes."""

    in_channels: int
    image_size: int
    num_classes: int
    num_train: int  # the official training split, before the validation carve-out
    num_test: int


# The shapes of the torchvision datasets, known without reading them.
SHAPES = {
    "fashion_mnist": DataShape(1, 28, 10, 60_000, 10_000),
    "mnist": DataShape(1, 28, 10, 60_000, 10_000),
    "cifar10": DataShape(3, 32, 10, 50_000, 10_000),
    "cifar100": DataShape(3, 32, 100, 50_000, 10_000),
}


class Arrays(NamedTuple):
    """A dataset in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def list_datasets() -> list[str]:
    """Names accepted by `build_data`."""
    return list(DATASETS)


def default_root() -> Path:
    """$CNNCOMP_DATA if set, else ~/.cache/cnncomp/data."""
    env = os.environ.get("CNNCOMP_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnncomp" / "data"


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images (N, C, H, W) scaled to [0, 1]."""
    values = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        m = (counts * values).sum() / counts.sum()
        mean.append(m.item())
        std.append(((counts * (values - m) ** 2).sum() / counts.sum()).sqrt().item())
    return tuple(mean), tuple(std)
