"""The torchvision datasets (MNIST, Fashion-MNIST, CIFAR-10/100): found under the root, or downloaded there.

Nothing is created under the root unless a download starts (or Debian's Fashion-MNIST files are
decompressed into it); a download that fails removes the directories it created.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import torch
from torchvision import datasets

from cnncomp.atomic import write_bytes
from cnncomp.data.catalog import STATS, Arrays, DataNotFoundError

# Debian's `dataset-fashion-mnist` package: the four official IDX files, gzipped.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def load_torchvision(name: str, root: Path, download: bool) -> Arrays:
    """mnist, fashion_mnist, cifar10 or cifar100 as uint8 tensors."""
    return _load_idx(name, root, download) if name in ("fashion_mnist", "mnist") else _load_cifar(name, root, download)


def _not_found(name: str, root: Path, how: str) -> DataNotFoundError:
    return DataNotFoundError(
        f"Dataset {name!r} was not found under {root}. {how} To use another directory, set "
        f"dataset.root=... (or the CNNCOMP_DATA environment variable; the default is ~/.cache/cnncomp/data)."
    )


def _outermost_missing(path: Path) -> Path | None:
    """The outermost of `path` and its ancestors that does not exist; None when `path` exists."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def _open_torchvision(cls: type, name: str, root: Path, download: bool, how: str, *, folder: Path, **kwargs) -> object:
    """Instantiate a torchvision dataset class, downloading only when the files are absent. `folder`
    is the directory a download writes into; what it creates of it is removed if the download fails."""
    try:
        return cls(root, download=False, **kwargs)
    except RuntimeError:
        if not download:
            raise _not_found(name, root, how + " Downloading was disabled (download=False).") from None
    created = _outermost_missing(folder)
    try:
        return cls(root, download=True, **kwargs)
    except (OSError, RuntimeError) as e:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
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


def _load_idx(name: str, root: Path, download: bool) -> Arrays:
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
    train = _open_torchvision(cls, name, root, download, how, folder=raw_dir, train=True)
    test = _open_torchvision(cls, name, root, download, how, folder=raw_dir, train=False)
    mean, std = STATS[name]
    train_x, test_x = train.data.unsqueeze(1), test.data.unsqueeze(1)  # (N, 1, 28, 28)
    return Arrays(train_x, train.targets.long(), test_x, test.targets.long(), 10, mean, std)


def _load_cifar(name: str, root: Path, download: bool) -> Arrays:
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    how = (
        f"Put the extracted {cls.base_folder}/ from {cls.url} in {root}, or allow a download on a "
        "machine with internet access. Offline, a JPEG copy in ImageFolder layout works with "
        "dataset=imagefolder and its path."
    )
    train = _open_torchvision(cls, name, root, download, how, folder=root, train=True)
    test = _open_torchvision(cls, name, root, download, how, folder=root, train=False)
    mean, std = STATS[name]

    def nchw(ds: datasets.CIFAR10) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    return Arrays(*nchw(train), *nchw(test), len(train.classes), mean, std)
