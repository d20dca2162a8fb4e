"""Linear and Conv2d weights stored as a few coefficients in a transform domain.

A weight W (n_1 × … × n_d) is parametrized as W = K ×_1 B_1ᵀ … ×_d B_dᵀ (mode products, orthonormal
bases from `cnncomp.transforms`; axes not transformed use I). Only the coefficients picked by the
selection rule are parameters, so the state_dict holds just those (plus the mask of a non-block
selection). Implemented as a `torch.nn.utils.parametrize` parametrization: the module keeps its
class, its `weight` is computed from the coefficients on access.
"""

from __future__ import annotations

import copy
import math
import types
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from cnncomp import frequency, lowrank, transforms

# what a compressed weight is stored as: coefficients in the kernel's basis (the selections below),
# learnable-frequency basis functions (cnncomp.frequency), or low-rank factors (cnncomp.lowrank)
METHODS = ("transform", "frequency", "lowrank")
SELECTIONS = ("block", "triangle", "magnitude", "random", "learned")
INITS = ("variance", "project")
OPTIONS = ("wavelet", "seed", "threshold", "log_sigma2_init")
AXIS_NAMES = {nn.Linear: ("out", "in"), nn.Conv2d: ("out", "in", "kh", "kw")}


@dataclass
class LayerSummary:
    """What one compressed layer stores; `notes` says where the request could not be met as asked."""

    shape: tuple[int, ...]
    kernel: str
    selection: str
    keep: float
    achieved_keep: float
    axes: tuple[str, ...]
    block: tuple[int, ...] | None
    dense_params: int
    stored_params: int
    notes: list[str] = field(default_factory=list)
    method: str = "transform"

    def as_dict(self) -> dict:
        return asdict(self)


def _mode_product(x: torch.Tensor, m: torch.Tensor, axis: int) -> torch.Tensor:
    """x ×_axis mᵀ for m of shape (p, q): contracts x's axis (size p) into size q."""
    return torch.movedim(torch.tensordot(x, m, dims=([axis], [0])), -1, axis)


def _is_identity(b: torch.Tensor) -> bool:
    return b.shape[0] == b.shape[1] and torch.equal(b, torch.eye(b.shape[0], dtype=b.dtype, device=b.device))


class TransformWeight(nn.Module):
    """Parametrization W = K ×_a B_aᵀ. Block: K is the low-frequency block itself and each basis
    buffer holds only its first k_a rows. Mask: K is the vector of kept coefficients, scattered
    into the full tensor by the persistent boolean `mask`."""

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

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        coeffs = self.coefficients(coeffs)
        # expand the axes with the smallest growth first: the intermediate tensors stay small
        for axis in sorted(self.axes, key=lambda a: self.basis(a).shape[1] / self.basis(a).shape[0]):
            coeffs = _mode_product(coeffs, self.basis(axis).to(coeffs.dtype), axis)
        return coeffs

    def rebuild_flops(self) -> int:
        """Multiply-adds of `forward` (the mode products, in its order)."""
        shape, flops = list(self.coefficient_shape()), 0
        for axis in sorted(self.axes, key=lambda a: self.basis(a).shape[1] / self.basis(a).shape[0]):
            k, n = self.basis(axis).shape
            flops += math.prod(shape) * n  # each of the prod(shape)/k fibres: (n, k) @ (k,)
            shape[axis] = n
        return flops

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """Orthogonal projection of a dense weight onto the stored coefficients."""
        coeffs = weight
        for axis in self.axes:
            coeffs = _mode_product(coeffs, self.basis(axis).to(weight.dtype).T, axis)
        return coeffs if self.mask is None else coeffs[self.mask]


def _sole_transform(module: nn.Module) -> TransformWeight | None:
    """The TransformWeight of `module` when it is the weight's only parametrization."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    chain = module.parametrizations.weight
    if len(chain) != 1 or type(chain[0]) is not TransformWeight:
        return None
    return chain[0]


def linear_plan(module: nn.Module, rows: int) -> str:
    """How a compressed nn.Linear computes a forward of `rows` input rows: "factorized" or "dense".

    W = B_outᵀ K B_in (block selection: B_a the first k_a basis rows, (k_a, n_a); a mask: K the kept
    values scattered into the full (n_out, n_in) tensor, B_a whole), so y = ((x B_inᵀ) Kᵀ) B_out
    costs rows·(n_in·k_in + k_in·k_out + k_out·n_out) multiply-adds, against rows·n_in·n_out for the
    dense product plus rebuilding W (free while `parametrize.cached()` holds it, as in
    `engine.evaluate`). The cheaper one runs.
    """
    param = _sole_transform(module)
    if param is None or not isinstance(module, nn.Linear):
        return "dense"
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


def block_sizes(sizes: list[int], keep: float) -> list[int]:
    """Per-axis block sizes k_a ≤ n_a with Π k_a / Π n_a as close to `keep` as integers allow.

    Among the sizes within 1 % (relative) of the best achievable fraction, the one with the most
    equal sizes wins (water-filling: small axes are kept whole, large ones truncated). A block is a
    Tucker factorization with fixed factors whose multilinear rank is bounded by the k_a, so equal
    sizes keep that bound as high as the budget allows; truncating a 10-class output axis to 5, as a
    keep^(1/d) split per axis would, caps the logits at rank 5. Measured on LeNet-5/Fashion-MNIST at
    keep 0.25 (5 epochs, 2 seeds): 87.5 % test accuracy against 87.2 % for the per-axis split.
    """
    if not sizes:
        return []
    big = int(np.argmax(sizes))
    others = [np.arange(1, n + 1) for a, n in enumerate(sizes) if a != big]
    grid = np.stack(np.meshgrid(*others, indexing="ij"), -1).reshape(-1, len(others)) if others else None
    rest = grid.prod(1) if grid is not None else np.ones(1)
    total = math.prod(sizes)
    k_big = np.clip(np.rint(keep * total / rest), 1, sizes[big])
    err = np.abs(rest * k_big / total / keep - 1)
    ks = np.insert(grid, big, k_big, axis=1) if grid is not None else k_big[:, None]
    log_k = np.log(ks)
    imbalance = ((log_k - log_k.mean(1, keepdims=True)) ** 2).sum(1)
    ok = err <= err.min() + 0.01
    best = np.flatnonzero(ok)[np.argmin(imbalance[ok])]
    return [int(k) for k in ks[best]]


def _resolve_axes(module: nn.Module, axes) -> tuple[int, ...]:
    names = AXIS_NAMES[_layer_type(module)]
    if axes is None or axes == "all":
        return tuple(range(len(names)))
    if isinstance(axes, str):
        axes = [a.strip() for a in axes.split(",")]
    chosen = []
    for a in axes:
        if a not in names:
            raise ValueError(f"axis {a!r} is not an axis of {type(module).__name__}; allowed: {', '.join(names)}")
        chosen.append(names.index(a))
    if not chosen:
        raise ValueError(f"axes must name at least one axis; allowed: {', '.join(names)}")
    return tuple(sorted(set(chosen)))


def _layer_type(module: nn.Module) -> type:
    for cls in AXIS_NAMES:
        if isinstance(module, cls):
            return cls
    raise ValueError(
        f"cannot compress a {type(module).__name__}; allowed layer types: {', '.join(c.__name__ for c in AXIS_NAMES)}"
    )


def check_options(
    kernel: str, keep: float, selection: str = "block", init: str = "variance", method: str = "transform", **opts
) -> None:
    """Raise ValueError (naming the bad value and the allowed ones) for options compress_module rejects."""
    if kernel not in transforms.KINDS:
        raise ValueError(f"unknown kernel {kernel!r}; allowed: {', '.join(transforms.KINDS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if method == "frequency" and kernel not in frequency.KERNELS:
        raise ValueError(
            f"method=frequency needs a kernel with a frequency, got {kernel!r}; allowed: {', '.join(frequency.KERNELS)}"
        )
    if method == "lowrank" and kernel != "identity":
        raise ValueError(
            f"method=lowrank factorizes the weight itself (a transform changes no rank), got kernel {kernel!r}; "
            "allowed: identity"
        )
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ValueError(f"keep must be a number in (0, 1], got {keep!r}")
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; allowed: {', '.join(SELECTIONS)}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; allowed: {', '.join(INITS)}")
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(OPTIONS)}")
    if kernel == "wavelet":
        transforms.basis("wavelet", 1, wavelet=opts.get("wavelet", "haar"))  # validates the wavelet name


def _check_module(module: nn.Module) -> None:
    _layer_type(module)
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise ValueError(
            f"Conv2d with groups={module.groups} is not supported (allowed: groups=1); "
            "compress_model leaves grouped convolutions dense and says so in its summary"
        )
    if parametrize.is_parametrized(module, "weight"):
        raise ValueError(f"{type(module).__name__} weight is already parametrized; compress a dense module")


def _mask(
    selection: str, shape: tuple[int, ...], axes: tuple[int, ...], keep: float, full: torch.Tensor, seed: int
) -> torch.Tensor:
    """Boolean mask of the kept coefficients for the non-block selections."""
    numel = math.prod(shape)
    if selection == "triangle":
        # zonal set Σ_a i_a/n_a < τ over the transformed axes (Harmonic networks); every
        # untransformed entry shares its frequency's fate
        grid = [shape[a] for a in axes]
        score = sum(
            (torch.arange(n, dtype=torch.float64) / n).reshape([-1 if i == j else 1 for j in range(len(grid))])
            for i, n in enumerate(grid)
        ).flatten()
        m = max(1, round(keep * score.numel()))
        zone = torch.zeros(score.numel(), dtype=torch.bool)
        zone[torch.argsort(score, stable=True)[:m]] = True
        view = [shape[a] if a in axes else 1 for a in range(len(shape))]
        return zone.reshape(view).expand(shape).contiguous()
    m = max(1, round(keep * numel))
    if selection == "magnitude":
        order = torch.argsort(full.abs().flatten(), descending=True, stable=True)
    else:  # random: a fixed subset (DCT-Conv, Checinski et al. 2019)
        order = torch.randperm(numel, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[order[:m]] = True
    return mask.reshape(shape)


def transform_bases(
    module: nn.Module, kernel: str, axes, *, wavelet: str = "haar"
) -> tuple[tuple[int, ...], dict[int, torch.Tensor], list[str]]:
    """The transformed axes of `module.weight`, their full n_a × n_a bases (weight's dtype and device)
    and notes on axes left as identity (a wavelet that cannot decompose an axis)."""
    weight = module.weight.detach()
    names = AXIS_NAMES[_layer_type(module)]
    axes_idx = _resolve_axes(module, axes)
    notes = []
    if kernel == "wavelet":
        flat = [a for a in axes_idx if transforms.wavelet_level(weight.shape[a], wavelet) == 0]
        notes += [f"{names[a]}: {wavelet} cannot decompose n={weight.shape[a]}, axis left as identity" for a in flat]
        axes_idx = tuple(a for a in axes_idx if a not in flat)
    bases = {
        a: transforms.basis(kernel, weight.shape[a], wavelet=wavelet, device=weight.device).to(weight.dtype)
        for a in axes_idx
    }
    return axes_idx, bases, notes


def compress_module(
    module: nn.Module,
    *,
    kernel: str,
    keep: float,
    selection: str = "block",
    axes: str | list[str] | tuple[str, ...] | None = None,
    init: str = "variance",
    method: str = "transform",
    **opts,
) -> nn.Module:
    """Store `module.weight` as `keep` of its coefficients in the `kernel` basis; returns the module.

    kernel: identity, dct, dst, dft or wavelet (opts: wavelet="haar"|"db2"|…); selection: block
    (low-frequency block), triangle (zonal), magnitude (largest projected coefficients), random
    (opts: seed) or learned (sparse variational dropout, `cnncomp.sparsevd`: the coefficients whose
    log α stays below opts threshold=3 are kept, at most a `keep` fraction of them).
    axes: subset of ("out", "in") for Linear, ("out", "in", "kh", "kw") for Conv2d.
    init="variance" draws K ~ N(0, Var(W₀)/ρ) (ρ = achieved keep) so that W keeps the variance of
    the dense init; init="project" starts from the projection of the current weight.
    method="frequency" (kernel dct, dst or dft; keep, selection and axes do not apply) stores each
    row or filter as one basis function with a learnable frequency (`cnncomp.frequency`);
    method="lowrank" (kernel identity) as a truncated SVD / Tucker-2 within `keep` (`cnncomp.lowrank`).
    """
    _check_module(module)
    check_options(kernel, keep, selection, init, method, **opts)
    if method != "transform":
        return _compress_factored(module, kernel=kernel, keep=keep, init=init, method=method)
    if selection == "learned":
        from cnncomp.sparsevd import variational_module  # sparsevd builds on this module's pieces

        return variational_module(module, kernel=kernel, keep=keep, axes=axes, init=init, **opts)
    weight = module.weight.detach()
    shape = tuple(weight.shape)
    names = AXIS_NAMES[_layer_type(module)]
    axes_idx, full, notes = transform_bases(module, kernel, axes, wavelet=opts.get("wavelet", "haar"))

    block = None
    if selection == "block":
        block = tuple(block_sizes([shape[a] for a in axes_idx], keep))
        bases = {a: full[a][:k] for a, k in zip(axes_idx, block, strict=True)}
        mask = None
    else:
        bases = full
        projected = TransformWeight(shape, bases, None).right_inverse(weight)
        mask = _mask(selection, shape, axes_idx, keep, projected.cpu(), opts.get("seed", 0)).to(weight.device)

    param = TransformWeight(shape, bases, mask)
    parametrize.register_parametrization(module, "weight", param, unsafe=True)
    if isinstance(module, nn.Linear):
        # an instance attribute, so the layer stays an nn.Linear (fold/copy/state_dict unchanged);
        # it picks the factorized or the dense product per call (linear_plan)
        module.forward = types.MethodType(_linear_forward, module)
    coeffs = module.parametrizations.weight.original
    stored = coeffs.numel()
    achieved = stored / weight.numel()
    if init == "variance":
        with torch.no_grad():
            coeffs.normal_(0.0, float(weight.float().std()) / math.sqrt(achieved))
    if selection != "block" and abs(achieved / keep - 1) > 0.1:
        notes.append(f"achieved keep {achieved:.4g} is far from {keep} ({selection} on {shape})")
    param.summary = LayerSummary(
        shape=shape,
        kernel=kernel,
        selection=selection,
        keep=float(keep),
        achieved_keep=achieved,
        axes=tuple(names[a] for a in axes_idx),
        block=block,
        dense_params=weight.numel(),
        stored_params=stored,
        notes=notes,
    )
    return module


def _compress_factored(module: nn.Module, *, kernel: str, keep: float, init: str, method: str) -> nn.Module:
    """compress_module for method frequency or lowrank: W computed from a few factors."""
    weight = module.weight.detach()
    shape = tuple(weight.shape)
    if method == "frequency":
        freq, phase = frequency.initial_frequencies(kernel, weight, fit=init == "project")
        param = frequency.FrequencyWeight(kernel, shape, freq, phase)
        notes = ["keep does not apply: one learnable-frequency function per row or filter"]
    else:
        param = lowrank.LowRankWeight(shape, lowrank.ranks_for(shape, keep))
        notes = [f"ranks {'x'.join(map(str, param.ranks))}"]
        if param.stored() > keep * weight.numel():
            notes.append(f"rank 1 stores {param.stored()} values, more than keep={keep} of {weight.numel()}")
    parametrize.register_parametrization(module, "weight", param, unsafe=True)
    if init == "variance":
        param.variance_init(module.parametrizations.weight, float(weight.float().std()))
    param.summary = LayerSummary(
        shape=shape,
        kernel=kernel,
        selection=method,
        keep=float(keep),
        achieved_keep=param.stored() / weight.numel(),
        axes=AXIS_NAMES[_layer_type(module)],
        block=None,
        dense_params=weight.numel(),
        stored_params=param.stored(),
        notes=notes,
        method=method,
    )
    return module


def layer_summary(module: nn.Module) -> LayerSummary | None:
    """The summary of a module compressed by `compress_module`, else None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p.summary for p in module.parametrizations.weight if hasattr(p, "summary")), None)


def stored_params(model: nn.Module) -> int:
    """Numbers a state_dict of `model` holds: every floating-point tensor (coefficients, biases,
    norm statistics), not the boolean masks (see `index_bits`) nor the non-persistent bases."""
    return sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())


def index_bits(model: nn.Module) -> int:
    """Bits needed to say which coefficients a non-block selection kept: per layer the smaller of a
    bitmap (one bit per coefficient) and a list of positions (⌈log2 N⌉ bits each). A block needs
    none: its sizes are in the config."""
    total = 0
    for module in model.modules():
        if isinstance(module, TransformWeight) and module.mask is not None:
            n, kept = module.mask.numel(), int(module.mask.sum())
            total += min(n, kept * max(1, math.ceil(math.log2(n))))
    return total


def _dense_layer(module: nn.Module) -> nn.Module:
    weight = module.weight.detach()
    kw = {"bias": module.bias is not None, "device": weight.device, "dtype": weight.dtype}
    if isinstance(module, nn.Conv2d):
        dense = nn.Conv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            padding_mode=module.padding_mode,
            **kw,
        )
    else:
        dense = nn.Linear(module.in_features, module.out_features, **kw)
    with torch.no_grad():
        dense.weight.copy_(weight)
        if module.bias is not None:
            dense.bias.copy_(module.bias)
    dense.train(module.training)
    return dense


@torch.no_grad()
def fold(model: nn.Module) -> nn.Module:
    """A plain dense model with the same outputs, built fresh: each compressed layer becomes a new
    nn.Linear/nn.Conv2d holding its reconstructed weight, every other module a shallow copy with
    cloned tensors. `model` is left untouched."""
    if parametrize.is_parametrized(model, "weight"):
        return _dense_layer(model)
    new = copy.copy(model)
    new._parameters = {
        k: None if p is None else nn.Parameter(p.detach().clone(), p.requires_grad)
        for k, p in model._parameters.items()
    }
    new._buffers = {k: None if b is None else b.clone() for k, b in model._buffers.items()}
    new._non_persistent_buffers_set = set(model._non_persistent_buffers_set)
    new._modules = {k: None if m is None else fold(m) for k, m in model._modules.items()}
    return new
