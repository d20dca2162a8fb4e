"""Datasets, train/val/test splits, and loaders: in memory on the training device, or streamed from disk.

A dataset that fits in memory is decoded once into uint8 tensors (N, C, H, W) that live on the
device; augmentation (random crop with zero padding, horizontal flip) and normalization run batched
there, as in airbench, instead of per sample in DataLoader workers. Image folders too large for that
(ImageNet) and CUB-200-2011 are streamed from disk: a DataLoader with workers decodes each batch and
applies torchvision's ImageNet transforms (random-resized crop and flip for training, resize and
center crop for evaluation).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import multiprocessing
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import datasets
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from torchvision.transforms import functional as TF

from cnncomp.atomic import torch_save, write_bytes

DATASETS = ("cifar10", "cifar100", "cub200", "fashion_mnist", "imagefolder", "mnist", "synthetic")
# datasets read from image files, decoded into memory or streamed from disk (`stream`)
FOLDER_DATASETS = ("cub200", "imagefolder")

# Debian's `dataset-fashion-mnist` package: the four official IDX files, gzipped.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
# (in_channels, image_size, num_classes, official train size, test size)
_SHAPES = {
    "fashion_mnist": (1, 28, 10, 60_000, 10_000),
    "mnist": (1, 28, 10, 60_000, 10_000),
    "cifar10": (3, 32, 10, 50_000, 10_000),
    "cifar100": (3, 32, 100, 50_000, 10_000),
}
_AUGMENT_BY_DEFAULT = {"cifar10", "cifar100", "cub200", "imagefolder"}
_DECODE_CHUNK = 1000

# Streamed images are normalized with the ImageNet statistics, as torchvision's pretrained models.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STREAM_IMAGE_SIZE = 224  # the image size of a streamed folder when image_size is null
# stream=null streams a folder of at least this many training images, or of images this large (at
# 128 px ImageNet's 1.28M training images take 63 GB as uint8; even its 50k validation images 2.5 GB)
STREAM_MIN_IMAGES = 100_000
STREAM_MIN_SIZE = 128

CUB200_URL = "https://data.caltech.edu/records/65de6-vp158"
_CUB200_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "images")


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


class TensorLoader:
    """Batches from uint8 images held in memory (on the training device), with batched on-device
    augmentation (per-sample random crop with zero padding, horizontal flip) and normalization.

    Order and augmentation are a pure function of (seed, epoch); call `set_epoch` before each epoch
    (as with DistributedSampler) so that a resumed run sees the same batches.

    Data-parallel: `batch_size` is the global batch. Every rank draws the same global order and
    augmentation as a single process and takes its contiguous slice of each global batch
    (`_shards`), so the ranks' step-s batches, concatenated in rank order, are the single-process
    batch s. `num_samples` is the size of the whole split, not of this rank's share.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        shuffle: bool,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        crop_padding: int = 0,
        flip: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        _check_rank(rank, world_size)
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.num_samples = len(images)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.crop_padding = crop_padding
        self.flip = flip
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        """Select the order and augmentation of the next iteration."""
        self.epoch = epoch

    def __len__(self) -> int:
        return _shard_count(self.num_samples, self.batch_size, self.rank, self.world_size, self.drop_last)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, (h, w) = self.num_samples, self.images.shape[-2:]
        # Draw on the CPU so the stream is the same on every device; only small index tensors move.
        order, g = _epoch_order(n, self.shuffle, self.seed, self.epoch)
        augment = self.crop_padding > 0 or self.flip
        if augment:
            span = 2 * self.crop_padding + 1
            top = torch.randint(span, (n,), generator=g).to(self.device)
            left = torch.randint(span, (n,), generator=g).to(self.device)
            flips = (torch.rand(n, generator=g) < (0.5 if self.flip else 0.0)).to(self.device)
        order = order.to(self.device)
        for idx in _shards(order, self.batch_size, self.rank, self.world_size, self.drop_last):
            x = self.images[idx]
            if augment:
                p = self.crop_padding
                x = _windows(F.pad(x, (p, p, p, p)), top[idx], left[idx], flips[idx], h, w)
            x = x.float().div_(255).sub_(self._mean).div_(self._std)
            yield x, self.labels[idx]


class ImageList(torch.utils.data.Dataset):
    """Image files with labels, decoded with PIL (as RGB) and transformed when fetched.

    An item's key is (index, seed): the transform's random draws come from `seed` alone, so
    augmentation does not depend on the DataLoader's workers or on the data-parallel ranks."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        path, label = self.samples[index]
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        # torchvision's random transforms draw from the global CPU generator; seed a fork of it
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.transform(rgb), label


class _ShardedBatches(torch.utils.data.Sampler):
    """Batch sampler over the global order a single process draws for (seed, epoch): this rank's
    slice of every global batch (`_shards`), each index keyed with its own augmentation seed."""

    def __init__(
        self,
        num_samples: int,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        rank: int,
        world_size: int,
    ) -> None:
        _check_rank(rank, world_size)
        self.num_samples, self.batch_size, self.shuffle, self.seed = num_samples, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch = 0

    def __len__(self) -> int:
        return _shard_count(self.num_samples, self.batch_size, self.rank, self.world_size, self.drop_last)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, g = _epoch_order(self.num_samples, self.shuffle, self.seed, self.epoch)
        seeds = torch.randint(2**62, (self.num_samples,), generator=g)
        for idx in _shards(order, self.batch_size, self.rank, self.world_size, self.drop_last):
            yield list(zip(idx.tolist(), seeds[idx].tolist(), strict=True))


class StreamLoader:
    """Batches decoded from image files by a `torch.utils.data.DataLoader` (workers, pinned memory on
    CUDA) and moved to `device`; order and augmentation are a function of (seed, epoch) and sharded
    over data-parallel ranks as in `TensorLoader`."""

    def __init__(
        self,
        dataset: ImageList,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        num_workers: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.num_samples = len(dataset)
        self.batches = _ShardedBatches(
            len(dataset),
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=self.batches,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the order and augmentation of the next iteration."""
        self.batches.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def image_transform(
    image_size: int,
    *,
    train: bool,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """The ImageNet preprocessing of torchvision's reference scripts: for training a random-resized
    crop (Szegedy et al., "Going deeper with convolutions", 2015) and a horizontal flip; for
    evaluation a resize to image_size·256/224 and a center crop. Then ToTensor and Normalize."""
    if train:
        geometry = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        geometry = [T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)]
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(mean, std)])


@dataclass
class DataSplits:
    """Train / validation / test loaders and the dataset's description."""

    train: Iterable
    val: Iterable
    test: Iterable
    info: DatasetInfo


@dataclass(frozen=True)
class DataShape:
    """What a dataset is without its pixels: image shape, classes and split sizes."""

    in_channels: int
    image_size: int
    num_classes: int
    num_train: int  # the official training split, before the validation carve-out
    num_test: int


def describe_data(
    name: str,
    *,
    path: str | None = None,
    image_size: int | None = None,
    stream: bool | None = None,
    num_classes: int = 10,
    in_channels: int = 1,
    num_train: int = 2000,
    num_test: int = 500,
) -> DataShape:
    """The shape and split sizes `build_data` would give, without reading or decoding any image
    (an image folder or CUB-200-2011 is listed, and its first image's header read)."""
    if name in _SHAPES:
        return DataShape(*_SHAPES[name])
    if name == "synthetic":
        return DataShape(in_channels, image_size or 28, num_classes, num_train, num_test)
    if name not in FOLDER_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    source = _folder_source(name, path)
    streamed = _streamed_listing(name, source, image_size, stream)
    train, test = streamed or _list_folder(name, source)
    image_size = image_size or (STREAM_IMAGE_SIZE if streamed else _first_size(train))
    return DataShape(3, image_size, len(train.classes), len(train.files), len(test.files))


def list_datasets() -> list[str]:
    """Names accepted by `build_data`."""
    return list(DATASETS)


def default_root() -> Path:
    """$CNNCOMP_DATA if set, else ~/.cache/cnncomp/data."""
    env = os.environ.get("CNNCOMP_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnncomp" / "data"


def build_data(
    name: str,
    *,
    root: str | Path | None = None,
    batch_size: int = 128,
    eval_batch_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    augment: bool | None = None,
    download: bool = True,
    num_workers: int = 0,
    path: str | None = None,
    image_size: int | None = None,
    stream: bool | None = None,
    num_classes: int = 10,
    in_channels: int = 1,
    num_train: int = 2000,
    num_test: int = 500,
    rank: int = 0,
    world_size: int = 1,
) -> DataSplits:
    """Load dataset `name` and return its train/val/test loaders.

    Validation is a seeded random `val_fraction` of the official training split; test is the
    official test split. `augment=None` uses the dataset's default (crop with padding
    image_size // 8 and flip for colour datasets, none for MNIST-like and synthetic ones).
    `path` is for imagefolder and cub200; `num_classes`, `in_channels`, `num_train`, `num_test` for
    synthetic; `image_size` resizes folder images and sets the synthetic size.

    Folder datasets (imagefolder, cub200) are decoded into memory (`TensorLoader`) or streamed
    from disk (`StreamLoader` with `num_workers` DataLoader workers, `image_transform`, ImageNet
    mean and std; `augment=False` gives training images the evaluation transform).
    `stream=None` streams a directory of at least STREAM_MIN_IMAGES training images, or whose
    image_size (null: the first image's shorter side) is at least STREAM_MIN_SIZE; a streamed
    folder's image_size defaults to 224. An imagefolder archive (.tar, .tar.gz) is always decoded
    into memory: stream=True asks to extract it.

    Data-parallel training (`rank` of `world_size` processes): `batch_size` is the global batch,
    split into world_size equal slices, one per rank, of the order a single process would see
    (same seed, epoch and augmentation draws). With world_size > 1 the training loader drops the
    last incomplete global batch, so every rank takes the same number of equal steps (DDP averages
    the ranks' gradients, which equals the global batch's mean gradient only for equal slices).
    Validation and test loaders keep every image once: each rank takes its slice of every global
    evaluation batch (the last one split as evenly as possible; a rank left with no rows skips it),
    so sums of correct counts and losses over ranks are the single-process totals.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if eval_batch_size is not None and eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    _check_rank(rank, world_size)
    if batch_size % world_size:
        raise ValueError(f"batch_size={batch_size} (the global batch) must be divisible by world_size={world_size}")
    if stream and name not in FOLDER_DATASETS:
        raise ValueError(f"stream=True is for {', '.join(FOLDER_DATASETS)}, not {name!r}")
    root = Path(root).expanduser() if root is not None else default_root()
    if augment is None:
        augment = name in _AUGMENT_BY_DEFAULT
    sharding = dict(rank=rank, world_size=world_size)
    eval_batch_size = eval_batch_size or 2 * batch_size

    if name in ("fashion_mnist", "mnist"):
        raw = _load_idx(name, root, download)
    elif name in ("cifar10", "cifar100"):
        raw = _load_cifar(name, root, download)
    elif name in FOLDER_DATASETS:
        source = _folder_source(name, path)
        streamed = _streamed_listing(name, source, image_size, stream)
        if streamed is not None:
            return _stream_splits(
                name,
                *streamed,
                loader=partial(StreamLoader, seed=seed, device=device, num_workers=num_workers, **sharding),
                image_size=image_size or STREAM_IMAGE_SIZE,
                batch_size=batch_size,
                eval_batch_size=eval_batch_size,
                val_fraction=val_fraction,
                seed=seed,
                augment=augment,
                world_size=world_size,
            )
        raw = _load_folder(name, source, root, image_size)
    else:
        raw = _make_synthetic(num_classes, in_channels, image_size or 28, num_train, num_test, seed)
    size = raw.train_x.shape[-1]
    if image_size is not None and image_size != size:
        raise ValueError(f"image_size={image_size} but {name} images are {size}x{size}")

    info = DatasetInfo(name, raw.num_classes, raw.train_x.shape[1], size, raw.mean, raw.std)
    train_idx, val_idx = _split(len(raw.train_x), val_fraction, seed)
    _check_steps(len(train_idx), batch_size, world_size)
    common = dict(mean=info.mean, std=info.std, device=device, **sharding)
    # held-out batches come in one fixed seeded order (epoch 0, never advanced): image folders list
    # their images class by class, and `limit_eval_batches` must see a random sample, not one class
    evaluate = dict(batch_size=eval_batch_size, shuffle=True, seed=seed, **common)
    return DataSplits(
        train=TensorLoader(
            raw.train_x[train_idx],
            raw.train_y[train_idx],
            batch_size=batch_size,
            shuffle=True,
            crop_padding=size // 8 if augment else 0,
            flip=augment,
            seed=seed,
            drop_last=world_size > 1,
            **common,
        ),
        val=TensorLoader(raw.train_x[val_idx], raw.train_y[val_idx], **evaluate),
        test=TensorLoader(raw.test_x, raw.test_y, **evaluate),
        info=info,
    )


def _stream_splits(
    name: str,
    train: _Split,
    test: _Split,
    *,
    loader: Callable[..., StreamLoader],
    image_size: int,
    batch_size: int,
    eval_batch_size: int,
    val_fraction: float,
    seed: int,
    augment: bool,
    world_size: int,
) -> DataSplits:
    """Streamed loaders over listed image files; validation carved from `train` as in memory."""
    _check_classes(train, test)
    info = DatasetInfo(name, len(train.classes), 3, image_size, IMAGENET_MEAN, IMAGENET_STD)
    train_idx, val_idx = _split(len(train.files), val_fraction, seed)
    _check_steps(len(train_idx), batch_size, world_size)
    fit, held_out = image_transform(image_size, train=augment), image_transform(image_size, train=False)
    evaluate = dict(batch_size=eval_batch_size, shuffle=True)  # one fixed seeded order, as in memory
    return DataSplits(
        train=loader(
            ImageList(_samples(train, train_idx), fit), batch_size=batch_size, shuffle=True, drop_last=world_size > 1
        ),
        val=loader(ImageList(_samples(train, val_idx), held_out), **evaluate),
        test=loader(ImageList(_samples(test, torch.arange(len(test.files))), held_out), **evaluate),
        info=info,
    )


def _samples(split: _Split, indices: torch.Tensor) -> list[tuple[str, int]]:
    return [(split.files[i], split.targets[i]) for i in indices.tolist()]


class _Arrays(NamedTuple):
    """A dataset in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _mix_seed(seed: int, epoch: int) -> int:
    # SeedSequence decorrelates neighbouring (seed, epoch) pairs, unlike seed + epoch.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


def _epoch_order(n: int, shuffle: bool, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Generator]:
    """The order of range(n) for (seed, epoch), and the generator to draw its augmentation from."""
    g = torch.Generator().manual_seed(_mix_seed(seed, epoch))
    return (torch.randperm(n, generator=g) if shuffle else torch.arange(n)), g


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def _check_steps(num_train: int, batch_size: int, world_size: int) -> None:
    """Data-parallel training drops the last incomplete global batch; there must be a complete one."""
    if world_size > 1 and num_train < batch_size:
        raise ValueError(
            f"the training split has {num_train} images, fewer than one global batch of batch_size={batch_size} "
            f"for world_size={world_size}; lower the batch size"
        )


def _shards(
    order: torch.Tensor, batch_size: int, rank: int, world_size: int, drop_last: bool
) -> Iterator[torch.Tensor]:
    """This rank's slices of the global batches of `order`: contiguous, as even as `tensor_split`
    makes them (sizes differ by at most one, lower ranks larger). A rank whose slice of a (last,
    partial) batch is empty skips that step, so it may see one batch fewer than rank 0."""
    stop = len(order) // batch_size * batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        part = order[start : start + batch_size].tensor_split(world_size)[rank]
        if len(part):
            yield part


def _shard_count(num_samples: int, batch_size: int, rank: int, world_size: int, drop_last: bool) -> int:
    """How many batches `_shards` yields: a slice of m rows is empty exactly for ranks >= m."""
    full, rest = divmod(num_samples, batch_size)
    return full * (rank < batch_size) + int(rest > 0 and not drop_last and rank < rest)


def _windows(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """Per-sample h x w windows of x (B, C, H', W') at (top, left), mirrored where `flip`."""
    b, c = x.shape[:2]
    rows = top[:, None] + torch.arange(h, device=x.device)  # (B, h)
    cols = left[:, None] + torch.arange(w, device=x.device)  # (B, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return x[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def _split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random (train, val) index split of range(n), each sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images (N, C, H, W) scaled to [0, 1]."""
    values = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        m = (counts * values).sum() / counts.sum()
        mean.append(m.item())
        std.append(((counts * (values - m) ** 2).sum() / counts.sum()).sqrt().item())
    return tuple(mean), tuple(std)


def _not_found(name: str, root: Path, how: str) -> DataNotFoundError:
    return DataNotFoundError(
        f"Dataset {name!r} was not found under {root}. {how} To use another directory, set "
        f"dataset.root=... (or the CNNCOMP_DATA environment variable; the default is ~/.cache/cnncomp/data)."
    )


def _open_torchvision(cls: type, name: str, root: Path, download: bool, how: str, **kwargs) -> object:
    """Instantiate a torchvision dataset class, downloading only when the files are absent."""
    try:
        return cls(root, download=False, **kwargs)
    except RuntimeError:
        if not download:
            raise _not_found(name, root, how + " Downloading was disabled (download=False).") from None
    try:
        return cls(root, download=True, **kwargs)
    except (OSError, RuntimeError) as e:
        # Offline, urllib fails deep inside torchvision; one readable message is more useful.
        error = " ".join(str(e).split())
        raise _not_found(name, root, f"{how} Downloading failed: {error}.") from None


def _prepare_debian_fashion_mnist(raw_dir: Path) -> None:
    """Decompress Debian's Fashion-MNIST files into torchvision's raw folder, once."""
    for url, _ in datasets.FashionMNIST.resources:
        gz = DEBIAN_FASHION_MNIST / os.path.basename(url)
        target = raw_dir / gz.name.removesuffix(".gz")
        if not target.exists() and gz.exists():
            with gzip.open(gz, "rb") as f:
                write_bytes(target, f.read())


def _load_idx(name: str, root: Path, download: bool) -> _Arrays:
    cls = datasets.FashionMNIST if name == "fashion_mnist" else datasets.MNIST
    raw_dir = root / cls.__name__ / "raw"
    if name == "fashion_mnist":
        _prepare_debian_fashion_mnist(raw_dir)
        how = (
            "Install the official files with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; "
            f"they are read from {DEBIAN_FASHION_MNIST}), put the four decompressed IDX files in "
            f"{raw_dir}, or allow a download on a machine with internet access."
        )
    else:
        how = (
            f"Put the four decompressed IDX files in {raw_dir}, or allow a download on a machine with internet access."
        )
    train = _open_torchvision(cls, name, root, download, how, train=True)
    test = _open_torchvision(cls, name, root, download, how, train=False)
    mean, std = _STATS[name]
    train_x, test_x = train.data.unsqueeze(1), test.data.unsqueeze(1)  # (N, 1, 28, 28)
    return _Arrays(train_x, train.targets.long(), test_x, test.targets.long(), 10, mean, std)


def _load_cifar(name: str, root: Path, download: bool) -> _Arrays:
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    how = (
        f"Put the extracted {cls.base_folder}/ from {cls.url} in {root}, or allow a download on a "
        "machine with internet access. Offline, a JPEG copy in ImageFolder layout works with "
        "dataset=imagefolder and its path."
    )
    train = _open_torchvision(cls, name, root, download, how, train=True)
    test = _open_torchvision(cls, name, root, download, how, train=False)
    mean, std = _STATS[name]

    def nchw(ds: datasets.CIFAR10) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    return _Arrays(*nchw(train), *nchw(test), len(train.classes), mean, std)


def _imagefolder_source(path: str | None) -> Path:
    """The tree or archive `path` names, which must exist."""
    if path is None:
        raise ValueError("dataset 'imagefolder' needs path= (a train/ + test/ or val/ tree, or a tar of one)")
    source = Path(path).expanduser().resolve()
    if not source.exists():
        raise DataNotFoundError(
            f"Dataset 'imagefolder' was not found: {source} does not exist. Pass path= pointing to a "
            "directory with train/<class>/* and test/<class>/* (or val/<class>/*) images, or to a "
            ".tar / .tar.gz of such a directory."
        )
    return source


def _cub200_source(path: str | None) -> Path:
    """The extracted CUB_200_2011 directory `path` names (or its parent), with the official files."""
    how = (
        f"Download CUB_200_2011.tgz (Caltech-UCSD Birds-200-2011, {CUB200_URL}), extract it with "
        "`tar -xzf CUB_200_2011.tgz` and set dataset.path (or CNNCOMP_CUB200) to the CUB_200_2011 directory."
    )
    if path is None:
        raise DataNotFoundError(f"Dataset 'cub200' needs dataset.path. {how}")
    source = Path(path).expanduser().resolve()
    if (source / "CUB_200_2011").is_dir():
        source = source / "CUB_200_2011"
    if source.is_file():
        raise DataNotFoundError(
            f"Dataset 'cub200': {source} is a file; its images are read one by one, so extract the archive first "
            f"(`tar -xzf {source.name}`) and set dataset.path to the extracted CUB_200_2011 directory."
        )
    missing = [name for name in _CUB200_FILES if not (source / name).exists()]
    if missing:
        raise DataNotFoundError(f"Dataset 'cub200' was not found: {source} has no {', '.join(missing)}. {how}")
    return source


def _folder_source(name: str, path: str | None) -> Path:
    return _cub200_source(path) if name == "cub200" else _imagefolder_source(path)


def _list_folder(name: str, source: Path) -> tuple[_Split, _Split]:
    """The listed train and test images of a folder dataset."""
    if name == "cub200":
        return _list_cub200(source)
    return _list_dir(source) if source.is_dir() else _list_tar(source)


def _streamed_listing(
    name: str, source: Path, image_size: int | None, stream: bool | None
) -> tuple[_Split, _Split] | None:
    """The listed train and test images when the folder is streamed from disk, None when it is
    decoded into memory (see `build_data` for the rule)."""
    if stream is False:
        return None
    if not source.is_dir():  # an imagefolder archive: cub200 sources are directories
        if stream:
            raise ValueError(
                f"stream=True reads images one by one from a directory, but {source} is an archive: extract it "
                "(`tar -xf`) and set dataset.path to the directory, or set dataset.stream=false to decode it"
            )
        return None
    train, test = _list_folder(name, source)
    large = len(train.files) >= STREAM_MIN_IMAGES or (image_size or _first_size(train)) >= STREAM_MIN_SIZE
    return (train, test) if stream or large else None


def _load_folder(name: str, source: Path, root: Path, image_size: int | None) -> _Arrays:
    """Decode a folder dataset (an ImageFolder tree or a tar of one, CUB-200-2011) once, then reuse
    the cached tensors under root/<name>/."""
    stat = source.stat()
    key = hashlib.sha256(f"{source}|{stat.st_size}|{stat.st_mtime_ns}|{image_size}".encode()).hexdigest()
    cache = root / name / f"{key[:20]}.pt"
    if cache.exists():
        arrays = torch.load(cache, weights_only=True)
    else:
        arrays = _decode_splits(*_list_folder(name, source), image_size)
        torch_save(cache, arrays)
    return _Arrays(
        arrays["train_x"],
        arrays["train_y"],
        arrays["test_x"],
        arrays["test_y"],
        len(arrays["classes"]),
        tuple(arrays["mean"]),
        tuple(arrays["std"]),
    )


def _read_table(file: Path) -> dict[int, str]:
    """The '<id> <value>' lines of a CUB-200-2011 metadata file."""
    rows = (line.split(maxsplit=1) for line in file.read_text().splitlines() if line.strip())
    return {int(key): value.strip() for key, value in rows}


def _list_cub200(source: Path) -> tuple[_Split, _Split]:
    """The official train and test split of CUB-200-2011 (Wah et al., "The Caltech-UCSD
    Birds-200-2011 dataset", 2011) in images.txt order; labels 0-based from image_class_labels.txt."""
    paths = _read_table(source / "images.txt")
    labels = _read_table(source / "image_class_labels.txt")
    is_train = _read_table(source / "train_test_split.txt")
    names = _read_table(source / "classes.txt")
    classes = [names[k] for k in sorted(names)]
    for table, rows in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
        if rows.keys() != paths.keys():
            raise ValueError(f"cub200: the image ids of {source / table} differ from those of images.txt")
    bad = {v for v in labels.values() if not 1 <= int(v) <= len(classes)} | (set(is_train.values()) - {"0", "1"})
    if bad:
        raise ValueError(f"cub200: values {sorted(bad)} in {source}: labels must be 1..{len(classes)}, splits 0 or 1")
    files = {i: str(source / "images" / p) for i, p in paths.items()}
    missing = [f for f in files.values() if not os.path.isfile(f)]
    if missing:
        raise DataNotFoundError(
            f"Dataset 'cub200': {len(missing)} images listed in images.txt are missing, e.g. {missing[0]}. "
            f"Extract the whole CUB_200_2011.tgz ({CUB200_URL})."
        )

    def split(flag: str) -> _Split:
        ids = [i for i in paths if is_train[i] == flag]
        return _Split([files[i] for i in ids], [int(labels[i]) - 1 for i in ids], classes)

    return split("1"), split("0")


class _Split(NamedTuple):
    """Image files of one split in ImageFolder order: paths, or contents read from a tar."""

    files: list[str] | list[bytes]
    targets: list[int]
    classes: list[str]


def _list_dir(source: Path) -> tuple[_Split, _Split]:
    """The train and test (or val) splits of a directory tree, possibly one folder down."""
    if not (source / "train").is_dir():
        subdirs = [d for d in source.iterdir() if d.is_dir()]
        source = subdirs[0] if len(subdirs) == 1 else source
    splits = [source / name for name in ("train", "test", "val") if (source / name).is_dir()]
    if len(splits) < 2 or splits[0].name != "train":
        raise DataNotFoundError(f"Dataset 'imagefolder': {source} needs train/ and test/ (or val/) folders.")
    folders = [datasets.ImageFolder(d) for d in splits[:2]]
    return tuple(_Split([p for p, _ in f.samples], f.targets, f.classes) for f in folders)


def _list_tar(source: Path) -> tuple[_Split, _Split]:
    """Like `_list_dir` for a tar archive, read into memory in one pass (extracting 60k small files
    takes longer than decoding them)."""
    if not tarfile.is_tarfile(source):
        raise DataNotFoundError(f"Dataset 'imagefolder': {source} is neither a directory nor a tar archive.")
    contents = {}  # path parts -> file bytes
    with tarfile.open(source, "r|*") as tar:
        for member in tar:
            if member.isfile() and has_file_allowed_extension(member.name, IMG_EXTENSIONS):
                contents[PurePosixPath(member.name).parts] = tar.extractfile(member).read()
    tops = {parts[0] for parts in contents}
    depth = 0 if "train" in tops or len(tops) != 1 else 1  # a single top-level folder is skipped
    names = {parts[depth] for parts in contents if len(parts) > depth + 2}
    if "train" not in names or not names & {"test", "val"}:
        raise DataNotFoundError(f"Dataset 'imagefolder': {source} needs train/ and test/ (or val/) folders.")

    def split(name: str) -> _Split:
        # ImageFolder order: sorted classes, then sorted paths within a class.
        items = sorted((p[depth + 1], p) for p in contents if len(p) > depth + 2 and p[depth] == name)
        classes = sorted({c for c, _ in items})
        index = {c: i for i, c in enumerate(classes)}
        return _Split([contents[p] for _, p in items], [index[c] for c, _ in items], classes)

    return split("train"), split("test" if "test" in names else "val")


def _decode_splits(train: _Split, test: _Split, image_size: int | None) -> dict:
    """Decode both splits into uint8 tensors (N, 3, S, S), with classes and training-set channel stats."""
    _check_classes(train, test)
    image_size = image_size or _first_size(train)
    images = _decode_images(train.files + test.files, image_size)
    train_x, test_x = images.split([len(train.files), len(test.files)])
    mean, std = _channel_stats(train_x)
    return {
        "train_x": train_x,
        "train_y": torch.tensor(train.targets),
        "test_x": test_x,
        "test_y": torch.tensor(test.targets),
        "classes": train.classes,
        "mean": list(mean),
        "std": list(std),
    }


def _check_classes(train: _Split, test: _Split) -> None:
    if train.classes != test.classes:
        raise ValueError(f"class folders differ: train {train.classes}, test {test.classes}")


def _first_size(split: _Split) -> int:
    """The shorter side of the split's first image, read from its header."""
    with _open_image(split.files[0]) as first:
        return min(first.size)


def _open_image(file: str | bytes) -> Image.Image:
    return Image.open(io.BytesIO(file) if isinstance(file, bytes) else file)


def _decode_images(files: list[str] | list[bytes], size: int) -> torch.Tensor:
    """Decode image files into uint8 (N, 3, size, size), in chunks over all CPU cores."""
    chunks = [files[i : i + _DECODE_CHUNK] for i in range(0, len(files), _DECODE_CHUNK)]
    decode = partial(_decode_chunk, size=size)
    if len(chunks) > 1:
        # spawn, not fork: forking a process that runs threads (torch, loggers) can copy a held lock
        # into the workers and hang the pool
        with multiprocessing.get_context("spawn").Pool(min(os.cpu_count() or 1, len(chunks))) as pool:
            parts = pool.map(decode, chunks)
    else:
        parts = [decode(chunk) for chunk in chunks]
    return torch.from_numpy(np.concatenate(parts)).permute(0, 3, 1, 2).contiguous()


def _decode_chunk(files: list[str] | list[bytes], size: int) -> np.ndarray:
    """RGB uint8 (n, size, size, 3); other sizes are resized (shorter side) and center-cropped."""
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, file in enumerate(files):
        with _open_image(file) as img:
            rgb = img.convert("RGB")
        if rgb.size != (size, size):
            rgb = TF.center_crop(TF.resize(rgb, size), size)
        out[i] = np.asarray(rgb)
    return out


def _make_synthetic(num_classes: int, in_channels: int, size: int, num_train: int, num_test: int, seed: int) -> _Arrays:
    """Class prototypes (smooth random patterns) plus noise and a small random shift, as uint8."""
    g = torch.Generator().manual_seed(seed)
    shift, noise, contrast = 2, 3.0, 12  # noise 3x the prototype's std: learnable, not trivial
    # Upsampling a 4x4 random grid gives patterns a small shift leaves recognizable.
    coarse = torch.randn(num_classes, in_channels, 4, 4, generator=g)
    protos = F.interpolate(coarse, size=(size + 2 * shift,) * 2, mode="bilinear", align_corners=False)
    protos /= protos.std(dim=(1, 2, 3), keepdim=True)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        top, left = torch.randint(2 * shift + 1, (2, n), generator=g)
        x = _windows(protos[y], top, left, torch.zeros(n, dtype=torch.bool), size, size)
        x = x + noise * torch.randn(x.shape, generator=g)
        return (128 + contrast * x).round().clamp(0, 255).to(torch.uint8), y

    train_x, train_y = sample(num_train)
    test_x, test_y = sample(num_test)
    return _Arrays(train_x, train_y, test_x, test_y, num_classes, *_channel_stats(train_x))
