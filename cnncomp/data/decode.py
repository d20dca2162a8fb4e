"""Decoding a listed folder dataset into uint8 tensors once, over all CPU cores, cached under the root."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import functional as TF

from cnncomp.atomic import torch_save
from cnncomp.data.catalog import Arrays, channel_stats
from cnncomp.data.folders import Split, check_classes, first_size, list_folder, open_image

_DECODE_CHUNK = 1000


def load_folder(name: str, source: Path, root: Path, image_size: int | None) -> Arrays:
    """Decode a folder dataset (an ImageFolder tree or a tar of one, CUB-200-2011) once, then reuse
    the cached tensors under root/<name>/ (written only after decoding succeeded)."""
    stat = source.stat()
    key = hashlib.sha256(f"{source}|{stat.st_size}|{stat.st_mtime_ns}|{image_size}".encode()).hexdigest()
    cache = root / name / f"{key[:20]}.pt"
    if cache.exists():
        arrays = torch.load(cache, weights_only=True)
    else:
        arrays = _decode_splits(*list_folder(name, source), image_size)
        torch_save(cache, arrays)
    return Arrays(
        arrays["train_x"],
        arrays["train_y"],
        arrays["test_x"],
        arrays["test_y"],
        len(arrays["classes"]),
        tuple(arrays["mean"]),
        tuple(arrays["std"]),
    )


def _decode_splits(train: Split, test: Split, image_size: int | None) -> dict:
    """Decode both splits into uint8 tensors (N, 3, S, S), with classes and training-set channel stats."""
    check_classes(train, test)
    image_size = image_size or first_size(train)
    images = _decode_images(train.files + test.files, image_size)
    train_x, test_x = images.split([len(train.files), len(test.files)])
    mean, std = channel_stats(train_x)
    return {
        "train_x": train_x,
        "train_y": torch.tensor(train.targets),
        "test_x": test_x,
        "test_y": torch.tensor(test.targets),
        "classes": train.classes,
        "mean": list(mean),
        "std": list(std),
    }


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
        with open_image(file) as img:
            rgb = img.convert("RGB")
        if rgb.size != (size, size):
            rgb = TF.center_crop(TF.resize(rgb, size), size)
        out[i] = np.asarray(rgb)
    return out
