"""Entropy penalized reparameterization in a transform domain: `method=epr`.

Oktay, Ballé, Singh & Shrivastava, "Scalable Model Compression by Entropy Penalized
Reparameterization", ICLR 2020. Each compressed layer stores an integer latent tensor Z of its
weight's shape in the kernel's basis; a per-layer affine decoder gives the coefficients
C = a ⊙ (Z + β) (the step a = exp(decoder_log_step) and the shift b = a·β shared per (kh, kw)
frequency position of a Conv2d, or per layer with `method.group=layer`, one pair for a Linear) and
W = C ×_a B_aᵀ (`TransformWeight`). A learned prior per decoder group, the discretized Laplace
p(k) = F(k + ½) − F(k − ½) of scale s = exp(prior_log_scale) over the integers (`method.prior=laplace`),
or a point mass at 0 with that Laplace on the nonzero integers (`spike_laplace`: EPR's own prior is a
flexible density, Ballé et al. 2018's, which a spike-and-slab approximates in one more float), says
what Z costs;
training adds λ·ln 2·bits / N to the mean cross-entropy (the two-part code length per example:
λ = 1 is the MDL/ELBO weighting). The file codes Z under that same prior (`codec`: a parametrization
holding `prior_log_scale`, and `prior_zero_logit` for the spike, supplies its own symbols), so the
rate trained is the rate stored. With `method.biases=latents` a layer's bias is stored the same way
(its own decoder and prior, one group), under the same rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from cnncomp.compression.coefficients import TransformWeight, transform_bases
from cnncomp.compression.method import Method, Stage, register_method

MIN_LOG_SCALE = math.log(1e-3)  # a prior narrower than this codes every latent as 0 at ~0 bits anyway
PRIORS = ("laplace", "spike_laplace")
GROUPS = ("position", "layer")
BIASES = ("raw", "latents")
MIN_PROB = 2.0**-24  # the coder's leaky floor (24-bit probabilities): no symbol costs more than 24 bits


def laplace_log2_pmf(x: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log2 of F(x + ½) − F(x − ½), F the CDF of Laplace(0, s = exp(log_scale)) (broadcast), in a form
    that does not cancel: |x| ≥ ½: ½·e^{−(|x|−½)/s}·(1 − e^{−1/s}); |x| < ½: 1 − ½(e^{−(½+x)/s} + e^{−(½−x)/s})."""
    s = log_scale.clamp_min(MIN_LOG_SCALE).exp()
    ax = x.abs()
    outer = math.log(0.5) - (ax.clamp_min(0.5) - 0.5) / s + torch.log(-torch.expm1(-1.0 / s))
    inner_x = ax.clamp_max(0.5)  # both branches are evaluated: keep each one's input in its domain
    inner = torch.log1p(-0.5 * (torch.exp(-(0.5 + inner_x) / s) + torch.exp(-(0.5 - inner_x) / s)))
    log_p = torch.where(ax >= 0.5, outer, inner)
    return log_p.clamp_min(math.log(MIN_PROB)) / math.log(2.0)


def spike_laplace_log2_pmf(k: torch.Tensor, log_scale: torch.Tensor, zero_logit: torch.Tensor) -> torch.Tensor:
    """log2 p(k) at integers k of the spike-and-slab p(0) = π = σ(zero_logit), p(k) = (1 − π)·L(k) / (1 − L(0))
    for k ≠ 0, L the discretized Laplace of scale s: a latent is 0 with probability π, else its sign is a
    fair coin and |k| − 1 geometric, p(k) = (1 − π)·½·(1 − r)·r^{|k| − 1} with r = e^{−1/s}. How many
    latents are 0 no longer fixes how fast the others' cost grows with |k| (one Laplace with p(0) = 0.95
    charges 8.7 more bits for each step beyond ±1, which makes the nonzero latents ternary), and π is
    fitted by the zeros alone, s by the nonzero latents alone: in the mixture form π·[k = 0] + (1 − π)·L(k),
    the same family, a narrowing slab explains the zeros too and, once the nonzero latents sit at the
    coder's floor (no gradient), collapses onto them (measured: fc1's slab at s = 0.0013, π = 0, every
    nonzero latent at 24 bits)."""
    s = log_scale.clamp_min(MIN_LOG_SCALE).exp()
    slab = math.log(0.5) - (k.abs() - 1.0) / s + torch.log(-torch.expm1(-1.0 / s)) + F.logsigmoid(-zero_logit)
    log_p = torch.where(k == 0, F.logsigmoid(zero_logit).expand_as(slab), slab)
    return log_p.clamp_min(math.log(MIN_PROB)) / math.log(2.0)


def round_ste(z: torch.Tensor) -> torch.Tensor:
    """round(z) forward, identity backward (straight-through, Bengio et al. 2013)."""
    return z + (torch.round(z) - z).detach()


class EPRWeight(TransformWeight):
    """W = a ⊙ (round(Z) + β) ×_a B_aᵀ over full bases; `original` is the continuous latent Z,
    integer once `finish`ed. log a (`decoder_log_step`), the shift β in steps (`decoder_shift`: the
    decoder's bias is b = a·β), the prior's log scale (`prior_log_scale`) and, for the spike-and-slab
    prior, the logit of its point mass at 0 (`prior_zero_logit`) have the decoder group's shape:
    (1, 1, kh, kw) for a Conv2d by position, else all ones (one group: a Linear, a Conv2d by layer,
    a bias). Every parameter is in latent units or a log, so Adam's step (about lr per parameter,
    whatever its scale) means the same for all of them: with a itself a parameter, a step of 1e-3 on
    an a of 1e-2 would change the layer by 10 %."""

    def __init__(
        self,
        shape: tuple[int, ...],
        bases: dict[int, torch.Tensor],
        init_step: float,
        prior: str,
        dtype,
        device,
        group: str = "position",
        bias_latents: bool = False,
    ):
        super().__init__(shape, bases, None)
        group = (1, 1, *shape[2:]) if group == "position" and len(shape) == 4 else (1,) * len(shape)
        self.init_step, self.prior, self.bias_latents = float(init_step), prior, bias_latents
        self.decoder_log_step = nn.Parameter(torch.zeros(group, dtype=dtype, device=device))
        self.decoder_shift = nn.Parameter(torch.zeros(group, dtype=dtype, device=device))
        self.prior_log_scale = nn.Parameter(torch.zeros(group, dtype=dtype, device=device))
        spike = nn.Parameter(torch.zeros(group, dtype=dtype, device=device)) if prior == "spike_laplace" else None
        self.register_parameter("prior_zero_logit", spike)

    def floats(self) -> list[torch.Tensor]:
        """The decoder's and the prior's parameters (the file keeps them exactly)."""
        return [t for t in (self.decoder_log_step, self.decoder_shift, self.prior_log_scale, self.prior_zero_logit)
                if t is not None]  # fmt: skip

    def log2_prior(self, x: torch.Tensor) -> torch.Tensor:
        """log2 p(x) of latents x under the layer's prior (at integers: what the file codes them with)."""
        if self.prior_zero_logit is None:
            return laplace_log2_pmf(x, self.prior_log_scale)
        return spike_laplace_log2_pmf(x, self.prior_log_scale, self.prior_zero_logit)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The coefficients C = a ⊙ (round(Z) + β) (straight-through in training)."""
        return self.decoder_log_step.exp() * (round_ste(z) + self.decoder_shift)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return super().forward(self.decode(z))

    @torch.no_grad()
    def fit(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Set the decoder and the prior for coefficients `coeffs` and return their latents:
        b = a·β = the group's mean, a = init_step × the group's std (rounding error std a/√12: 7 % of
        the coefficients' at the default 0.25), Z = (C − b)/a, the prior's scale the Laplace fit mean |Z|
        (the spike-and-slab's: s fitted to the nonzero round(Z) by maximum likelihood, π the share of
        zeros within ½…99 %)."""
        group = self.decoder_log_step.shape
        dims = tuple(a for a, g in enumerate(group) if g == 1)
        shift = coeffs.mean(dims, keepdim=True)
        std = coeffs.std(dims, keepdim=True) if coeffs.numel() > math.prod(group) else coeffs.abs()
        fallback = coeffs.std() if coeffs.numel() > 1 else coeffs.abs().max()
        std = torch.where(std > 0, std, fallback if fallback > 0 else torch.ones_like(std))
        step = self.init_step * std
        self.decoder_log_step.copy_(step.log())
        self.decoder_shift.copy_(shift / step)
        z = (coeffs - shift) / step
        if self.prior_zero_logit is None:
            self.prior_log_scale.copy_(z.abs().mean(dims, keepdim=True).clamp_min(1e-3).log())
            return z
        # the slab's maximum likelihood: r/(1 − r) the mean of |k| − 1 over the nonzero latents; the
        # spike π the share of zeros but at least ½, so that 0 starts as the cheapest latent: from
        # π below p(±1) the latents and π co-adapt into a ±1 code at 1 bit a latent (measured on
        # Caffe's LeNet-5 from the pretrained weights' 10 % of zeros at init_step 0.25, at λ = 2 and 16)
        k = z.round().abs()
        nonzero = (k > 0).to(z.dtype)
        pi = (1 - nonzero.mean(dims, keepdim=True)).clamp(0.5, 0.99)
        excess = ((k - 1) * nonzero).sum(dims, keepdim=True) / nonzero.sum(dims, keepdim=True).clamp_min(1)
        r = (excess / (1 + excess)).clamp(1e-3, 1 - 1e-3)
        self.prior_log_scale.copy_((-1 / torch.log(r)).log())
        self.prior_zero_logit.copy_(torch.log(pi / (1 - pi)))
        return z

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The latents of a dense weight: its projection onto the basis, decoder and prior fitted to it."""
        return self.fit(super().right_inverse(weight))

    def stored(self) -> int:
        # the latents, and per group a, b and the prior's scale (and point mass)
        return math.prod(self.shape) + sum(t.numel() for t in self.floats())

    @torch.no_grad()
    def variance_init(self, chain: nn.Module, std: float) -> None:
        """From scratch: coefficients C ~ N(0, std²) (orthonormal bases keep W's variance), then `fit`."""
        coeffs = torch.randn(self.shape, dtype=chain.original.dtype, device=chain.original.device) * std
        chain.original.copy_(self.fit(coeffs))

    def rate_bits(self, z: torch.Tensor, relaxed: bool) -> torch.Tensor:
        """Bits of the latents under the prior: of round(Z) (what the file codes, up to the coder's
        fixed-point probabilities), or relaxed (the training rate, see `EPR.penalty`): the Laplace's
        of Z + U(−½, ½); the spike-and-slab's expected bits of Z rounded at random, up with
        probability t = Z − ⌊Z⌋: (1 − t)·bits(⌊Z⌋) + t·bits(⌊Z⌋ + 1)."""
        if not relaxed:
            return -self.log2_prior(torch.round(z)).sum()
        if self.prior_zero_logit is None:
            return -self.log2_prior(z + torch.rand_like(z) - 0.5).sum()
        low = torch.floor(z).detach()
        t = z - low
        return -((1 - t) * self.log2_prior(low) + t * self.log2_prior(low + 1)).sum()

    def install(self, module: nn.Module) -> None:
        """With `bias_latents`, the layer's bias becomes EPR latents too (one decoder and prior group):
        stored raw at float16 its 2 bytes a value are a third of a 4 KB LeNet-5 file."""
        if self.bias_latents and module.bias is not None:
            bias = module.bias.detach()
            param = EPRWeight(tuple(bias.shape), {}, self.init_step, self.prior, bias.dtype, bias.device)
            parametrize.register_parametrization(module, "bias", param, unsafe=True)

    def no_weight_decay(self) -> tuple[str, ...]:
        names = ("decoder_log_step", "decoder_shift", "prior_log_scale", "prior_zero_logit")
        return tuple(n for n in names if getattr(self, n) is not None)


def latent_tensors(model: nn.Module):
    """(name of the latents in the state_dict, parametrization, latents) of every EPR-coded tensor
    of `model`: the compressed layers' weights and, with `bias_latents`, their biases."""
    for name, module in model.named_modules():
        for attr, chain in getattr(module, "parametrizations", {}).items():
            if isinstance(chain[0], EPRWeight):
                yield f"{name}.parametrizations.{attr}.original", chain[0], chain.original


def rate_bits(model: nn.Module, relaxed: bool = False) -> torch.Tensor:
    """Σ over `model`'s EPR-coded tensors of their latents' bits (`EPRWeight.rate_bits`); 0 when there are none."""
    terms = [param.rate_bits(z, relaxed) for _, param, z in latent_tensors(model)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


@register_method
class EPR(Method):
    """Entropy penalized reparameterization (Oktay et al. 2020) on the coefficients in the kernel's basis."""

    name: ClassVar[str] = "epr"
    options: ClassVar[dict] = {
        "rate_weight": 1.0,  # λ: the rate's weight relative to the two-part code length's ln2·bits/N
        "init_step": 0.25,  # the decoder's initial step a, as a fraction of each group's coefficient std
        "prior": "laplace",  # the latents' prior per group: laplace | spike_laplace (p(0) = π, the Laplace on k != 0)
        "group": "position",  # a Conv2d's decoder and prior groups: one per (kh, kw) position | one per layer
        "biases": "raw",  # raw (the codec stores them as its other tensors) | latents (EPR-coded, one group a layer)
    }
    # the last epoch is the trained trade-off; the best-validation one may be an earlier, larger model
    keeps_last_epoch: ClassVar[bool] = True

    def check(self) -> None:
        for key, allowed in (("prior", PRIORS), ("group", GROUPS), ("biases", BIASES)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        for key, low in (("rate_weight", 0.0), ("init_step", None)):
            value = getattr(self, key)
            bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            if bad or (value < low if low is not None else value <= 0):
                raise ValueError(f"{key} must be a number {'>= 0' if low is not None else '> 0'}, got {value!r}")

    def parametrization(
        self, module: nn.Module, *, kernel: str, keep: float, axes: tuple[int, ...], init: str, wavelet: str
    ) -> tuple[nn.Module, tuple[int, ...], list[str]]:
        weight = module.weight.detach()
        axes, bases, notes = transform_bases(module, kernel, axes, wavelet=wavelet)
        param = EPRWeight(
            tuple(weight.shape), bases, self.init_step, self.prior, weight.dtype, weight.device,
            self.group, self.biases == "latents",
        )  # fmt: skip
        group = "per (kh, kw) position" if weight.ndim == 4 and self.group == "position" else "per layer"
        prior = "Laplace" if self.prior == "laplace" else "spike-and-slab Laplace"
        biases = "; the bias as latents too" if self.biases == "latents" and module.bias is not None else ""
        return (
            param,
            axes,
            notes + [f"EPR: integer latents, affine decoder and {prior} prior {group}{biases}; keep does not apply"],
        )

    def stages(self, max_epochs: int) -> list[Stage]:
        return [Stage("epr", max_epochs)]

    def penalty(self, model: nn.Module, *, stage: Stage, epoch: int, num_train: int) -> Callable | None:
        """λ·ln2·bits/N: the latents' code length in nats per training example, next to the mean
        cross-entropy. Unlike the rate of round(Z) (piecewise constant in Z) a relaxed rate moves
        every latent; the forward still sees round(Z), the straight-through estimator's job. The
        Laplace's rate is taken on Z + U(−½, ½), EPR's (and Ballé et al. 2018's) relaxation: its
        density at an integer is the prior's p(k). The spike-and-slab's is the expected code length
        of Z rounded at random: its slope between 0 and ±1 is what leaving 0 costs (~10 bits for a
        sparse layer), where the density of Z + U would see only the slab's slope 1/s there."""
        if stage.name != "epr" or not self.rate_weight:
            return None
        weight = self.rate_weight * math.log(2.0) / num_train
        return lambda: weight * rate_bits(model, relaxed=True)

    def epoch_metrics(self, model: nn.Module) -> dict:
        with torch.no_grad():
            return {"rate_bits": round(float(rate_bits(model)))}

    @torch.no_grad()
    def finish(self, model: nn.Module) -> None:
        """Round the latents in place (the forward is unchanged, the state_dict holds the integers),
        and the decoder's and the prior's floats to the nearest float16 numbers, which the file keeps
        exactly in 2 bytes each (`codec`'s "exact" tensors); a value beyond float16's range stays."""
        for _, param, z in latent_tensors(model):
            z.copy_(torch.round(z))
            for t in param.floats():
                half = t.half()
                t.copy_(torch.where(half.isfinite() | ~t.isfinite(), half.to(t.dtype), t))

    @torch.no_grad()
    def restore(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        """A finished EPR model has its built structure; its latents must be the integers a file holds."""
        for name, _, _ in latent_tensors(model):
            z = state_dict[name]
            if not torch.equal(z, torch.round(z)):
                raise ValueError(f"{name}: EPR latents must be integers (a finished model)")
