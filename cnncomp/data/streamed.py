"""`StreamLoader`: batches decoded from image files by DataLoader workers, with torchvision's ImageNet transforms."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from PIL import Image
from torchvision import transforms as T

from cnncomp.data.catalog import IMAGENET_MEAN, IMAGENET_STD
from cnncomp.data.sampling import check_rank, epoch_order, shard_count, shards


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
    slice of every global batch (`sampling.shards`), each index keyed with its own augmentation seed."""

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
        check_rank(rank, world_size)
        self.num_samples, self.batch_size, self.shuffle, self.seed = num_samples, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch = 0

    def __len__(self) -> int:
        return shard_count(self.num_samples, self.batch_size, self.rank, self.world_size, self.drop_last)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, g = epoch_order(self.num_samples, self.shuffle, self.seed, self.epoch)
        seeds = torch.randint(2**62, (self.num_samples,), generator=g)
        for idx in shards(order, self.batch_size, self.rank, self.world_size, self.drop_last):
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
