"""Low-rank baselines at a stored-value budget: `method=lowrank`.

A Linear weight (m, n) is stored as U (m, r) · V (r, n), the truncated SVD (Eckart & Young 1936:
the best rank-r approximation in Frobenius norm); a Conv2d weight (O, I, kh, kw) as a Tucker-2
decomposition G ×_1 A ×_2 B with core G (r_o, r_i, kh, kw) and factors A (O, r_o), B (I, r_i),
initialized by the higher-order SVD of its two channel unfoldings (Kim et al., "Compression of deep
convolutional neural networks for fast and low power mobile applications", ICLR 2016). The ranks
are the largest that store at most `keep` of the dense values. A transform changes neither rank
nor storage (W = B_outᵀ K B_in has the rank of K), so low-rank needs kernel=identity.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from cnncomp.compression.method import Method, register_method


def linear_rank(m: int, n: int, keep: float) -> int:
    """The largest r ≥ 1 with r·(m + n) ≤ keep·m·n, capped at min(m, n)."""
    return max(1, min(min(m, n), math.floor(keep * m * n / (m + n))))


def tucker2_ranks(out_ch: int, in_ch: int, taps: int, keep: float) -> tuple[int, int]:
    """Ranks (r_o, r_i) whose Tucker-2 storage r_o·r_i·taps + O·r_o + I·r_i stays within
    keep·O·I·taps with the largest core r_o·r_i (then the most storage); (1, 1) when none fits."""
    r_o = torch.arange(1, out_ch + 1, dtype=torch.float64)[:, None]
    r_i = torch.arange(1, in_ch + 1, dtype=torch.float64)[None, :]
    storage = r_o * r_i * taps + out_ch * r_o + in_ch * r_i  # (O, I)
    score = torch.where(storage <= keep * out_ch * in_ch * taps, r_o * r_i * (storage.max() + 1) + storage, -1.0)
    best = int(score.argmax())
    return (best // in_ch + 1, best % in_ch + 1) if score.max() > 0 else (1, 1)


def _leading_singular_vectors(unfolded: torch.Tensor, rank: int) -> torch.Tensor:
    """The `rank` leading left singular vectors of a matrix, as columns."""
    u, _, _ = torch.linalg.svd(unfolded.double(), full_matrices=False)
    return u[:, :rank].to(unfolded.dtype)


class LowRankWeight(nn.Module):
    """Parametrization W = U·V (Linear) or W = G ×_1 A ×_2 B (Conv2d, Tucker-2); its originals are
    the factors, `right_inverse` is the truncated (HO)SVD of a dense weight."""

    def __init__(self, shape: tuple[int, ...], ranks: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)
        self.ranks = tuple(ranks)

    def forward(self, *factors: torch.Tensor) -> torch.Tensor:
        if len(self.shape) == 2:
            u, v = factors
            return u @ v  # (m, r) @ (r, n)
        core, a, b = factors
        return torch.einsum("pqhw,op,iq->oihw", core, a, b)  # (r_o, r_i, kh, kw) -> (O, I, kh, kw)

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(self.shape) == 2:
            (r,) = self.ranks
            u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
            root = s[:r].sqrt()  # balanced factors: both carry √s
            return (u[:, :r] * root).to(weight.dtype), (root[:, None] * vh[:r]).to(weight.dtype)
        r_o, r_i = self.ranks
        a = _leading_singular_vectors(weight.flatten(1), r_o)  # mode-1 unfolding (O, I·kh·kw)
        b = _leading_singular_vectors(weight.transpose(0, 1).flatten(1), r_i)  # mode-2 (I, O·kh·kw)
        core = torch.einsum("oihw,op,iq->pqhw", weight, a, b)
        return core, a, b

    @torch.no_grad()
    def variance_init(self, chain: nn.Module, std: float) -> None:
        """Redraw the factors (the originals of `chain`, this weight's ParametrizationList) so that W's
        entries have standard deviation `std` (the dense init's): Linear U, V ~ N(0, std/√r) each
        (Var W = r·Var U·Var V); Conv2d orthonormal random A, B and G ~ N(0, std²·O·I/(r_o·r_i)) (an
        entry of W sums r_o·r_i terms of weight ≈ 1/(O·I))."""
        factors = [getattr(chain, f"original{i}") for i in range(len(self.ranks) + 1)]
        if len(self.shape) == 2:
            scale = math.sqrt(std / math.sqrt(self.ranks[0]))
            for f in factors:
                f.normal_(0.0, scale)
            return
        core, a, b = factors
        (out_ch, in_ch, _, _), (r_o, r_i) = self.shape, self.ranks
        for f in (a, b):
            f.copy_(torch.linalg.qr(torch.randn(f.shape, dtype=torch.float64))[0].to(f))
        core.normal_(0.0, std * math.sqrt(out_ch * in_ch / (r_o * r_i)))

    def stored(self) -> int:
        if len(self.shape) == 2:
            return self.ranks[0] * sum(self.shape)
        (out_ch, in_ch, kh, kw), (r_o, r_i) = self.shape, self.ranks
        return r_o * r_i * kh * kw + out_ch * r_o + in_ch * r_i


def ranks_for(shape: tuple[int, ...], keep: float) -> tuple[int, ...]:
    """The ranks `LowRankWeight` uses for a weight of `shape` at `keep`."""
    if len(shape) == 2:
        return (linear_rank(*shape, keep),)
    out_ch, in_ch, kh, kw = shape
    return tucker2_ranks(out_ch, in_ch, kh * kw, keep)


@register_method
class LowRank(Method):
    name: ClassVar[str] = "lowrank"
    kernels: ClassVar[tuple[str, ...]] = ("identity",)  # a transform changes no rank

    def parametrization(
        self, module: nn.Module, *, kernel: str, keep: float, axes: tuple[int, ...], init: str, wavelet: str
    ) -> tuple[nn.Module, tuple[int, ...], list[str]]:
        shape = tuple(module.weight.shape)
        param = LowRankWeight(shape, ranks_for(shape, keep))
        notes = [f"ranks {'x'.join(map(str, param.ranks))}"]
        if param.stored() > keep * math.prod(shape):
            notes.append(f"rank 1 stores {param.stored()} values, more than keep={keep} of {math.prod(shape)}")
        return param, tuple(range(len(shape))), notes
