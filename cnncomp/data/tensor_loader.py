"""`TensorLoader`: batches from uint8 images held in memory on the training device, augmented there."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from cnncomp.data.sampling import check_rank, epoch_order, shard_count, shards


class TensorLoader:
    """Batches from uint8 images held in memory (on the training device), with batched on-device
    augmentation (per-sample random crop with zero padding, horizontal flip) and normalization.

    Order and augmentation are a pure function of (seed, epoch); call `set_epoch` before each epoch
    (as with DistributedSampler) so that a resumed run sees the same batches.

    Data-parallel: `batch_size` is the global batch. Every rank draws the same global order and
    augmentation as a single process and takes its contiguous slice of each global batch
    (`sampling.shards`), so the ranks' step-s batches, concatenated in rank order, are the
    single-process batch s. `num_samples` is the size of the whole split, not of this rank's share.
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
        check_rank(rank, world_size)
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
        return shard_count(self.num_samples, self.batch_size, self.rank, self.world_size, self.drop_last)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, (h, w) = self.num_samples, self.images.shape[-2:]
        # Draw on the CPU so the stream is the same on every device; only small index tensors move.
        order, g = epoch_order(n, self.shuffle, self.seed, self.epoch)
        augment = self.crop_padding > 0 or self.flip
        if augment:
            span = 2 * self.crop_padding + 1
            top = torch.randint(span, (n,), generator=g).to(self.device)
            left = torch.randint(span, (n,), generator=g).to(self.device)
            flips = (torch.rand(n, generator=g) < (0.5 if self.flip else 0.0)).to(self.device)
        order = order.to(self.device)
        for idx in shards(order, self.batch_size, self.rank, self.world_size, self.drop_last):
            x = self.images[idx]
            if augment:
                p = self.crop_padding
                x = windows(F.pad(x, (p, p, p, p)), top[idx], left[idx], flips[idx], h, w)
            x = x.float().div_(255).sub_(self._mean).div_(self._std)
            yield x, self.labels[idx]


def windows(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-sample h x w windows of x (B, C, H', W') at (top, left), mirrored where `flip`."""
    b, c = x.shape[:2]
    rows = top[:, None] + torch.arange(h, device=x.device)  # (B, h)
    cols = left[:, None] + torch.arange(w, device=x.device)  # (B, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return x[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
