"""Sparse variational dropout on transform coefficients: `method=sparse_vd`.

Molchanov, Ashukha & Vetrov, "Variational Dropout Sparsifies Deep Neural Networks", ICML 2017.
Each stored coefficient k has a Gaussian posterior N(θ_k, σ_k²) under the log-uniform prior; the
dropout rate α_k = σ_k²/θ_k² is learned per coefficient (additive reparameterization: θ and log σ²
are the parameters). Training samples each layer's pre-activations instead of its weights (local
reparameterization), and the loss adds KL/N (`kl_divergence`) to the mean cross-entropy. Coefficients
with log α ≥ threshold (3: α ≈ 20, noise swamps the signal) are dropped in evaluation and by `prune`,
which turns every variational layer into a plain masked `TransformWeight` holding only the kept θ.
With kernel=identity this is Sparse VD on the weights themselves: the paper's baseline. A run learns
for `max_epochs - finetune_epochs` epochs, then fixes the kept set and fine-tunes it (`freeze`).
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from cnncomp.compression.coefficients import TransformWeight, transform_bases
from cnncomp.compression.method import Method, Stage, layers_stored_by, register_method, with_trailing_stage

# -KL(q ‖ p) ≈ k1·σ(k2 + k3·log α) − ½·log(1 + 1/α) − k1 (Molchanov et al. 2017, eq. 14)
K1, K2, K3 = 0.63576, 1.87320, 1.48695
LOG_ALPHA_CLAMP = 8.0  # the paper's code clips log α to [-8, 8]
INIT_LOG_SIGMA2 = -10.0  # the paper's initialization: almost deterministic weights


def neg_kl(log_alpha: torch.Tensor) -> torch.Tensor:
    """The paper's approximation of −KL(N(θ, αθ²) ‖ log-uniform), elementwise; → 0 as α → ∞."""
    return K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1


class VariationalWeight(TransformWeight):
    """W = θ' ×_a B_aᵀ over full bases, θ' = θ with the coefficients of log α ≥ threshold zeroed,
    and, when keep < 1, all but the ⌈keep·n⌉ of smallest log α (a budget matched to other methods).

    `log_sigma2` (the shape of θ) is the posterior's log variance. Unless the input side is
    untransformed (`direct`), `in_basis` and `spatial` map an input to its responses to every
    input-side basis function (`_responses`, for the local reparameterization in
    `_variational_forward`)."""

    def __init__(
        self,
        shape: tuple[int, ...],
        bases: dict[int, torch.Tensor],
        threshold: float,
        keep: float,
        log_sigma2: float,
        dtype,
        device,
    ):
        super().__init__(shape, bases, None)
        self.threshold = float(threshold)
        self.budget = math.ceil(keep * math.prod(shape))
        self.log_sigma2 = nn.Parameter(torch.full(shape, float(log_sigma2), dtype=dtype, device=device))
        # after `freeze`: the kept set is fixed and the layer trains deterministically (in checkpoints)
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool, device=device))
        self.register_buffer("fixed", torch.zeros(shape, dtype=torch.bool, device=device))
        # no input-side transform (kernel=identity, or axes=[out]; TransformWeight keeps no identity
        # axis): the responses are the input itself, and the layer's own linear/conv computes the
        # moments (the paper's form)
        self.direct = all(a == 0 for a in self.axes)
        if self.direct:
            return
        b = {
            a: self.basis(a).to(dtype) if a in self.axes else torch.eye(n, dtype=dtype, device=device)
            for a, n in enumerate(shape)
        }
        self.register_buffer("in_basis", b[1], persistent=False)  # (in, in)
        if len(shape) == 4:
            _, c, kh, kw = shape
            # spatial basis functions b_r ⊗ b_s, one set per input channel: (in·kh·kw, 1, kh, kw)
            spatial = torch.einsum("ri,sj->rsij", b[2], b[3]).reshape(kh * kw, 1, kh, kw)
            self.register_buffer("spatial", spatial.repeat(c, 1, 1, 1), persistent=False)

    def log_alpha(self, theta: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        log_alpha = self.log_sigma2 - torch.log(theta * theta + 1e-8)
        return log_alpha.clamp(-LOG_ALPHA_CLAMP, LOG_ALPHA_CLAMP) if clamp else log_alpha

    def in_budget(self, theta: torch.Tensor) -> torch.Tensor | None:
        """Mask of the `budget` coefficients of smallest log α (None when the budget is all of them).
        Training uses it too, so the network learns with the coefficients it will keep."""
        if self.budget >= theta.numel():
            return None
        # a selection, not a sort: argsort of a 500×800 layer's log α cost 89 ms a step, topk 4 ms
        order = torch.topk(
            self.log_alpha(theta, clamp=False).flatten(), self.budget, largest=False, sorted=False
        ).indices
        return (
            torch.zeros(theta.numel(), dtype=torch.bool, device=theta.device).index_fill_(0, order, True).view_as(theta)
        )

    def kept(self, theta: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the coefficients that survive pruning (the fixed set once frozen)."""
        if self.frozen:
            return self.fixed
        kept = self.log_alpha(theta, clamp=False) < self.threshold
        budget = self.in_budget(theta)
        return kept if budget is None else kept & budget

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return super().forward(theta * self.kept(theta))

    def install(self, module: nn.Module) -> None:
        module.forward = types.MethodType(_variational_forward, module)

    def no_weight_decay(self) -> tuple[str, ...]:
        return ("log_sigma2",)  # decay would pull the posterior variances to σ² = 1


def _responses(module: nn.Module, param: VariationalWeight, x: torch.Tensor) -> torch.Tensor:
    """The input's responses to every input-side basis function: Linear x·B_inᵀ (N, in); Conv2d
    r[(q, r, s)] = Σ B_in[q, c]·B_kh[r, i]·B_kw[s, j]·x[c, · + (i, j)], (N, in·kh·kw, H', W'),
    computed separably: a 1×1 convolution by B_in, then each channel against the spatial basis."""
    x = F.linear(x, param.in_basis.to(x.dtype)) if x.ndim == 2 else _mix(x, param.in_basis.to(x.dtype))
    if x.ndim == 2:
        return x
    groups = param.in_basis.shape[0]
    return F.conv2d(x, param.spatial.to(x.dtype), None, module.stride, module.padding, module.dilation, groups)


def _layer_op(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The module's linear map with `weight` and no bias: F.linear, or F.conv2d with its geometry."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight)
    return F.conv2d(x, weight, None, module.stride, module.padding, module.dilation)


def _mix(t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Apply the (P, Q) matrix m to the channel axis (dim 1) of t: (N, Q[, H, W]) -> (N, P[, H, W])."""
    return F.linear(t, m) if t.ndim == 2 else F.linear(t.movedim(1, -1), m).movedim(-1, 1)  # a GEMM, not a 1×1 conv


def _variational_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """forward of a variational Linear/Conv2d. Training: local reparameterization in the transform
    domain. Every output coefficient u_p = Σ_k θ_pk r_k (r: the input's responses to the input-side
    basis functions) is Gaussian with mean Σ θ_pk r_k and variance Σ σ²_pk r_k², independent over p;
    it is sampled, then mapped to outputs by B_out. Coefficients outside the keep budget are left
    out. Evaluation, and training once frozen: the pruned mean weight."""
    if not self.training or self.parametrizations.weight[0].frozen:
        return type(self).forward(self, x)
    param = self.parametrizations.weight[0]
    theta = self.parametrizations.weight.original
    sigma2 = param.log_sigma2.exp()
    budget = param.in_budget(theta.detach())
    if budget is not None:
        theta, sigma2 = theta * budget, sigma2 * budget
    if param.direct:
        mean, var = _layer_op(self, x, theta), _layer_op(self, x * x, sigma2)
    else:
        r = _responses(self, param, x)
        mean = _mix(r, theta.flatten(1))
        var = _mix(r * r, sigma2.flatten(1))
    noise = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device)  # row-major draws, any layout
    u = mean + var.add(1e-8).sqrt() * noise
    if 0 in param.axes:
        u = _mix(u, param.basis(0).to(u.dtype).T)  # (n_out, n_out): coefficients -> outputs
    if self.bias is None:
        return u
    return u + self.bias.view(1, -1, *([1] * (u.ndim - 2)))


@torch.no_grad()
def freeze(model: nn.Module) -> None:
    """Fix every variational layer's kept set as it is now and train on deterministically: the
    pruned mean weight, only the kept θ get gradients, no KL (`kl_divergence` skips frozen layers).
    Fine-tuning the pruned network so recovers what the posterior noise cost, as after magnitude
    pruning (Han et al. 2015)."""
    for _, param, theta in layers_stored_by(model, VariationalWeight):
        if not param.frozen:
            param.fixed.copy_(param.kept(theta))
            param.frozen.fill_(True)
        param.log_sigma2.requires_grad_(False)  # unused from now on (DDP must not wait for its gradient)


def kl_divergence(model: nn.Module) -> torch.Tensor:
    """Σ KL(q ‖ p) over every variational coefficient of `model` (0 when there are none)."""
    layers = layers_stored_by(model, VariationalWeight)
    terms = [-neg_kl(param.log_alpha(theta)).sum() for _, param, theta in layers if not param.frozen]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def kl_weight(epoch: int, warmup_epochs: int) -> float:
    """The KL term's weight in `epoch` (1-based): rising linearly to 1 over `warmup_epochs`."""
    return 1.0 if warmup_epochs <= 0 else min(1.0, epoch / warmup_epochs)


@torch.no_grad()
def sparsity(model: nn.Module) -> tuple[int, int]:
    """(kept, total) coefficients over the variational layers at their thresholds."""
    kept = total = 0
    for _, param, theta in layers_stored_by(model, VariationalWeight):
        kept += int(param.kept(theta).sum())
        total += theta.numel()
    return kept, total


@torch.no_grad()
def prune(model: nn.Module) -> nn.Module:
    """Replace every variational layer of `model` (in place) by a masked `TransformWeight` that stores
    exactly the kept θ (and their mask); the layer's outputs in evaluation are unchanged."""
    for module, param, theta in list(layers_stored_by(model, VariationalWeight)):
        mask = param.kept(theta)
        kept = theta[mask].clone()
        bases = {a: param.basis(a) for a in param.axes}
        request = param.request
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        del module.forward  # back to the class's forward
        new = TransformWeight(param.shape, bases, mask)
        parametrize.register_parametrization(module, "weight", new, unsafe=True)
        module.parametrizations.weight.original.copy_(kept)  # exact θ, not a projection of W
        new.request = request
    return model


def _require_number(value, name: str, *, integer: bool = False, above: float | None = None) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int if integer else (int, float))
    if bad or (integer and value < 0) or (above is not None and value <= above):
        what = "an integer >= 0" if integer else "a number" + ("" if above is None else f" > {above:g}")
        raise ValueError(f"{name} must be {what}, got {value!r}")


@register_method
class SparseVD(Method):
    """Sparse variational dropout (Molchanov et al. 2017) on the coefficients in the kernel's basis."""

    name: ClassVar[str] = "sparse_vd"
    options: ClassVar[dict] = {
        "threshold": 3.0,  # drop coefficients whose log α >= threshold
        "kl_scale": 1.0,  # KL weight relative to the ELBO's 1/N (> 1: sparser in a short schedule)
        "kl_warmup_epochs": 5,  # the KL weight rises linearly to 1 over these epochs
        "finetune_epochs": 0,  # the last epochs train the pruned network (kept set fixed, no noise, no KL)
        "log_sigma2_init": INIT_LOG_SIGMA2,
    }
    keeps_last_epoch: ClassVar[bool] = True
    learned_kept: ClassVar[bool] = True

    def check(self) -> None:
        _require_number(self.threshold, "threshold (log alpha)")
        _require_number(self.log_sigma2_init, "log_sigma2_init")
        _require_number(self.kl_scale, "kl_scale", above=0)
        for key in ("kl_warmup_epochs", "finetune_epochs"):
            _require_number(getattr(self, key), key, integer=True)

    def parametrization(
        self, module: nn.Module, *, kernel: str, keep: float, axes: tuple[int, ...], init: str, wavelet: str
    ) -> tuple[nn.Module, tuple[int, ...], list[str]]:
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise ValueError(f"method=sparse_vd needs padding_mode='zeros', got {module.padding_mode!r}")
        weight = module.weight.detach()
        axes, bases, notes = transform_bases(module, kernel, axes, wavelet=wavelet)
        param = VariationalWeight(
            tuple(weight.shape), bases, self.threshold, keep, self.log_sigma2_init, weight.dtype, weight.device
        )
        return param, axes, notes + [f"sparse VD: drops log alpha >= {self.threshold:g}, keeps at most {param.budget}"]

    def stages(self, max_epochs: int) -> list[Stage]:
        return with_trailing_stage(
            "sparse_vd", "finetune", self.finetune_epochs, max_epochs, "finetune_epochs", "sparse VD epoch"
        )

    def start_stage(self, model: nn.Module, stage: Stage) -> None:
        if stage.name == "finetune":
            freeze(model)

    def penalty(self, model: nn.Module, *, stage: Stage, epoch: int, num_train: int) -> Callable | None:
        """The KL term per training example (the ELBO's KL/N), warmed up over the first epochs;
        kl_scale > 1 tempers the posterior (more sparsity in a short schedule, no longer the ELBO)."""
        if stage.name != "sparse_vd":
            return None
        weight = kl_weight(epoch, self.kl_warmup_epochs) * self.kl_scale / num_train
        return lambda: weight * kl_divergence(model)

    def epoch_metrics(self, model: nn.Module) -> dict:
        return {"kept_coefficients": sparsity(model)[0]}

    def finish(self, model: nn.Module) -> None:
        prune(model)

    @torch.no_grad()
    def restore(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        """Fix each layer's kept set to the mask in `state_dict` and prune: the finished model's structure."""
        names = {id(m): n for n, m in model.named_modules()}
        for module, param, _ in list(layers_stored_by(model, VariationalWeight)):
            param.fixed.copy_(state_dict[f"{names[id(module)]}.parametrizations.weight.0.mask"])
            param.frozen.fill_(True)
        prune(model)
