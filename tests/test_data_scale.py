"""Data at scale: sharding for data-parallel training, image folders streamed from disk, CUB-200-2011,
and the models at 224 px."""

from __future__ import annotations

import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from cnncomp import data
from cnncomp.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataNotFoundError,
    DatasetOptions,
    DataSpec,
    StreamLoader,
    build_data,
    folders,
)
from cnncomp.data.sampling import split_indices
from cnncomp.models import build_model
from cnncomp.plan import data_shape
from cnncomp.train import train

# ---------------------------------------------------------------- sharding (in-memory loaders)


def _rank_splits(world_size: int) -> list[data.DataSplits]:
    dataset = dict(name="synthetic", num_train=101, num_test=37, in_channels=3, image_size=8, augment=True)
    trainer = dict(batch_size=12, seed=3)
    specs = [DataSpec.from_config(dataset, trainer, rank=r, world_size=world_size) for r in range(world_size)]
    return [build_data(spec) for spec in specs]


def _epoch(loader, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_slices_make_up_the_single_process_batches(world_size: int) -> None:
    (single,) = _rank_splits(1)
    ranks = _rank_splits(world_size)
    assert single.train.crop_padding == 1 and single.train.flip  # augmentation is part of what must match
    n_train = single.train.num_samples  # 91 of 101 after the validation carve-out
    assert n_train == 91 and all(r.train.num_samples == n_train for r in ranks)
    for epoch in (0, 5):
        reference = _epoch(single.train, epoch)
        shards = [_epoch(r.train, epoch) for r in ranks]
        # world_size > 1 drops the last incomplete global batch: 7 full batches of 12, on every rank
        assert [len(s) for s in shards] == [len(r.train) for r in ranks] == [n_train // 12] * world_size
        for step, (x, y) in enumerate(reference[: n_train // 12]):
            assert [len(s[step][1]) for s in shards] == [12 // world_size] * world_size
            assert torch.equal(torch.cat([s[step][0] for s in shards]), x)  # pixels, crops and flips
            assert torch.equal(torch.cat([s[step][1] for s in shards]), y)


@pytest.mark.parametrize("world_size", [2, 3])
def test_eval_shards_partition_the_held_out_sets(world_size: int) -> None:
    # eval batch 24: test 37 = 24 + 13, split 13 → (7, 6) or (5, 4, 4); validation 10 < 24
    (single,) = _rank_splits(1)
    ranks = _rank_splits(world_size)
    for split in ("val", "test"):
        reference = _epoch(getattr(single, split))
        shards = [_epoch(getattr(r, split)) for r in ranks]
        assert len(reference) == max(len(s) for s in shards)
        for step, (x, y) in enumerate(reference):
            parts = [s[step] for s in shards if step < len(s)]
            assert torch.equal(torch.cat([p[0] for p in parts]), x)
            assert torch.equal(torch.cat([p[1] for p in parts]), y)
            sizes = [len(p[1]) for p in parts]
            assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(y)
    test_sizes = [[len(y) for _, y in _epoch(r.test)] for r in ranks]
    assert test_sizes == ([[12, 7], [12, 6]] if world_size == 2 else [[8, 5], [8, 4], [8, 4]])


def test_empty_rank_slices_are_skipped() -> None:
    # 10 validation images in one eval batch of 24 over 3 ranks: (4, 3, 3); 1 image over 3 ranks: (1, 0, 0)
    loaders = [
        data.TensorLoader(
            torch.zeros(25, 1, 2, 2, dtype=torch.uint8),
            torch.arange(25),
            batch_size=12,
            shuffle=False,
            mean=(0,),
            std=(1,),
            rank=r,
            world_size=3,
        )
        for r in range(3)
    ]
    assert [len(loader) for loader in loaders] == [3, 2, 2]
    assert [[y.tolist() for _, y in loader] for loader in loaders] == [
        [[0, 1, 2, 3], [12, 13, 14, 15], [24]],
        [[4, 5, 6, 7], [16, 17, 18, 19]],
        [[8, 9, 10, 11], [20, 21, 22, 23]],
    ]


def test_sharding_errors() -> None:
    with pytest.raises(ValueError, match="batch_size=10.*world_size=3"):
        build_data(DataSpec("synthetic", batch_size=10, rank=0, world_size=3))
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        build_data(DataSpec("synthetic", batch_size=10, rank=2, world_size=2))
    with pytest.raises(ValueError, match="90 images.*batch_size=128.*world_size=2"):
        build_data(DataSpec("synthetic", DatasetOptions(num_train=100), batch_size=128, rank=1, world_size=2))


# ---------------------------------------------------------------- image trees written for the tests

SIZES = [(40, 30), (64, 48), (30, 52), (45, 45), (80, 60)]  # (width, height): varied, as in real folders


def _jpeg(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def _image_tree(root: Path, counts: dict[str, dict[str, int]]) -> dict[str, list[tuple[str, int]]]:
    """JPEG tree root/<split>/<class>/<i>.jpg of varied sizes; (path, label) per split in ImageFolder order."""
    listed, seed = {}, 0
    for split, per_class in counts.items():
        listed[split] = []
        for label, cls in enumerate(sorted(per_class)):
            for i in range(per_class[cls]):
                path = root / split / cls / f"{i:03d}.jpg"
                _jpeg(path, SIZES[seed % len(SIZES)], seed)
                listed[split].append((str(path), label))
                seed += 1
    return listed


# ImageNet names the held-out split val/
IMAGENET_COUNTS = {"train": {"n01": 5, "n02": 4, "n03": 3}, "val": {"n01": 2, "n02": 1, "n03": 2}}


def _reference(files: list[str], size: int = 224) -> torch.Tensor:
    """The evaluation transform written out with torchvision: resize 256/224·size, center crop, normalize."""
    pipeline = T.Compose(
        [T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    return torch.stack([pipeline(Image.open(f).convert("RGB")) for f in files])


def _epoch_xy(loader, epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = zip(*_epoch(loader, epoch), strict=True)
    return torch.cat(x), torch.cat(y)


# ---------------------------------------------------------------- imagefolder streamed from disk


def test_imagefolder_streams_train_and_val(tmp_path: Path) -> None:
    listed = _image_tree(tmp_path / "imagenet", IMAGENET_COUNTS)
    splits = build_data(
        DataSpec(
            "imagefolder", DatasetOptions(path=str(tmp_path / "imagenet"), stream=True), batch_size=4, val_fraction=0.25
        )
    )
    assert splits.info == data.DatasetInfo("imagefolder", 3, 3, 224, IMAGENET_MEAN, IMAGENET_STD)
    assert all(isinstance(loader, StreamLoader) for loader in (splits.train, splits.val, splits.test))
    # validation: the same seeded carve-out as in memory (round(12 · 0.25) = 3 images)
    train_idx, val_idx = split_indices(12, 0.25, 0)
    assert splits.train.loader.dataset.samples == [listed["train"][i] for i in train_idx.tolist()]
    assert splits.val.loader.dataset.samples == [listed["train"][i] for i in val_idx.tolist()]
    assert (splits.train.num_samples, splits.val.num_samples, splits.test.num_samples) == (9, 3, 5)

    batches = _epoch(splits.train)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 224, 224), (4, 3, 224, 224), (1, 3, 224, 224)]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(
        label for _, label in splits.train.loader.dataset.samples
    )

    # evaluation is deterministic: exactly torchvision's resize + center crop + normalize, in any epoch
    reference = _reference([f for f, _ in listed["val"]])
    for epoch in (0, 3):
        x, y = _epoch_xy(splits.test, epoch)
        order = [next(i for i in range(5) if torch.equal(sample, reference[i])) for sample in x]
        assert sorted(order) == list(range(5))
        assert y.tolist() == [listed["val"][i][1] for i in order]


def test_streamed_normalization_of_a_solid_colour(tmp_path: Path) -> None:
    for split in ("train", "test"):
        path = tmp_path / "solid" / split / "a" / "0.png"
        path.parent.mkdir(parents=True)
        Image.new("RGB", (300, 200), (255, 0, 51)).save(path)
    splits = build_data(
        DataSpec("imagefolder", DatasetOptions(path=str(tmp_path / "solid")), val_fraction=0)
    )  # 200 px: streamed (auto)
    assert isinstance(splits.test, StreamLoader) and splits.info.image_size == 224
    expected = (torch.tensor([1.0, 0.0, 0.2]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    for loader in (splits.train, splits.test):  # a crop of a solid image is the same colour
        ((x, _),) = _epoch(loader)
        torch.testing.assert_close(x[0], expected.view(3, 1, 1).expand(3, 224, 224), rtol=0, atol=1e-5)


def test_streamed_augmentation_is_a_function_of_seed_and_epoch(tmp_path: Path) -> None:
    _image_tree(tmp_path / "tree", IMAGENET_COUNTS)
    options = DatasetOptions(path=str(tmp_path / "tree"), stream=True, image_size=32)
    spec = DataSpec("imagefolder", options, batch_size=6, val_fraction=0)
    single = build_data(spec).train
    x0, y0 = _epoch_xy(single, 1)
    assert torch.equal(_epoch_xy(single, 1)[0], x0)  # same epoch: same crops and flips
    assert not torch.equal(_epoch_xy(single, 2)[0], x0)
    # DataLoader workers draw the same augmentation as the main process
    workers = build_data(replace(spec, num_workers=2)).train
    assert torch.equal(_epoch_xy(workers, 1)[0], x0)
    # two ranks: each step's slices, in rank order, are the single-process batch (global batch 6)
    ranks = [build_data(replace(spec, rank=r, world_size=2)).train for r in range(2)]
    reference = _epoch(single, 1)
    shards = [_epoch(r, 1) for r in ranks]
    assert [len(s) for s in shards] == [2, 2]  # 12 images: two full global batches, none dropped
    for step in range(2):
        assert [len(s[step][1]) for s in shards] == [3, 3]
        assert torch.equal(torch.cat([s[step][0] for s in shards]), reference[step][0])
        assert torch.equal(torch.cat([s[step][1] for s in shards]), reference[step][1])


def test_stream_rule_and_describe_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _image_tree(tmp_path / "tree", IMAGENET_COUNTS)  # first image 40 x 30: shorter side 30 < 128
    path = str(tmp_path / "tree")
    small = build_data(DataSpec("imagefolder", DatasetOptions(path=path, root=tmp_path / "cache"), val_fraction=0))
    assert isinstance(small.train, data.TensorLoader) and small.info.image_size == 30
    assert data.describe_data("imagefolder", path=path) == data.DataShape(3, 30, 3, 12, 5)
    assert isinstance(
        build_data(DataSpec("imagefolder", DatasetOptions(path=path, image_size=128), val_fraction=0)).train,
        StreamLoader,
    )
    assert data.describe_data("imagefolder", path=path, image_size=128) == data.DataShape(3, 128, 3, 12, 5)
    assert data.describe_data("imagefolder", path=path, stream=True) == data.DataShape(3, 224, 3, 12, 5)
    forced = build_data(
        DataSpec("imagefolder", DatasetOptions(path=path, root=tmp_path / "cache", image_size=128, stream=False))
    )
    assert isinstance(forced.train, data.TensorLoader) and forced.test.images.shape == (5, 3, 128, 128)
    monkeypatch.setattr(folders, "STREAM_MIN_IMAGES", 12)  # as many training images as the threshold
    assert isinstance(
        build_data(DataSpec("imagefolder", DatasetOptions(path=path), val_fraction=0)).train, StreamLoader
    )

    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "tree", arcname="tree")
    assert isinstance(
        build_data(DataSpec("imagefolder", DatasetOptions(path=str(archive), root=tmp_path / "cache"))).train,
        data.TensorLoader,
    )
    with pytest.raises(ValueError, match="archive: extract it"):
        build_data(DataSpec("imagefolder", DatasetOptions(path=str(archive), stream=True)))
    with pytest.raises(ValueError, match="stream=True is for cub200, imagefolder, not 'synthetic'"):
        build_data(DataSpec("synthetic", DatasetOptions(stream=True)))


# ---------------------------------------------------------------- CUB-200-2011

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
# per image id 1..12: class (1-based) and the official split flag (1 train, 0 test)
CUB_LABELS = [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
CUB_TRAIN = [1, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1]


def _cub_tree(parent: Path) -> Path:
    """CUB_200_2011/ in the official layout: images/<class>/<name>.jpg and the four id tables."""
    root = parent / "CUB_200_2011"
    images, labels, split = [], [], []
    for i, (label, flag) in enumerate(zip(CUB_LABELS, CUB_TRAIN, strict=True), start=1):
        cls = CUB_CLASSES[label - 1]
        relative = f"{cls}/{cls[4:]}_{i:04d}_{100 + i}.jpg"
        _jpeg(root / "images" / relative, SIZES[i % len(SIZES)], i)
        images.append(f"{i} {relative}")
        labels.append(f"{i} {label}")
        split.append(f"{i} {flag}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "classes.txt").write_text("".join(f"{k} {c}\n" for k, c in enumerate(CUB_CLASSES, start=1)))
    return root


def test_cub200_official_split_and_labels(tmp_path: Path, make_cfg) -> None:
    root = _cub_tree(tmp_path)
    splits = build_data(
        DataSpec("cub200", DatasetOptions(path=str(tmp_path), image_size=224), batch_size=4, val_fraction=0)
    )
    assert splits.info == data.DatasetInfo("cub200", 3, 3, 224, IMAGENET_MEAN, IMAGENET_STD)
    ids = range(1, 13)
    train = [i for i in ids if CUB_TRAIN[i - 1] == 1]
    test = [i for i in ids if CUB_TRAIN[i - 1] == 0]
    assert (len(train), len(test)) == (8, 4)
    files = sorted((root / "images").rglob("*.jpg"), key=lambda p: int(p.stem.split("_")[-2]))
    assert splits.train.loader.dataset.samples == [(str(files[i - 1]), CUB_LABELS[i - 1] - 1) for i in train]
    assert splits.test.loader.dataset.samples == [(str(files[i - 1]), CUB_LABELS[i - 1] - 1) for i in test]
    assert [label for _, label in splits.train.loader.dataset.samples] == [0, 0, 0, 1, 1, 2, 2, 2]

    batches = _epoch(splits.train)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 224, 224), (4, 3, 224, 224)]
    x, y = _epoch_xy(splits.test)
    reference = _reference([str(files[i - 1]) for i in test])
    order = [next(i for i in range(4) if torch.equal(sample, reference[i])) for sample in x]
    assert sorted(order) == [0, 1, 2, 3] and y.tolist() == [CUB_LABELS[test[i] - 1] - 1 for i in order]

    # the extracted directory itself works too, and the dry run sees the same shape
    assert data.describe_data("cub200", path=str(root), image_size=224) == data.DataShape(3, 224, 3, 8, 4)
    assert data.describe_data("cub200", path=str(root), stream=True) == data.DataShape(3, 224, 3, 8, 4)
    assert data.describe_data("cub200", path=str(root)) == data.DataShape(3, 48, 3, 8, 4)  # 64 x 48: in memory
    # the config group (image_size 224) as the dry run reads it
    assert data_shape(make_cfg(["dataset=cub200", f"dataset.path={tmp_path}"]).dataset) == data.DataShape(
        3, 224, 3, 8, 4
    )
    # small sizes decode into memory, with the same split
    small = build_data(
        DataSpec("cub200", DatasetOptions(path=str(root), root=tmp_path / "cache", image_size=16), val_fraction=0)
    )
    assert isinstance(small.train, data.TensorLoader) and small.train.images.shape == (8, 3, 16, 16)
    assert small.train.labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2] and small.test.labels.tolist() == [0, 1, 1, 2]


def test_cub200_missing_data(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="CUB_200_2011.tgz.*dataset.path"):
        build_data(DataSpec("cub200", DatasetOptions(path=None)))
    with pytest.raises(DataNotFoundError, match=f"{tmp_path / 'nowhere'}.*images.txt.*CUB_200_2011.tgz"):
        build_data(DataSpec("cub200", DatasetOptions(path=str(tmp_path / "nowhere"))))
    (tmp_path / "CUB_200_2011.tgz").write_bytes(b"")
    with pytest.raises(DataNotFoundError, match="tar -xzf CUB_200_2011.tgz"):
        data.describe_data("cub200", path=str(tmp_path / "CUB_200_2011.tgz"))
    root = _cub_tree(tmp_path)
    lost = next((root / "images").rglob("*_0005_*.jpg"))
    lost.unlink()
    with pytest.raises(DataNotFoundError, match=f"1 images .* missing, e.g. {lost}"):
        build_data(DataSpec("cub200", DatasetOptions(path=str(root))))


# ---------------------------------------------------------------- training on a streamed tree, models at 224 px


def _learnable_tree(root: Path, per_class: dict[str, int]) -> None:
    """Three classes told apart by tint and stripe orientation (horizontal, vertical, diagonal),
    with random phase, brightness and noise; 28-40 px images."""
    rng = np.random.default_rng(0)
    tints = np.array([[1.0, 0.4, 0.4], [0.4, 1.0, 0.4], [0.4, 0.4, 1.0]])
    for split, n in per_class.items():
        for label, cls in enumerate(("diagonal", "horizontal", "vertical")):
            for i in range(n):
                h, w = rng.integers(28, 41, 2)
                rows, cols = np.mgrid[0:h, 0:w]
                phase = rng.uniform(0, 2 * np.pi)
                wave = [rows + cols, rows, cols][label] * (2 * np.pi / 6) + phase
                gray = 0.5 + 0.35 * np.sin(wave) * rng.uniform(0.6, 1.0)
                pixels = gray[..., None] * tints[label] + rng.normal(0, 0.08, (h, w, 3))
                path = root / split / cls / f"{i:03d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((pixels.clip(0, 1) * 255).astype(np.uint8)).save(path, quality=90)


def test_training_on_a_streamed_tree_learns(tmp_path: Path, make_cfg) -> None:
    # measured: test accuracy 1.0 for seeds 0-4, kernel=none and kernel=dct; about 1 s of training
    _learnable_tree(tmp_path / "tree", {"train": 60, "test": 20})
    cfg = make_cfg(
        [
            "dataset=imagefolder",
            f"dataset.path={tmp_path / 'tree'}",
            "dataset.stream=true",
            "dataset.image_size=32",
            "model=lenet",
            "kernel=dct",
            "trainer.max_epochs=5",
            "trainer.batch_size=16",
            "trainer.lr=0.02",
            "trainer.num_workers=2",
        ]
    )
    r = train(cfg, run_dir=tmp_path / "run")
    assert r["status"] == "completed", r["error"]
    assert r["test_acc"] >= 0.8, r["test_acc"]  # chance: 1/3


@pytest.mark.parametrize("name", ["resnet18", "alexnet", "vgg16"])
def test_models_at_224_px(name: str) -> None:
    model = build_model(name, num_classes=200, in_channels=3, image_size=224).eval()
    if name == "resnet18":  # the ImageNet stem: 7x7 stride-2 conv, then a 3x3 stride-2 max pool
        assert (model.conv1.kernel_size, model.conv1.stride) == ((7, 7), (2, 2))
        assert isinstance(model.maxpool, torch.nn.MaxPool2d)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 200)
