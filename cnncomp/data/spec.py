"""`DataSpec`: what `build_data` is asked for, the dataset's own options and how its loaders batch, seed and shard."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cnncomp.data.catalog import AUGMENT_BY_DEFAULT, DATASETS, FOLDER_DATASETS, default_root
from cnncomp.data.sampling import check_rank

# the keys of a `trainer` config section that DataSpec.from_config reads
TRAINER_KEYS = ("batch_size", "val_fraction", "seed", "num_workers")


@dataclass(frozen=True)
class DatasetOptions:
    """A dataset's own options: the keys of a `dataset` config section other than its name. Each one
    applies to the datasets named in its comment; the others ignore it."""

    root: str | Path | None = None  # torchvision datasets' files, folder datasets' decoded cache; None: default_root()
    download: bool = True  # torchvision datasets: download into root when absent
    augment: bool | None = None  # None: the dataset's default (AUGMENT_BY_DEFAULT)
    path: str | None = None  # imagefolder, cub200: the tree, archive or CUB_200_2011 directory
    image_size: int | None = None  # folders: resize (None: first image, 224 streamed); synthetic: size (None: 28)
    stream: bool | None = None  # imagefolder, cub200: stream from disk; None: by size (see build_data)
    num_classes: int = 10  # synthetic
    in_channels: int = 1  # synthetic
    num_train: int = 2000  # synthetic
    num_test: int = 500  # synthetic


OPTION_KEYS = tuple(f.name for f in fields(DatasetOptions))


@dataclass(frozen=True)
class DataSpec:
    """A dataset and its loaders: `batch_size` is the global batch (split over `world_size` ranks),
    `eval_batch_size` that of validation and test (None: 2 x batch_size), `val_fraction` the seeded
    share of the training split held out, `num_workers` the DataLoader workers of a streamed folder.
    Invalid values raise ValueError when the spec is made. `options` may be given as a mapping."""

    name: str
    options: DatasetOptions = field(default_factory=DatasetOptions)
    batch_size: int = 128
    eval_batch_size: int | None = None
    val_fraction: float = 0.1
    seed: int = 0
    num_workers: int = 0
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.options, Mapping):
            object.__setattr__(self, "options", _options(self.name, self.options))
        if self.name not in DATASETS:
            raise ValueError(f"unknown dataset {self.name!r}; choose one of {', '.join(DATASETS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        check_rank(self.rank, self.world_size)
        if self.batch_size % self.world_size:
            raise ValueError(
                f"batch_size={self.batch_size} (the global batch) must be divisible by world_size={self.world_size}"
            )
        if self.options.stream and self.name not in FOLDER_DATASETS:
            raise ValueError(f"stream=True is for {', '.join(FOLDER_DATASETS)}, not {self.name!r}")

    @classmethod
    def from_config(
        cls, dataset: Mapping[str, Any], trainer: Mapping[str, Any], *, rank: int = 0, world_size: int = 1
    ) -> DataSpec:
        """The spec of a run from its `dataset` and `trainer` config sections (plain dicts): the
        dataset's name and options, and the trainer's TRAINER_KEYS (defaults where absent)."""
        options = {key: value for key, value in dataset.items() if key != "name"}
        loading = {key: trainer[key] for key in TRAINER_KEYS if key in trainer}
        return cls(dataset["name"], _options(dataset["name"], options), **loading, rank=rank, world_size=world_size)

    @property
    def root(self) -> Path:
        """Where the dataset is found, downloaded or cached."""
        root = self.options.root
        return Path(root).expanduser() if root is not None else default_root()

    @property
    def augment(self) -> bool:
        """Whether training images are augmented: `options.augment`, or the dataset's default."""
        augment = self.options.augment
        return self.name in AUGMENT_BY_DEFAULT if augment is None else augment

    @property
    def held_out_batch_size(self) -> int:
        """The batch size of validation and test."""
        return self.eval_batch_size or 2 * self.batch_size


def _options(name: str, options: Mapping[str, Any]) -> DatasetOptions:
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} of dataset {name!r}; known: {', '.join(OPTION_KEYS)}")
    return DatasetOptions(**options)
