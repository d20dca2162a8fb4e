"""The codec's uncoded tensors as bytes and back: floats in a float dtype's bytes (as held in memory:
little-endian on every platform torch supports), bools as a bitmap, integers as zigzag varints
(counters and indices are small)."""

from __future__ import annotations

import numpy as np
import torch

from cnncomp.compression import entropy


def dtype_of(name: str) -> torch.dtype:
    """The dtype a record names ("torch.float16" or "float16")."""
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def to_bytes(t: torch.Tensor, store: str) -> tuple[bytes, torch.Tensor]:
    """A CPU tensor kept as `store` ("bits", "varint" or a dtype's name): its bytes and the tensor
    they read back as (`read`)."""
    if store == "bits":
        return np.packbits(t.numpy().ravel(), bitorder="little").tobytes(), t.clone()
    if store == "varint":
        return entropy.varints(entropy.zigzag(t.to(torch.int64).numpy().ravel())), t.clone()
    stored = t.to(dtype_of(store))
    data = stored.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return data, stored.to(t.dtype).clone()


def read(reader: entropy.Reader, store: str, n: int, dtype: torch.dtype) -> torch.Tensor:
    """The `n` values (flat) of a tensor of `dtype` that `to_bytes` kept as `store`."""
    if store == "bits":
        bits = np.unpackbits(np.frombuffer(reader.take((n + 7) // 8), np.uint8), count=n, bitorder="little")
        return torch.from_numpy(bits.astype(bool))
    if store == "varint":
        return torch.from_numpy(entropy.unzigzag(reader.varints(n))).to(dtype)
    stored = dtype_of(store)
    data = reader.take(n * stored.itemsize)
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(stored) if n else torch.zeros(0, dtype=stored)
    return flat.clone().to(dtype)
