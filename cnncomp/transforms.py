"""Orthonormal transform bases, rows ordered from low to high frequency (coarse to fine).

`basis(kind, n)` returns B (n×n) with B @ B.T = I: the transform of a vector x is B @ x, the
inverse is B.T @ c. Every basis is built in float64 from its closed form (wavelets from their
filter taps) and cached per (kind, n, options, dtype, device).
"""

from __future__ import annotations

import functools
import math

import pywt
import torch

KINDS = ("identity", "dct", "dst", "dft", "wavelet")


def orthogonal_wavelets() -> list[str]:
    """Names of the pywt wavelet families usable as an orthonormal basis."""
    return [w for w in pywt.wavelist(kind="discrete") if pywt.Wavelet(w).orthogonal]


def wavelet_level(n: int, wavelet: str) -> int:
    """Largest level J that pywt allows for length n and for which 2**J divides n (0: no decomposition)."""
    level = pywt.dwt_max_level(n, pywt.Wavelet(wavelet).dec_len)
    while level > 0 and n % (1 << level):
        level -= 1
    return level


def basis(
    kind: str,
    n: int,
    *,
    wavelet: str = "haar",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Orthonormal n×n basis of `kind`; rows low→high frequency. Returns a cached tensor: do not modify it."""
    if kind not in KINDS:
        raise ValueError(f"unknown transform kind {kind!r}; allowed: {', '.join(KINDS)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"basis size n must be a positive integer, got {n!r}")
    if kind == "wavelet" and wavelet not in orthogonal_wavelets():
        raise ValueError(f"unknown or non-orthogonal wavelet {wavelet!r}; allowed: {', '.join(orthogonal_wavelets())}")
    key_opt = wavelet if kind == "wavelet" else None
    return _cached(kind, n, key_opt, dtype, torch.device(device))


@functools.cache
def _cached(kind: str, n: int, wavelet: str | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    builders = {"identity": _identity, "dct": _dct, "dst": _dst, "dft": _dft}
    b = _wavelet(n, wavelet) if kind == "wavelet" else builders[kind](n)
    return b.to(dtype=dtype, device=device)


def _grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.arange(n, dtype=torch.float64)
    return k[:, None], k[None, :]  # (n, 1) frequency, (1, n) sample


def _identity(n: int) -> torch.Tensor:
    return torch.eye(n, dtype=torch.float64)


def _dct(n: int) -> torch.Tensor:
    """DCT-II, orthonormal: B[k, j] = s_k cos(π k (2j+1) / 2n)."""
    k, j = _grid(n)
    b = torch.cos(math.pi * k * (2 * j + 1) / (2 * n)) * math.sqrt(2 / n)
    b[0] /= math.sqrt(2)
    return b


def _dst(n: int) -> torch.Tensor:
    """DST-II, orthonormal: B[k, j] = s_k sin(π (k+1) (2j+1) / 2n), the last row scaled by 1/√2."""
    k, j = _grid(n)
    b = torch.sin(math.pi * (k + 1) * (2 * j + 1) / (2 * n)) * math.sqrt(2 / n)
    b[-1] /= math.sqrt(2)
    return b


def _dft(n: int) -> torch.Tensor:
    """Real DFT: DC, then (cos k, sin k) for k = 1, 2, …, then Nyquist when n is even; unit-norm rows.

    The sign of the sine rows follows the real and imaginary parts of numpy's rfft (e^{-2πi kj/n}).
    """
    j = torch.arange(n, dtype=torch.float64)
    rows = [torch.full((n,), 1 / math.sqrt(n), dtype=torch.float64)]
    for k in range(1, (n + 1) // 2):
        angle = 2 * math.pi * k * j / n
        rows += [torch.cos(angle) * math.sqrt(2 / n), -torch.sin(angle) * math.sqrt(2 / n)]
    if n % 2 == 0:
        rows.append(torch.cos(math.pi * j) / math.sqrt(n))
    return torch.stack(rows)


def _wavelet(n: int, wavelet: str) -> torch.Tensor:
    """Periodized multilevel DWT in `pywt.wavedec` order [cA_J, cD_J, …, cD_1]; identity when J = 0.

    Each level re-splits the current approximation rows (m of them) into m/2 approximation and m/2
    detail rows; pywt's periodization mode computes c[i] = Σ_k h[k] x[(2i + L/2 - k) mod m] for a
    filter of length L, so a level is L row gathers, not an m×m matrix product.
    """
    w = pywt.Wavelet(wavelet)
    taps = len(w.dec_lo)
    b = torch.eye(n, dtype=torch.float64)
    m = n
    for _ in range(wavelet_level(n, wavelet)):
        i = torch.arange(m // 2)
        rows = b[:m].clone()
        for half, filt in enumerate((w.dec_lo, w.dec_hi)):
            out = b[half * (m // 2) : (half + 1) * (m // 2)]
            out.zero_()
            for k, h in enumerate(filt):
                out += h * rows[(2 * i + taps // 2 - k) % m]
        m //= 2
    return b
