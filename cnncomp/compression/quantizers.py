"""The codec's quantizers: stored values as integer symbols on a uniform grid through 0, or as indices
into a k-means codebook of 2**bits centroids (Deep Compression, Han et al. 2016), and back."""

from __future__ import annotations

import numpy as np
import torch

KMEANS_ITERS = 100


def uniform_step(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """The uniform grid's step for values in [lo, hi] (float64 tensors): (hi - lo) / (2**bits - 1) as a
    float32; a tensor of one value (or none, or an overflow) is its own grid point (step |hi|, else 1).
    Shared by the codec and the quantization-aware training (`qat`), which must agree bit for bit."""
    step = ((hi - lo) / (2**bits - 1)).to(torch.float32).to(torch.float64)
    own = hi.abs().to(torch.float32).to(torch.float64)
    own = torch.where(own == 0, torch.ones_like(own), own)
    return torch.where((step == 0) | ~torch.isfinite(step), own, step)


def uniform_symbols(v: np.ndarray, bits: int) -> tuple[np.ndarray, dict]:
    """Symbols round(v/step) on a grid through 0 (`uniform_step`)."""
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    step = float(uniform_step(torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64), bits))
    symbols = np.rint(v / step)
    if symbols.size and np.abs(symbols).max() >= 2**52:
        raise ValueError(f"uniform step {step} is too fine for values up to {max(abs(lo), abs(hi))}")
    return symbols.astype(np.int64), {"step": step}


def dequantize_uniform(symbols: np.ndarray, step: float) -> np.ndarray:
    return (symbols.astype(np.float64) * step).astype(np.float32)


def _nearest(v: np.ndarray, sorted_centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted centroids to each value (1-D: between the midpoints)."""
    mids = (sorted_centroids[1:].astype(np.float64) + sorted_centroids[:-1]) / 2
    return np.searchsorted(mids, v)


def kmeans_codebook(v: np.ndarray, k: int) -> np.ndarray:
    """Lloyd's algorithm in 1-D from k centroids spaced linearly over [min, max] (the initialization
    Han et al. 2016 found best: it keeps the few large weights); an empty cluster keeps its centroid.
    Values with at most k distinct entries (e.g. after k-means fine-tuning) are their own codebook."""
    distinct = np.unique(v)
    if distinct.size <= k:
        return distinct
    centroids = np.linspace(v.min(), v.max(), k)
    for _ in range(KMEANS_ITERS):
        idx = _nearest(v, centroids)  # Lloyd keeps 1-D centroids in order, so they stay sorted
        counts = np.bincount(idx, minlength=k)
        sums = np.bincount(idx, weights=v, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.array_equal(new, centroids):
            break
        centroids = new
    return centroids


def kmeans_symbols(v: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symbols (indices into the used centroids) and the used centroids as float32, sorted."""
    if v.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    codebook = np.unique(kmeans_codebook(v, min(2**bits, v.size)).astype(np.float32))
    idx = _nearest(v, codebook)
    used, symbols = np.unique(idx, return_inverse=True)  # unused centroids are not stored
    return symbols.astype(np.int64).ravel(), codebook[used]
