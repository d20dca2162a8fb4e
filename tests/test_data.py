"""Datasets and loaders: real Fashion-MNIST, readers on files in the official formats, augmentation."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import re
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import datasets
from torchvision.transforms import functional as TF

from cnncomp import data
from cnncomp.data import (
    DataNotFoundError,
    DatasetOptions,
    DataSpec,
    TensorLoader,
    build_data,
    decode,
    list_datasets,
    readers,
)
from cnncomp.train import train


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _rgb(n: int, seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


# ---------------------------------------------------------------- real Fashion-MNIST


def test_fashion_mnist_real(tmp_path: Path) -> None:
    if not (data.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI"):
            pytest.fail(f"{data.DEBIAN_FASHION_MNIST} missing: apt-get install dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    splits = build_data(
        DataSpec("fashion_mnist", DatasetOptions(root=tmp_path, download=False), batch_size=2000, val_fraction=0.1)
    )
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert (splits.train.num_samples, splits.val.num_samples, splits.test.num_samples) == (54000, 6000, 10000)
    assert splits.info == data.DatasetInfo("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,))
    assert splits.train.crop_padding == 0 and not splits.train.flip  # no augmentation by default

    # train and val partition the official training split
    official = datasets.FashionMNIST(tmp_path, train=True).data
    assert splits.train.images.sum() + splits.val.images.sum() == official.sum()

    total, total_sq, count = 0.0, 0.0, 0
    for x, y in splits.train:
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
        total += x.double().sum().item()
        total_sq += x.double().square().sum().item()
        count += x.numel()
    mean = total / count
    assert abs(mean) < 0.01
    assert abs((total_sq / count - mean**2) ** 0.5 - 1) < 0.01
    test_labels = torch.cat([y for _, y in splits.test])
    assert torch.bincount(test_labels).tolist() == [1000] * 10


# ---------------------------------------------------------------- readers on official formats


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    path.write_bytes(struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.tobytes())


def test_mnist_reader_on_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    written = {}
    for split, n in (("train", 12), ("t10k", 5)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        _write_idx(raw / f"{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
        written[split] = (torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long())

    splits = build_data(DataSpec("mnist", DatasetOptions(root=tmp_path, download=False), val_fraction=0))
    assert torch.equal(splits.train.images, written["train"][0])
    assert torch.equal(splits.train.labels, written["train"][1])
    assert torch.equal(splits.test.images, written["t10k"][0])
    assert torch.equal(splits.test.labels, written["t10k"][1])
    assert splits.info.mean == (0.1307,) and splits.val.num_samples == 0 and len(splits.val) == 0

    # a seeded split into disjoint train and val that together give back every training image
    halves = build_data(DataSpec("mnist", DatasetOptions(root=tmp_path, download=False), val_fraction=0.5, seed=3))
    both = torch.cat([halves.train.images, halves.val.images]).flatten(1)
    assert halves.train.num_samples == halves.val.num_samples == 6
    assert sorted(map(bytes, both.numpy())) == sorted(map(bytes, written["train"][0].flatten(1).numpy()))
    again = build_data(DataSpec("mnist", DatasetOptions(root=tmp_path, download=False), val_fraction=0.5, seed=3))
    assert torch.equal(again.val.images, halves.val.images)

    with pytest.raises(ValueError, match="image_size=32"):
        build_data(DataSpec("mnist", DatasetOptions(root=tmp_path, image_size=32, download=False)))


def _write_cifar(root: Path, cifar100: bool, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Tiny CIFAR files in the official pickle layout; the md5s torchvision checks are patched in."""
    cls = datasets.CIFAR100 if cifar100 else datasets.CIFAR10
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    label_key, num_classes = ("fine_labels", 100) if cifar100 else ("labels", 10)
    names = [name for name, _ in cls.train_list + cls.test_list]
    written = {}
    for i, name in enumerate(names):
        images = _rgb(3, seed=i)
        labels = np.random.default_rng(100 + i).integers(0, num_classes, len(images)).tolist()
        entry = {"data": images.reshape(len(images), -1), label_key: labels}
        if cifar100:
            entry["coarse_labels"] = [label // 5 for label in labels]
        (folder / name).write_bytes(pickle.dumps(entry))
        written[name] = (images, labels)
    meta_key = cls.meta["key"]
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({meta_key: [f"class{c}" for c in range(num_classes)]}))

    def md5s(listing: list) -> list:
        return [[name, _md5(folder / name)] for name, _ in listing]

    monkeypatch.setattr(cls, "train_list", md5s(cls.train_list))
    monkeypatch.setattr(cls, "test_list", md5s(cls.test_list))
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})
    train = [written[name] for name, _ in cls.train_list]
    test = [written[name] for name, _ in cls.test_list]
    return {
        "train": (np.concatenate([x for x, _ in train]), sum((y for _, y in train), [])),
        "test": (np.concatenate([x for x, _ in test]), sum((y for _, y in test), [])),
    }


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reader_on_pickles(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = _write_cifar(tmp_path, name == "cifar100", monkeypatch)
    splits = build_data(DataSpec(name, DatasetOptions(root=tmp_path, download=False), val_fraction=0, batch_size=4))
    for loader, split in ((splits.train, "train"), (splits.test, "test")):
        images, labels = written[split]
        assert torch.equal(loader.images, torch.from_numpy(images))  # NCHW as written
        assert loader.labels.tolist() == labels
    assert splits.info.num_classes == (100 if name == "cifar100" else 10)
    assert (splits.info.in_channels, splits.info.image_size) == (3, 32)
    # crop (padding 4) + flip for training only; evaluation batches are twice as large
    assert (splits.train.crop_padding, splits.train.flip) == (4, True)
    assert (splits.test.crop_padding, splits.test.flip, splits.test.batch_size) == (0, False, 8)
    plain = build_data(DataSpec(name, DatasetOptions(root=tmp_path, augment=False, download=False)))
    assert (plain.train.crop_padding, plain.train.flip) == (0, False)


# ---------------------------------------------------------------- imagefolder


def _write_tree(root: Path, counts: dict[str, dict[str, int]], size: int = 8) -> dict[str, list]:
    """PNG tree root/<split>/<class>/<i>.png; returns the images per split in ImageFolder order."""
    rng = np.random.default_rng(0)
    expected = {}
    for split, per_class in counts.items():
        expected[split] = []
        for label, cls in enumerate(sorted(per_class)):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class[cls]):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i:03d}.png")
                expected[split].append((pixels, label))
    return expected


COUNTS = {"train": {"cat": 3, "dog": 2, "emu": 4}, "test": {"cat": 1, "dog": 2, "emu": 1}}


def _check_folder(splits: data.DataSplits, expected: dict[str, list]) -> None:
    assert splits.info.num_classes == 3 and splits.info.in_channels == 3 and splits.info.image_size == 8
    for loader, split in ((splits.train, "train"), (splits.test, "test")):
        images = torch.from_numpy(np.stack([p for p, _ in expected[split]])).permute(0, 3, 1, 2)
        assert torch.equal(loader.images, images)  # PNG is lossless
        assert loader.labels.tolist() == [label for _, label in expected[split]]
    train = torch.from_numpy(np.stack([p for p, _ in expected["train"]])).double() / 255
    assert np.allclose(splits.info.mean, train.mean(dim=(0, 1, 2)).numpy())
    assert np.allclose(splits.info.std, train.std(dim=(0, 1, 2), unbiased=False).numpy())


def test_imagefolder_tree_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _write_tree(tmp_path / "tree", COUNTS)
    monkeypatch.setattr(decode, "_DECODE_CHUNK", 4)  # several chunks: goes through the process pool
    splits = build_data(
        DataSpec("imagefolder", DatasetOptions(path=str(tmp_path / "tree"), root=tmp_path / "cache"), val_fraction=0)
    )
    _check_folder(splits, expected)
    assert (splits.train.crop_padding, splits.train.flip) == (1, True)  # padding image_size // 8
    (cache,) = (tmp_path / "cache" / "imagefolder").glob("*.pt")

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(decode, "_decode_images", no_decoding)
    mtime = cache.stat().st_mtime_ns
    _check_folder(
        build_data(
            DataSpec(
                "imagefolder", DatasetOptions(path=str(tmp_path / "tree"), root=tmp_path / "cache"), val_fraction=0
            )
        ),
        expected,
    )
    assert cache.stat().st_mtime_ns == mtime


def test_imagefolder_tar_with_top_folder_and_val(tmp_path: Path) -> None:
    expected = _write_tree(tmp_path / "tree" / "top", {"train": COUNTS["train"], "val": COUNTS["test"]})
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "top", arcname="top")
    splits = build_data(
        DataSpec("imagefolder", DatasetOptions(path=str(archive), root=tmp_path / "cache"), val_fraction=0)
    )
    _check_folder(splits, {"train": expected["train"], "test": expected["val"]})
    assert len(list((tmp_path / "cache" / "imagefolder").glob("*.pt"))) == 1


def test_imagefolder_resizes(tmp_path: Path) -> None:
    expected = _write_tree(tmp_path / "tree", COUNTS)
    splits = build_data(
        DataSpec("imagefolder", DatasetOptions(path=str(tmp_path / "tree"), root=tmp_path, image_size=5))
    )
    assert splits.info.image_size == 5 and splits.test.images.shape == (4, 3, 5, 5)
    reference = TF.center_crop(TF.resize(Image.fromarray(expected["test"][0][0]), 5), 5)
    assert torch.equal(splits.test.images[0], torch.from_numpy(np.array(reference)).permute(2, 0, 1))


def test_imagefolder_missing_path(tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError, match=re.escape(f"{nowhere} does not exist")):
        build_data(DataSpec("imagefolder", DatasetOptions(path=str(nowhere), root=tmp_path / "cache")))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- TensorLoader


def _identity_loader(**kwargs: object) -> TensorLoader:
    """50 random images (2, 5, 6) labelled by index; mean 0, std 1 so x * 255 gives the pixels."""
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (50, 2, 5, 6), dtype=np.uint8))
    options = dict(batch_size=16, shuffle=True, mean=(0.0, 0.0), std=(1.0, 1.0), seed=7) | kwargs
    return TensorLoader(images, torch.arange(50), **options)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


def _batches(loader: TensorLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_loader_is_a_function_of_seed_and_epoch() -> None:
    a, b = _identity_loader(crop_padding=2, flip=True), _identity_loader(crop_padding=2, flip=True)
    first, second = _batches(a, 3), _batches(b, 3)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, second, strict=True))
    other = _batches(a, 4)
    assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in other]))
    reseeded = _batches(_identity_loader(crop_padding=2, flip=True, seed=8), 3)
    assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in reseeded]))
    for epoch in (0, 1):
        labels = torch.cat([y for _, y in _batches(a, epoch)])
        assert sorted(labels.tolist()) == list(range(50))  # every sample exactly once


def test_loader_length_and_drop_last() -> None:
    loader = _identity_loader()
    assert len(loader) == 4 and [len(y) for _, y in loader] == [16, 16, 16, 2]
    dropped = _identity_loader(drop_last=True)
    labels = torch.cat([y for _, y in dropped])
    assert len(dropped) == 3 and len(labels) == 48 and len(set(labels.tolist())) == 48
    empty = TensorLoader(
        torch.zeros(0, 1, 4, 4, dtype=torch.uint8),
        torch.zeros(0),
        batch_size=4,
        shuffle=True,
        mean=(0,),
        std=(1,),
    )
    assert len(empty) == 0 and list(empty) == []


def test_loader_random_crop_matches_padded_windows() -> None:
    p = 2
    loader = _identity_loader(crop_padding=p, flip=False)
    offsets = set()
    for x, y in (batch for epoch in range(4) for batch in _batches(loader, epoch)):
        batch_offsets = set()
        for sample, label in zip(_pixels(x), y, strict=True):
            padded = F.pad(loader.images[label], (p, p, p, p))
            matches = [
                (top, left)
                for top in range(2 * p + 1)
                for left in range(2 * p + 1)
                if torch.equal(sample, padded[:, top : top + 5, left : left + 6])
            ]
            assert len(matches) == 1
            batch_offsets.add(matches[0])
        assert len(batch_offsets) > 1  # per sample, not per batch
        offsets |= batch_offsets
    assert len(offsets) == (2 * p + 1) ** 2  # 200 draws reach every offset


def test_loader_flip_is_exact() -> None:
    loader = _identity_loader(flip=True, shuffle=False)
    flipped = []
    for x, y in loader:
        for sample, label in zip(_pixels(x), y, strict=True):
            image = loader.images[label]
            assert torch.equal(sample, image) or torch.equal(sample, image.flip(-1))
            flipped.append(torch.equal(sample, image.flip(-1)))
    assert 15 <= sum(flipped) <= 35


def test_loader_normalization_is_exact() -> None:
    mean, std = (0.3, 0.6), (0.2, 0.5)
    loader = _identity_loader(shuffle=False, mean=mean, std=std)
    x = torch.cat([x for x, _ in loader])
    m, s = torch.tensor(mean).view(1, 2, 1, 1), torch.tensor(std).view(1, 2, 1, 1)
    reference = (loader.images.float() / 255 - m) / s
    torch.testing.assert_close(x, reference, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- errors


def test_unknown_dataset_and_bad_arguments() -> None:
    assert list_datasets() == ["cifar10", "cifar100", "cub200", "fashion_mnist", "imagefolder", "mnist", "synthetic"]
    with pytest.raises(ValueError, match="'imagenet'.*cifar10, cifar100, cub200, fashion_mnist"):
        build_data(DataSpec("imagenet"))
    with pytest.raises(ValueError, match="batch_size.*0"):
        build_data(DataSpec("synthetic", batch_size=0))
    for fraction in (1.0, -0.1):
        with pytest.raises(ValueError, match=f"val_fraction.*{fraction}"):
            build_data(DataSpec("synthetic", val_fraction=fraction))


def test_data_spec_from_the_config_sections(tmp_path: Path, make_cfg) -> None:
    cfg = make_cfg(["dataset=synthetic", "trainer.batch_size=16", "trainer.seed=4", "trainer.val_fraction=0.2"])
    dataset, trainer = dict(cfg.dataset), dict(cfg.trainer)
    spec = DataSpec.from_config(dataset, trainer, rank=1, world_size=2)
    options = DatasetOptions(num_classes=10, in_channels=1, image_size=28, num_train=2000, num_test=500, augment=False)
    assert spec == DataSpec("synthetic", options, batch_size=16, val_fraction=0.2, seed=4, rank=1, world_size=2)
    assert DataSpec("synthetic", {"num_train": 40}) == DataSpec("synthetic", DatasetOptions(num_train=40))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown option.*'synthetic'"):
        DataSpec.from_config(dataset | {"colour": True}, trainer)
    with pytest.raises(ValueError, match="divisible by world_size=3"):
        DataSpec.from_config(dataset, trainer, rank=0, world_size=3)
    # the root: given (with ~ expanded), or the default
    assert DataSpec("mnist", {"root": "~/d"}).root == Path.home() / "d"
    assert DataSpec("mnist").root == data.default_root()


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion_mnist"])
def test_missing_data_offline(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    with pytest.raises(DataNotFoundError) as error:
        build_data(DataSpec(name, DatasetOptions(root=tmp_path, download=False)))
    assert repr(name) in str(error.value) and str(tmp_path) in str(error.value)
    if name == "fashion_mnist":
        assert "apt-get install dataset-fashion-mnist" in str(error.value)


def _offline(*args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("network is unreachable (test)")


def _tree(root: Path) -> dict[str, bytes]:
    """Every file and directory under root (relative path -> contents, b"/" for a directory)."""
    return {str(p.relative_to(root)): b"/" if p.is_dir() else p.read_bytes() for p in root.rglob("*")}


def test_failed_download_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("urllib.request.urlopen", _offline)  # torchvision's real download path fails
    with pytest.raises(DataNotFoundError, match="network is unreachable") as error:
        build_data(DataSpec("cifar10", DatasetOptions(root=tmp_path, download=True)))
    assert "'cifar10'" in str(error.value) and error.value.__suppress_context__


@pytest.mark.parametrize("download", [False, True])
@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_an_absent_root_is_left_absent_when_no_data_is_found(
    name: str, download: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a download that starts creates the root, and removes what it created when it fails
    monkeypatch.setattr("urllib.request.urlopen", _offline)
    absent = tmp_path / "absent" / "cnncomp-data"
    with pytest.raises(DataNotFoundError, match=name) as error:
        build_data(DataSpec(name, DatasetOptions(root=absent, download=download)))
    assert str(absent) in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_a_run_with_an_absent_root_changes_nothing_outside_its_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_cfg
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kept").write_text("untouched")
    before = _tree(tmp_path)
    absent = tmp_path / "absent" / "cnncomp-data"
    for download in ("false", "true"):
        monkeypatch.setattr("urllib.request.urlopen", _offline)
        run = tmp_path / f"run-{download}"
        cfg = make_cfg(["dataset=cifar10", f"dataset.root={absent}", f"dataset.download={download}", "kernel=none"])
        r = train(cfg, run_dir=run)
        assert r["status"] == "failed" and "'cifar10'" in r["error"] and str(absent) in r["error"], r
        assert not (tmp_path / "absent").exists()
        assert {k: v for k, v in _tree(tmp_path).items() if not k.startswith("run-")} == before  # run dirs

    # the report that the path does not exist names it (an absent root left behind used to be
    # listed instead, with "needs train/ and test/ (or val/) folders")
    cfg = make_cfg(["dataset=imagefolder", f"dataset.path={tmp_path / 'absent'}", f"dataset.root={absent}"])
    r = train(cfg, run_dir=tmp_path / "run-folder")
    assert r["status"] == "failed" and f"{tmp_path / 'absent'} does not exist" in r["error"], r
    assert not (tmp_path / "absent").exists()


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CNNCOMP_DATA", str(tmp_path))
    assert data.default_root() == tmp_path
    monkeypatch.delenv("CNNCOMP_DATA")
    assert data.default_root() == Path.home() / ".cache" / "cnncomp" / "data"


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_learnable() -> None:
    splits = build_data(DataSpec("synthetic", seed=5, val_fraction=0))
    again = build_data(DataSpec("synthetic", seed=5, val_fraction=0))
    other = build_data(DataSpec("synthetic", seed=6, val_fraction=0))
    assert torch.equal(splits.train.images, again.train.images) and torch.equal(splits.test.images, again.test.images)
    assert not torch.equal(splits.train.images, other.train.images)
    assert splits.info.num_classes == 10 and splits.train.images.shape == (2000, 1, 28, 28)
    assert splits.test.num_samples == 500 and torch.bincount(splits.test.labels).tolist() == [50] * 10

    train_x, train_y = splits.train.images.flatten(1).float(), splits.train.labels
    test_x, test_y = splits.test.images.flatten(1).float(), splits.test.labels
    class_means = torch.stack([train_x[train_y == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(test_x, class_means).argmin(1) == test_y).float().mean()
    assert accuracy > 0.8

    shaped = build_data(
        DataSpec("synthetic", DatasetOptions(num_classes=4, in_channels=3, image_size=12, num_train=40, num_test=8))
    )
    assert shaped.info == data.DatasetInfo("synthetic", 4, 3, 12, shaped.info.mean, shaped.info.std)
    assert shaped.train.num_samples + shaped.val.num_samples == 40 and shaped.test.images.shape == (
        8,
        3,
        12,
        12,
    )


def test_held_out_batches_are_a_fixed_random_sample_of_a_class_sorted_folder(tmp_path: Path) -> None:
    _write_tree(tmp_path / "tree", {"train": {"a": 4, "b": 4}, "test": {"a": 20, "b": 20}}, size=4)
    splits = data.build_data(
        DataSpec("imagefolder", DatasetOptions(path=str(tmp_path / "tree"), root=tmp_path / "cache"), batch_size=5)
    )
    assert splits.test.labels.tolist() == [0] * 20 + [1] * 20  # stored in folder order
    first = [next(iter(splits.test))[1].tolist() for _ in range(2)]
    assert first[0] == first[1] and 0 < sum(first[0]) < len(first[0])  # one fixed order, both classes
    assert sorted(torch.cat([y for _, y in splits.test]).tolist()) == [0] * 20 + [1] * 20


def test_describe_data_matches_what_build_data_gives(tmp_path: Path) -> None:
    _write_tree(tmp_path / "tree", COUNTS)
    shape = data.describe_data("imagefolder", path=str(tmp_path / "tree"))
    built = data.build_data(
        DataSpec("imagefolder", DatasetOptions(path=str(tmp_path / "tree"), root=tmp_path / "cache"), val_fraction=0)
    )
    assert (
        shape
        == data.DataShape(3, 8, 3, built.train.num_samples, built.test.num_samples)
        == data.DataShape(3, 8, 3, 9, 4)
    )
    syn = data.build_data(
        DataSpec("synthetic", DatasetOptions(in_channels=3, image_size=12, num_train=50, num_test=20), val_fraction=0)
    )
    assert data.describe_data("synthetic", in_channels=3, image_size=12, num_train=50, num_test=20) == data.DataShape(
        syn.info.in_channels,
        syn.info.image_size,
        syn.info.num_classes,
        syn.train.num_samples,
        syn.test.num_samples,
    )
    assert data.describe_data("cifar100") == data.DataShape(3, 32, 100, 50_000, 10_000)
    with pytest.raises(ValueError, match="'svhn'.*cifar10"):
        data.describe_data("svhn")
