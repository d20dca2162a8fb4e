"""Datasets, train/val/test splits, and loaders: in memory on the training device, or streamed from disk.

A dataset that fits in memory is decoded once into uint8 tensors (N, C, H, W) that live on the
device; augmentation (random crop with zero padding, horizontal flip) and normalization run batched
there, as in airbench, instead of per sample in DataLoader workers. Image folders too large for that
(ImageNet) and CUB-200-2011 are streamed from disk: a DataLoader with workers decodes each batch and
applies torchvision's ImageNet transforms (random-resized crop and flip for training, resize and
center crop for evaluation).

The package: `catalog` (names, shapes, statistics), `spec` (`DataSpec`), `readers` (torchvision
datasets), `folders` and `decode` (image folders, CUB-200-2011), `synthetic`, `sampling` (seeded
splits, orders and data-parallel shards), `tensor_loader` and `streamed` (the two loaders).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

import torch

from cnncomp.data.catalog import (
    DATASETS,
    FOLDER_DATASETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SHAPES,
    TORCHVISION_DATASETS,
    DataNotFoundError,
    DatasetInfo,
    DataShape,
    default_root,
    list_datasets,
)
from cnncomp.data.decode import load_folder
from cnncomp.data.folders import (
    STREAM_IMAGE_SIZE,
    STREAM_MIN_IMAGES,
    STREAM_MIN_SIZE,
    Split,
    check_classes,
    first_size,
    folder_source,
    list_folder,
    streamed_listing,
)
from cnncomp.data.readers import DEBIAN_FASHION_MNIST, load_torchvision
from cnncomp.data.sampling import check_steps, split_indices
from cnncomp.data.spec import DatasetOptions, DataSpec
from cnncomp.data.streamed import ImageList, StreamLoader, image_transform
from cnncomp.data.synthetic import make_synthetic
from cnncomp.data.tensor_loader import TensorLoader

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "FOLDER_DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "STREAM_IMAGE_SIZE",
    "STREAM_MIN_IMAGES",
    "STREAM_MIN_SIZE",
    "DataNotFoundError",
    "DataShape",
    "DataSpec",
    "DataSplits",
    "DatasetInfo",
    "DatasetOptions",
    "ImageList",
    "StreamLoader",
    "TensorLoader",
    "build_data",
    "default_root",
    "describe_data",
    "image_transform",
    "list_datasets",
]


@dataclass
class DataSplits:
    """Train / validation / test loaders and the dataset's description."""

    train: Iterable
    val: Iterable
    test: Iterable
    info: DatasetInfo


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
    if name in SHAPES:
        return SHAPES[name]
    if name == "synthetic":
        return DataShape(in_channels, image_size or 28, num_classes, num_train, num_test)
    if name not in FOLDER_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    source = folder_source(name, path)
    streamed = streamed_listing(name, source, image_size, stream)
    train, test = streamed or list_folder(name, source)
    image_size = image_size or (STREAM_IMAGE_SIZE if streamed else first_size(train))
    return DataShape(3, image_size, len(train.classes), len(train.files), len(test.files))


def build_data(spec: DataSpec, *, device: str | torch.device = "cpu") -> DataSplits:
    """Load dataset `spec.name` and return its train/val/test loaders on `device`.

    Validation is a seeded random `spec.val_fraction` of the official training split; test is the
    official test split. `options.augment=None` uses the dataset's default (crop with padding
    image_size // 8 and flip for colour datasets, none for MNIST-like and synthetic ones).
    `options.path` is for imagefolder and cub200; `num_classes`, `in_channels`, `num_train`,
    `num_test` for synthetic; `image_size` resizes folder images and sets the synthetic size.

    Folder datasets (imagefolder, cub200) are decoded into memory (`TensorLoader`) or streamed
    from disk (`StreamLoader` with `spec.num_workers` DataLoader workers, `image_transform`, ImageNet
    mean and std; `augment=False` gives training images the evaluation transform).
    `stream=None` streams a directory of at least STREAM_MIN_IMAGES training images, or whose
    image_size (null: the first image's shorter side) is at least STREAM_MIN_SIZE; a streamed
    folder's image_size defaults to 224. An imagefolder archive (.tar, .tar.gz) is always decoded
    into memory: stream=True asks to extract it.

    Nothing is written under `spec.root` but a download (torchvision datasets, removed again if it
    fails), Debian's Fashion-MNIST files decompressed for torchvision, and a decoded folder's cache.

    Data-parallel training (`rank` of `world_size` processes): `batch_size` is the global batch,
    split into world_size equal slices, one per rank, of the order a single process would see
    (same seed, epoch and augmentation draws). With world_size > 1 the training loader drops the
    last incomplete global batch, so every rank takes the same number of equal steps (DDP averages
    the ranks' gradients, which equals the global batch's mean gradient only for equal slices).
    Validation and test loaders keep every image once: each rank takes its slice of every global
    evaluation batch (the last one split as evenly as possible; a rank left with no rows skips it),
    so sums of correct counts and losses over ranks are the single-process totals.
    """
    name, o = spec.name, spec.options
    if name in TORCHVISION_DATASETS:
        raw = load_torchvision(name, spec.root, o.download)
    elif name in FOLDER_DATASETS:
        source = folder_source(name, o.path)
        streamed = streamed_listing(name, source, o.image_size, o.stream)
        if streamed is not None:
            return _stream_splits(spec, *streamed, device=device)
        raw = load_folder(name, source, spec.root, o.image_size)
    else:
        raw = make_synthetic(o.num_classes, o.in_channels, o.image_size or 28, o.num_train, o.num_test, spec.seed)
    size = raw.train_x.shape[-1]
    if o.image_size is not None and o.image_size != size:
        raise ValueError(f"image_size={o.image_size} but {name} images are {size}x{size}")

    info = DatasetInfo(name, raw.num_classes, raw.train_x.shape[1], size, raw.mean, raw.std)
    train_idx, val_idx = split_indices(len(raw.train_x), spec.val_fraction, spec.seed)
    check_steps(len(train_idx), spec.batch_size, spec.world_size)
    common = dict(mean=info.mean, std=info.std, device=device, rank=spec.rank, world_size=spec.world_size)
    # held-out batches come in one fixed seeded order (epoch 0, never advanced): image folders list
    # their images class by class, and `limit_eval_batches` must see a random sample, not one class
    evaluate = dict(batch_size=spec.held_out_batch_size, shuffle=True, seed=spec.seed, **common)
    augment = spec.augment
    return DataSplits(
        train=TensorLoader(
            raw.train_x[train_idx],
            raw.train_y[train_idx],
            batch_size=spec.batch_size,
            shuffle=True,
            crop_padding=size // 8 if augment else 0,
            flip=augment,
            seed=spec.seed,
            drop_last=spec.world_size > 1,
            **common,
        ),
        val=TensorLoader(raw.train_x[val_idx], raw.train_y[val_idx], **evaluate),
        test=TensorLoader(raw.test_x, raw.test_y, **evaluate),
        info=info,
    )


def _stream_splits(spec: DataSpec, train: Split, test: Split, *, device: str | torch.device) -> DataSplits:
    """Streamed loaders over listed image files; validation carved from `train` as in memory."""
    check_classes(train, test)
    image_size = spec.options.image_size or STREAM_IMAGE_SIZE
    info = DatasetInfo(spec.name, len(train.classes), 3, image_size, IMAGENET_MEAN, IMAGENET_STD)
    train_idx, val_idx = split_indices(len(train.files), spec.val_fraction, spec.seed)
    check_steps(len(train_idx), spec.batch_size, spec.world_size)
    fit, held_out = image_transform(image_size, train=spec.augment), image_transform(image_size, train=False)
    loader = partial(
        StreamLoader,
        seed=spec.seed,
        device=device,
        num_workers=spec.num_workers,
        rank=spec.rank,
        world_size=spec.world_size,
    )
    evaluate = dict(batch_size=spec.held_out_batch_size, shuffle=True)  # one fixed seeded order, as in memory
    return DataSplits(
        train=loader(
            ImageList(_samples(train, train_idx), fit),
            batch_size=spec.batch_size,
            shuffle=True,
            drop_last=spec.world_size > 1,
        ),
        val=loader(ImageList(_samples(train, val_idx), held_out), **evaluate),
        test=loader(ImageList(_samples(test, torch.arange(len(test.files))), held_out), **evaluate),
        info=info,
    )


def _samples(split: Split, indices: torch.Tensor) -> list[tuple[str, int]]:
    return [(split.files[i], split.targets[i]) for i in indices.tolist()]
