"""Datasets, train/val/test splits, and loaders that keep uint8 images on the training device.

Every dataset here fits in memory, so it is decoded once into uint8 tensors (N, C, H, W) that live on
the device; augmentation (random crop with zero padding, horizontal flip) and normalization run
batched there, as in airbench, instead of per sample in DataLoader workers.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import multiprocessing
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from torchvision.transforms import functional as TF

from cnncomp.atomic import torch_save, write_bytes

DATASETS = ("cifar10", "cifar100", "fashion_mnist", "imagefolder", "mnist", "synthetic")

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
_AUGMENT_BY_DEFAULT = {"cifar10", "cifar100", "imagefolder"}
_DECODE_CHUNK = 1000


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
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
        self.epoch = 0
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        """Select the order and augmentation of the next iteration."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, (h, w) = self.num_samples, self.images.shape[-2:]
        # Draw on the CPU so the stream is the same on every device; only small index tensors move.
        g = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch))
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        augment = self.crop_padding > 0 or self.flip
        if augment:
            span = 2 * self.crop_padding + 1
            top = torch.randint(span, (n,), generator=g).to(self.device)
            left = torch.randint(span, (n,), generator=g).to(self.device)
            flips = (torch.rand(n, generator=g) < (0.5 if self.flip else 0.0)).to(self.device)
        order = order.to(self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx]
            if augment:
                p = self.crop_padding
                x = _windows(F.pad(x, (p, p, p, p)), top[idx], left[idx], flips[idx], h, w)
            x = x.float().div_(255).sub_(self._mean).div_(self._std)
            yield x, self.labels[idx]


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
    num_classes: int = 10,
    in_channels: int = 1,
    num_train: int = 2000,
    num_test: int = 500,
) -> DataShape:
    """The shape and split sizes `build_data` would give, without reading or decoding any image
    (an image folder is listed and its first image's header read)."""
    if name in _SHAPES:
        return DataShape(*_SHAPES[name])
    if name == "synthetic":
        return DataShape(in_channels, image_size or 28, num_classes, num_train, num_test)
    if name != "imagefolder":
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    source = _imagefolder_source(path)
    train, test = _list_dir(source) if source.is_dir() else _list_tar(source)
    if image_size is None:
        with _open_image(train.files[0]) as first:
            image_size = min(first.size)
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
    num_classes: int = 10,
    in_channels: int = 1,
    num_train: int = 2000,
    num_test: int = 500,
) -> DataSplits:
    """Load dataset `name` and return device-resident train/val/test loaders.

    Validation is a seeded random `val_fraction` of the official training split; test is the
    official test split. `augment=None` uses the dataset's default (crop with padding
    image_size // 8 and flip for colour datasets, none for MNIST-like and synthetic ones).
    `path` is for imagefolder; `num_classes`, `in_channels`, `num_train`, `num_test` for synthetic;
    `image_size` resizes imagefolder images and sets the synthetic size. `num_workers` is kept for
    a streamed path and unused while every dataset fits in memory.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if eval_batch_size is not None and eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    root = Path(root).expanduser() if root is not None else default_root()

    if name in ("fashion_mnist", "mnist"):
        raw = _load_idx(name, root, download)
    elif name in ("cifar10", "cifar100"):
        raw = _load_cifar(name, root, download)
    elif name == "imagefolder":
        raw = _load_imagefolder(path, root, image_size)
    else:
        raw = _make_synthetic(num_classes, in_channels, image_size or 28, num_train, num_test, seed)
    size = raw.train_x.shape[-1]
    if image_size is not None and image_size != size:
        raise ValueError(f"image_size={image_size} but {name} images are {size}x{size}")

    info = DatasetInfo(name, raw.num_classes, raw.train_x.shape[1], size, raw.mean, raw.std)
    train_idx, val_idx = _split(len(raw.train_x), val_fraction, seed)
    if augment is None:
        augment = name in _AUGMENT_BY_DEFAULT
    common = dict(mean=info.mean, std=info.std, device=device)
    # held-out batches come in one fixed seeded order (epoch 0, never advanced): image folders list
    # their images class by class, and `limit_eval_batches` must see a random sample, not one class
    evaluate = dict(batch_size=eval_batch_size or 2 * batch_size, shuffle=True, seed=seed, **common)
    return DataSplits(
        train=TensorLoader(
            raw.train_x[train_idx],
            raw.train_y[train_idx],
            batch_size=batch_size,
            shuffle=True,
            crop_padding=size // 8 if augment else 0,
            flip=augment,
            seed=seed,
            **common,
        ),
        val=TensorLoader(raw.train_x[val_idx], raw.train_y[val_idx], **evaluate),
        test=TensorLoader(raw.test_x, raw.test_y, **evaluate),
        info=info,
    )


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


def _load_imagefolder(path: str | None, root: Path, image_size: int | None) -> _Arrays:
    """Decode an ImageFolder tree (or a tar of one) once, then reuse the cached tensors."""
    source = _imagefolder_source(path)
    stat = source.stat()
    key = hashlib.sha256(f"{source}|{stat.st_size}|{stat.st_mtime_ns}|{image_size}".encode()).hexdigest()
    cache = root / "imagefolder" / f"{key[:20]}.pt"
    if cache.exists():
        arrays = torch.load(cache, weights_only=True)
    else:
        arrays = _decode_splits(*(_list_dir(source) if source.is_dir() else _list_tar(source)), image_size)
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
    if train.classes != test.classes:
        raise ValueError(f"class folders differ: train {train.classes}, test {test.classes}")
    if image_size is None:
        with _open_image(train.files[0]) as first:
            image_size = min(first.size)
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
