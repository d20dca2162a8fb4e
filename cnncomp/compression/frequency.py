"""Learnable-frequency layers, the original tool's LinearDCT/DST/DFT and separable Conv2dDCT:
`method=frequency`.

Each output unit's weight row (Linear) or each 2-D filter (Conv2d, separable: one function per
spatial axis) is a single basis function of the kernel evaluated at a learnable, real-valued
frequency f, scaled by a learnable amplitude:

    dct  φ_f(j) = cos(π f (j + ½) / n)          dst  φ_f(j) = sin(π (f + 1)(j + ½) / n)
    dft  φ_f(j) = cos(2π f j / n + θ)           (θ a learnable phase: the real part of e^{i(2πfj/n+θ)})

Every φ is divided by its norm, so a row's norm is its amplitude whatever f is; the weight and the
outputs are real. At integer frequencies the rows are the rows of `transforms.basis(kind, n)`
(DFT: phase 0 for cosines, π/2 for the sines), so a square LinearDCT at init is the DCT matrix, as
torch-dct's `LinearDCT`. Storage per row or filter: amplitude and frequency (two frequencies for a
filter), plus phases for the DFT, whatever `keep` says.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

import cnncomp.transforms as transforms
from cnncomp.compression.method import Method, register_method

KERNELS = ("dct", "dst", "dft")
EPS = 1e-12


def basis_functions(kind: str, freq: torch.Tensor, n: int, phase: torch.Tensor | None = None) -> torch.Tensor:
    """Unit-norm φ_f over j = 0 … n-1 for every frequency in `freq`: shape (*freq.shape, n)."""
    j = torch.arange(n, dtype=freq.dtype, device=freq.device)
    f = freq.unsqueeze(-1)
    if kind == "dct":
        phi = torch.cos(math.pi * f * (j + 0.5) / n)
    elif kind == "dst":
        phi = torch.sin(math.pi * (f + 1) * (j + 0.5) / n)
    elif kind == "dft":
        phi = torch.cos(2 * math.pi * f * j / n + (0.0 if phase is None else phase.unsqueeze(-1)))
    else:
        raise ValueError(f"unknown frequency kernel {kind!r}; allowed: {', '.join(KERNELS)}")
    return phi / phi.norm(dim=-1, keepdim=True).clamp_min(EPS)


def integer_grid(kind: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(frequency, phase) of each row of `transforms.basis(kind, n)`, float64 (n,) each."""
    if kind != "dft":
        return torch.arange(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    rows = torch.arange(n)
    freq = (rows + 1) // 2  # DC, then (cos k, sin k) pairs; the last row of an even n is Nyquist
    sine = (rows % 2 == 0) & (rows > 0) & (freq < n / 2)
    return freq.double(), sine.double() * (math.pi / 2)


class FrequencyWeight(nn.Module):
    """Parametrization W from amplitudes (the `original`) and the module's own learnable `freq` and
    (DFT) `phase`. Linear (m, n): freq (m,), W[p] = a_p φ_{f_p}. Conv2d (O, I, kh, kw): freq
    (2, O, I) for the kh and kw axes, W[o, i] = a_oi φ_{f_h}(kh) ⊗ φ_{f_w}(kw)."""

    def __init__(self, kind: str, shape: tuple[int, ...], freq: torch.Tensor, phase: torch.Tensor | None):
        super().__init__()
        self.kind = kind
        self.shape = tuple(shape)
        self.freq = nn.Parameter(freq)
        self.phase = nn.Parameter(phase) if kind == "dft" else None

    def _phase(self, axis: int) -> torch.Tensor | None:
        return None if self.phase is None else self.phase[axis]

    def unit_weight(self) -> torch.Tensor:
        """The weight at amplitude 1: unit-norm rows (Linear) or unit-norm filters (Conv2d)."""
        if len(self.shape) == 2:
            return basis_functions(self.kind, self.freq, self.shape[1], self.phase)
        kh, kw = self.shape[2:]
        rows = basis_functions(self.kind, self.freq[0], kh, self._phase(0))  # (O, I, kh)
        cols = basis_functions(self.kind, self.freq[1], kw, self._phase(1))  # (O, I, kw)
        return rows.unsqueeze(-1) * cols.unsqueeze(-2)

    def forward(self, amplitude: torch.Tensor) -> torch.Tensor:
        unit = self.unit_weight().to(amplitude.dtype)
        return amplitude.reshape(amplitude.shape + (1,) * (unit.ndim - amplitude.ndim)) * unit

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """Amplitudes of the orthogonal projection of each row/filter onto its basis function."""
        unit = self.unit_weight().to(weight.dtype)
        return (weight * unit).flatten(unit.ndim - (1 if len(self.shape) == 2 else 2)).sum(-1)

    @torch.no_grad()
    def variance_init(self, chain: nn.Module, std: float) -> None:
        """Redraw the amplitudes (`chain.original`) so that W's entries have standard deviation `std`:
        a unit-norm row or filter of n values has entries of variance amplitude² / n."""
        amplitude = chain.original
        amplitude.normal_(0.0, std * math.sqrt(math.prod(self.shape) / amplitude.numel()))

    def no_weight_decay(self) -> tuple[str, ...]:
        return ("freq", "phase")  # decay would pull every row towards DC

    def stored(self) -> int:
        """Amplitudes, frequencies and phases: the values a state_dict holds for this weight."""
        functions = math.prod(self.shape[: 1 if len(self.shape) == 2 else 2])
        return functions + self.freq.numel() + (0 if self.phase is None else self.phase.numel())


def initial_frequencies(kind: str, weight: torch.Tensor, fit: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(freq, phase) to start from, in `weight`'s dtype and device. fit=False spreads the rows over
    the integer grid from low to high (row p gets grid row p mod n; filter t gets the t-th (r, s) in
    order of r + s); fit=True gives each row/filter the grid function of its largest coefficient
    (the best one-term approximation, init=project)."""
    opts = {"dtype": weight.dtype, "device": weight.device}
    if weight.ndim == 2:
        m, n = weight.shape
        grid_f, grid_p = (t.to(**opts) for t in integer_grid(kind, n))
        if fit:
            index = (weight @ transforms.basis(kind, n, **opts).T).abs().argmax(1)  # (m,)
        else:
            index = torch.arange(m, device=weight.device) % n
        return grid_f[index], grid_p[index]
    out_ch, in_ch, kh, kw = weight.shape
    fh, ph = (t.to(**opts) for t in integer_grid(kind, kh))
    fw, pw = (t.to(**opts) for t in integer_grid(kind, kw))
    if fit:
        coeffs = torch.einsum(
            "rh,oihw,sw->oirs", transforms.basis(kind, kh, **opts), weight, transforms.basis(kind, kw, **opts)
        )
        flat = coeffs.abs().flatten(2).argmax(-1)  # (O, I) index into the kh·kw grid
    else:
        zonal = torch.argsort((torch.arange(kh)[:, None] + torch.arange(kw)[None, :]).flatten(), stable=True)
        flat = zonal[torch.arange(out_ch * in_ch) % (kh * kw)].reshape(out_ch, in_ch).to(weight.device)
    r, s = flat // kw, flat % kw
    return torch.stack([fh[r], fw[s]]), torch.stack([ph[r], pw[s]])


@register_method
class Frequency(Method):
    name: ClassVar[str] = "frequency"
    kernels: ClassVar[tuple[str, ...]] = KERNELS

    def parametrization(
        self, module: nn.Module, *, kernel: str, keep: float, axes: tuple[int, ...], init: str, wavelet: str
    ) -> tuple[nn.Module, tuple[int, ...], list[str]]:
        weight = module.weight.detach()
        freq, phase = initial_frequencies(kernel, weight, fit=init == "project")
        param = FrequencyWeight(kernel, tuple(weight.shape), freq, phase)
        return (
            param,
            tuple(range(weight.ndim)),
            ["keep does not apply: one learnable-frequency function per row or filter"],
        )
