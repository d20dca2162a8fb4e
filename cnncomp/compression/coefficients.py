"""A weight stored as coefficients in orthonormal bases: W = K ×_1 B_1ᵀ … ×_d B_dᵀ (mode products;
bases from `cnncomp.transforms`, axes not transformed use I). The parametrization the transform
selections and sparse VD's pruned layers store their coefficients with."""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import cnncomp.transforms as transforms
from cnncomp.compression.method import AXIS_NAMES, layer_type


def mode_product(x: torch.Tensor, m: torch.Tensor, axis: int) -> torch.Tensor:
    """x ×_axis mᵀ for m of shape (p, q): contracts x's axis (size p) into size q."""
    return torch.movedim(torch.tensordot(x, m, dims=([axis], [0])), -1, axis)


def _is_identity(b: torch.Tensor) -> bool:
    return b.shape[0] == b.shape[1] and torch.equal(b, torch.eye(b.shape[0], dtype=b.dtype, device=b.device))


class TransformWeight(nn.Module):
    """Parametrization W = K ×_a B_aᵀ. Block: K is the low-frequency block itself and each basis
    buffer holds only its first k_a rows. Mask: K is the vector of kept coefficients, scattered
    into the full tensor by the persistent boolean `mask`."""

    block: tuple[int, ...] | None = None  # the block's per-axis sizes, for the summary

    def __init__(self, shape: tuple[int, ...], bases: dict[int, torch.Tensor], mask: torch.Tensor | None):
        super().__init__()
        self.shape = tuple(shape)
        # a full identity basis transforms nothing; its mode product alone would cost a 500×800
        # Linear 0.5 GMAC per rebuild (kernel=identity: pruning, sparse VD)
        bases = {a: b for a, b in bases.items() if not _is_identity(b)}
        self.axes = tuple(sorted(bases))
        for axis, b in bases.items():
            self.register_buffer(f"basis{axis}", b, persistent=False)  # (k_a, n_a)
        if mask is None:
            self.mask = None
        else:
            self.register_buffer("mask", mask)

    def basis(self, axis: int) -> torch.Tensor:
        return getattr(self, f"basis{axis}")

    def coefficient_shape(self) -> tuple[int, ...]:
        return tuple(self.basis(a).shape[0] if a in self.axes else n for a, n in enumerate(self.shape))

    def coefficients(self, coeffs: torch.Tensor) -> torch.Tensor:
        """The stored values as the coefficient tensor (a mask's: scattered into place, zeros elsewhere)."""
        return coeffs if self.mask is None else coeffs.new_zeros(self.shape).masked_scatter(self.mask, coeffs)

    def _expansion_order(self) -> list[int]:
        # expand the axes with the smallest growth first: the intermediate tensors stay small
        return sorted(self.axes, key=lambda a: self.basis(a).shape[1] / self.basis(a).shape[0])

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        coeffs = self.coefficients(coeffs)
        for axis in self._expansion_order():
            coeffs = mode_product(coeffs, self.basis(axis).to(coeffs.dtype), axis)
        return coeffs

    def rebuild_flops(self) -> int:
        """Multiply-adds of `forward` (the mode products, in its order)."""
        shape, flops = list(self.coefficient_shape()), 0
        for axis in self._expansion_order():
            k, n = self.basis(axis).shape
            flops += math.prod(shape) * n  # each of the prod(shape)/k fibres: (n, k) @ (k,)
            shape[axis] = n
        return flops

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """Orthogonal projection of a dense weight onto the stored coefficients."""
        coeffs = weight
        for axis in self.axes:
            coeffs = mode_product(coeffs, self.basis(axis).to(weight.dtype).T, axis)
        return coeffs if self.mask is None else coeffs[self.mask]

    def stored(self) -> int:
        return math.prod(self.coefficient_shape()) if self.mask is None else int(self.mask.sum())

    @torch.no_grad()
    def variance_init(self, chain: nn.Module, std: float) -> None:
        """Draw the stored values from N(0, std²·dense/stored): the orthonormal bases keep the variance
        of the dense init's W."""
        chain.original.normal_(0.0, std * math.sqrt(math.prod(self.shape) / self.stored()))

    def index_bits(self) -> int:
        """Bits that say which coefficients a mask kept: the smaller of a bitmap (one bit per
        coefficient) and a list of positions (⌈log2 N⌉ bits each). A block needs none: its sizes
        are in the config."""
        if self.mask is None:
            return 0
        n = self.mask.numel()
        return min(n, self.stored() * max(1, math.ceil(math.log2(n))))

    def install(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            # an instance attribute, so the layer stays an nn.Linear (fold/copy/state_dict unchanged);
            # it picks the factorized or the dense product per call (linear_plan)
            module.forward = types.MethodType(_linear_forward, module)


def linear_plan(module: nn.Module, rows: int) -> str:
    """How a compressed nn.Linear computes a forward of `rows` input rows: "factorized" or "dense".

    W = B_outᵀ K B_in (block selection: B_a the first k_a basis rows, (k_a, n_a); a mask: K the kept
    values scattered into the full (n_out, n_in) tensor, B_a whole), so y = ((x B_inᵀ) Kᵀ) B_out
    costs rows·(n_in·k_in + k_in·k_out + k_out·n_out) multiply-adds, against rows·n_in·n_out for the
    dense product plus rebuilding W (free while `parametrize.cached()` holds it, as in
    `engine.evaluate`). The cheaper one runs.
    """
    if not isinstance(module, nn.Linear) or not parametrize.is_parametrized(module, "weight"):
        return "dense"
    chain = module.parametrizations.weight
    if len(chain) != 1 or type(chain[0]) is not TransformWeight:
        return "dense"
    param = chain[0]
    (k_out, k_in), (n_out, n_in) = param.coefficient_shape(), param.shape
    factorized = k_in * k_out + (n_in * k_in if 1 in param.axes else 0) + (k_out * n_out if 0 in param.axes else 0)
    # the cache is a private flag of torch.nn.utils.parametrize; it holds W for the whole context
    cached = getattr(parametrize, "_cache_enabled", 0) > 0
    dense = rows * n_in * n_out + (0 if cached else param.rebuild_flops())
    return "factorized" if rows * factorized < dense else "dense"


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear.forward of a transform-compressed layer: factorized when `linear_plan` says so.

    Never reads `self.weight` on that path, so W is not rebuilt; F.linear keeps autocast working."""
    if linear_plan(self, x.numel() // max(self.in_features, 1)) == "dense":
        return F.linear(x, self.weight, self.bias)
    param = self.parametrizations.weight[0]
    coeffs = param.coefficients(self.parametrizations.weight.original)  # (k_out, k_in)
    factors = [coeffs]
    if 1 in param.axes:
        factors.insert(0, param.basis(1).to(coeffs.dtype))  # (k_in, n_in): (…, n_in) -> (…, k_in)
    if 0 in param.axes:
        factors.append(param.basis(0).to(coeffs.dtype).T)  # (n_out, k_out): (…, k_out) -> (…, n_out)
    for factor in factors[:-1]:
        x = F.linear(x, factor)
    return F.linear(x, factors[-1], self.bias)


def transform_bases(
    module: nn.Module, kernel: str, axes: tuple[int, ...], *, wavelet: str = "haar"
) -> tuple[tuple[int, ...], dict[int, torch.Tensor], list[str]]:
    """The transformed axes of `module.weight` among `axes`, their full n_a × n_a bases (weight's
    dtype and device) and notes on axes left as identity (a wavelet that cannot decompose an axis)."""
    weight = module.weight.detach()
    names = AXIS_NAMES[layer_type(module)]
    notes = []
    if kernel == "wavelet":
        flat = [a for a in axes if transforms.wavelet_level(weight.shape[a], wavelet) == 0]
        notes += [f"{names[a]}: {wavelet} cannot decompose n={weight.shape[a]}, axis left as identity" for a in flat]
        axes = tuple(a for a in axes if a not in flat)
    bases = {
        a: transforms.basis(kernel, weight.shape[a], wavelet=wavelet, device=weight.device).to(weight.dtype)
        for a in axes
    }
    return axes, bases, notes
