"""Seeded orders: the train/validation split, each epoch's order, and its slices for data-parallel ranks.

Every loader draws the order a single process would see for (seed, epoch); a rank takes its
contiguous slice of each global batch (`shards`), so the ranks' step-s batches, concatenated in rank
order, are the single-process batch s.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random (train, val) index split of range(n), each sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _mix_seed(seed: int, epoch: int) -> int:
    # SeedSequence decorrelates neighbouring (seed, epoch) pairs, unlike seed + epoch.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


def epoch_order(n: int, shuffle: bool, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Generator]:
    """The order of range(n) for (seed, epoch), and the generator to draw its augmentation from."""
    g = torch.Generator().manual_seed(_mix_seed(seed, epoch))
    return (torch.randperm(n, generator=g) if shuffle else torch.arange(n)), g


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def check_steps(num_train: int, batch_size: int, world_size: int) -> None:
    """Data-parallel training drops the last incomplete global batch; there must be a complete one."""
    if world_size > 1 and num_train < batch_size:
        raise ValueError(
            f"the training split has {num_train} images, fewer than one global batch of batch_size={batch_size} "
            f"for world_size={world_size}; lower the batch size"
        )


def shards(order: torch.Tensor, batch_size: int, rank: int, world_size: int, drop_last: bool) -> Iterator[torch.Tensor]:
    """This rank's slices of the global batches of `order`: contiguous, as even as `tensor_split`
    makes them (sizes differ by at most one, lower ranks larger). A rank whose slice of a (last,
    partial) batch is empty skips that step, so it may see one batch fewer than rank 0."""
    stop = len(order) // batch_size * batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        part = order[start : start + batch_size].tensor_split(world_size)[rank]
        if len(part):
            yield part


def shard_count(num_samples: int, batch_size: int, rank: int, world_size: int, drop_last: bool) -> int:
    """How many batches `shards` yields: a slice of m rows is empty exactly for ranks >= m."""
    full, rest = divmod(num_samples, batch_size)
    return full * (rank < batch_size) + int(rest > 0 and not drop_last and rank < rest)
