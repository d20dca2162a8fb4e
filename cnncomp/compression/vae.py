"""A variational autoencoder of each layer's weight blocks: `method=vae`, the project notes' method.

A layer's coefficients in the kernel's basis are cut into blocks of m values: a Conv2d's kh×kw
slices, a Linear's rows (and a Conv2d whose kh·kw is not above the latent size: its filters) in
chunks of `block_size`. A small MLP encoder maps a block x to q(z | x) = N(μ, diag σ²) in d =
`latent_dim` < m dimensions and a decoder shared by the layer maps z back (Kingma & Welling 2014).
The VAE is first fitted to the layer's (pretrained) blocks by the ELBO with a Gaussian likelihood of
learned noise variance: −log p(x | z) = m/2·log σ_x² + ‖x − x̂‖²/(2σ_x²), so no weight between the
two terms is left to tune. Then the encoder is dropped: each block's μ and log σ² become parameters
and the network trains end to end through the decoder (z = μ + σ·ε while gradients flow, μ
otherwise) on the task loss + β·KL/N (`kl_weight`; β = 1: the latents' code length per example, as
sparse VD's KL/N). The network so trained is not the one decoded at μ (on Caffe's LeNet-5 it validated
at 82.9 % with sampled latents and 68.9 % at μ): the last `mean_epochs` train without sampling, at μ
rounded to finish's grid (straight through), the network the file stores. When the run finishes, μ
is rounded to integers in steps of each latent dimension's median σ (the noise it trained under;
rounding adds ~0.29σ), the steps go into the decoder's first layer and σ is dropped: the file codes
the integers under a discretized Laplace prior per dimension (`prior_log_scale`, the codec's seam
that EPR uses too), the decoder as values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from cnncomp.compression.coefficients import TransformWeight, transform_bases
from cnncomp.compression.method import Method, Stage, layers_stored_by, register_method, with_trailing_stage

FIT_BATCH = 1024  # blocks per ELBO step
FIT_LR = 3e-3
MIN_SCALE = 1e-3  # a latent dimension at 0 in every block: its prior puts ~all mass on 0
MEANS = "means"  # the stage trained at μ on finish's grid


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    """n_in → hidden → n_out with a GELU between (hidden = 0: one affine map); [0] is the first
    Linear, [-1] the last."""
    if not hidden:
        return nn.Sequential(nn.Linear(n_in, n_out))
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))


def block_layout(shape: tuple[int, ...], latent_dim: int, block_size: int) -> tuple[int, int, int]:
    """(rows, row length, block size m) of a weight of `shape` cut into blocks: a Conv2d's kh×kw
    slices when kh·kw > latent_dim, else each row (a Linear's, a Conv2d's filter) in chunks of
    `block_size` (the last one zero-padded)."""
    if len(shape) == 4 and shape[2] * shape[3] > latent_dim:
        return shape[0] * shape[1], shape[2] * shape[3], shape[2] * shape[3]
    row = math.prod(shape[1:])
    return shape[0], row, min(block_size, row)


def kl_nats(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) summed over every latent, in nats."""
    return 0.5 * (mu.square() + log_var.exp() - log_var - 1).sum()


class VAEWeight(TransformWeight):
    """W = from_blocks(decoder(z)) ×_a B_aᵀ over full bases; `original` holds the latent means μ
    (blocks × d) and `latent_log_var` their log σ² while training; once finished, `original` holds
    integers, `latent_log_var` is None and `prior_log_scale` (1 × d) their prior's log scales."""

    def __init__(
        self, shape: tuple[int, ...], bases: dict[int, torch.Tensor], *, latent_dim: int, block_size: int,
        hidden: int, fit_steps: int, dtype, device,
    ):  # fmt: skip
        super().__init__(shape, bases, None)
        self.rows, self.row_len, self.block = block_layout(self.shape, latent_dim, block_size)
        if latent_dim >= self.block:
            raise ValueError(
                f"latent_dim must be below the block size: got {latent_dim} for blocks of {self.block} "
                f"values (weight {tuple(shape)})"
            )
        self.chunks = math.ceil(self.row_len / self.block)
        self.latent_dim, self.hidden, self.fit_steps = latent_dim, hidden, fit_steps
        self.decoder = mlp(latent_dim, hidden, self.block).to(device=device, dtype=dtype)
        self.latent_log_var = nn.Parameter(torch.zeros(self.num_blocks, latent_dim, dtype=dtype, device=device))
        self.register_parameter("prior_log_scale", None)  # set when finished
        self.sampling = True  # False in the means stage: μ on finish's grid instead of sampled

    @property
    def num_blocks(self) -> int:
        return self.rows * self.chunks

    def to_blocks(self, coeffs: torch.Tensor) -> torch.Tensor:
        flat = coeffs.reshape(self.rows, self.row_len)
        flat = nn.functional.pad(flat, (0, self.chunks * self.block - self.row_len))
        return flat.reshape(self.num_blocks, self.block)

    def from_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        return blocks.reshape(self.rows, self.chunks * self.block)[:, : self.row_len].reshape(self.shape)

    def forward(self, mu: torch.Tensor) -> torch.Tensor:
        z = mu
        if self.latent_log_var is not None and not self.sampling:
            step = self.step()
            z = mu + (torch.round(mu / step) * step - mu).detach()
        elif self.training and self.latent_log_var is not None and torch.is_grad_enabled():
            z = mu + torch.randn_like(mu) * (0.5 * self.latent_log_var).exp()
        return super().forward(self.from_blocks(self.decoder(z)))

    def step(self) -> torch.Tensor:
        """finish's grid of each latent dimension: the median σ it trained under (1 × d, no gradient)."""
        return (0.5 * self.latent_log_var.detach()).exp().median(dim=0).values

    def fit(self, coeffs: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """Fit a fresh encoder and the decoder to the blocks of `coeffs` by the ELBO (`fit_steps` Adam
        steps on batches of blocks, standardized by their rms; the decoder's output layer then
        takes the rms back), set log σ² and return (μ, the relative reconstruction error of the
        coefficients from μ before and after the fit)."""
        x = self.to_blocks(coeffs.detach())
        scale = x.square().mean().sqrt().clamp_min(torch.finfo(x.dtype).tiny)
        x = x / scale
        encoder = mlp(self.block, self.hidden, 2 * self.latent_dim).to(device=x.device, dtype=x.dtype)
        log_noise = nn.Parameter(torch.zeros((), dtype=x.dtype, device=x.device))  # log σ_x², standardized
        with torch.enable_grad():
            before = self._relative_error(encoder, x)
            params = [*encoder.parameters(), *self.decoder.parameters(), log_noise]
            optimizer = torch.optim.Adam(params, lr=FIT_LR)
            for _ in range(self.fit_steps):
                batch = x[torch.randint(len(x), (min(FIT_BATCH, len(x)),), device=x.device)]
                mu, log_var = encoder(batch).chunk(2, dim=-1)
                z = mu + torch.randn_like(mu) * (0.5 * log_var).exp()
                sq = (batch - self.decoder(z)).square().sum()
                nll = 0.5 * (batch.numel() * log_noise + sq * (-log_noise).exp())
                loss = (nll + kl_nats(mu, log_var)) / len(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            after = self._relative_error(encoder, x)
            mu, log_var = encoder(x).chunk(2, dim=-1)
            self.decoder[-1].weight.mul_(scale)
            self.decoder[-1].bias.mul_(scale)
            self.latent_log_var.copy_(log_var)
        return mu, [before, after]

    @torch.no_grad()
    def _relative_error(self, encoder: nn.Module, x: torch.Tensor) -> float:
        """‖C − C(μ)‖² / ‖C‖² of the layer's coefficients (the padding left out)."""
        c, decoded = self.from_blocks(x), self.from_blocks(self.decoder(encoder(x)[:, : self.latent_dim]))
        return float((c - decoded).square().sum() / c.square().sum().clamp_min(torch.finfo(x.dtype).tiny))

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The latent means of a dense weight: the VAE fitted to its coefficients' blocks."""
        mu, self.fit_errors = self.fit(super().right_inverse(weight))
        return mu

    def stored(self) -> int:
        prior = 0 if self.prior_log_scale is None else self.latent_dim
        return self.num_blocks * self.latent_dim + sum(p.numel() for p in self.decoder.parameters()) + prior

    @torch.no_grad()
    def variance_init(self, chain: nn.Module, std: float) -> None:
        """From scratch: the VAE fitted to coefficients C ~ N(0, std²) (orthonormal bases keep W's variance)."""
        coeffs = torch.randn(self.shape, dtype=chain.original.dtype, device=chain.original.device) * std
        mu, self.fit_errors = self.fit(coeffs)
        chain.original.copy_(mu)

    def kl(self, mu: torch.Tensor) -> torch.Tensor:
        return kl_nats(mu, self.latent_log_var)

    @torch.no_grad()
    def finish(self, mu: torch.Tensor) -> None:
        """Integer latents k = round(μ / s) with s the median σ of each latent dimension, s folded
        into the decoder's first layer (its forward on k is the old one on k·s), the Laplace prior of
        each dimension fitted to k (scale = mean |k|), σ dropped."""
        step = self.step()
        k = torch.round(mu / step)
        self.decoder[0].weight.mul_(step)
        mu.copy_(k)
        self.finished(k.abs().mean(0, keepdim=True).clamp_min(MIN_SCALE).log())

    def finished(self, prior_log_scale: torch.Tensor) -> None:
        """The finished layer's structure: no log σ², a prior's log scale per latent dimension."""
        self.register_parameter("latent_log_var", None)
        self.prior_log_scale = nn.Parameter(prior_log_scale)

    def no_weight_decay(self) -> tuple[str, ...]:
        return ("latent_log_var",)


def kl_divergence(model: nn.Module) -> torch.Tensor:
    """Σ over `model`'s training VAE layers of their latents' KL to N(0, 1), in nats."""
    terms = [param.kl(mu) for _, param, mu in layers_stored_by(model, VAEWeight) if param.latent_log_var is not None]
    return torch.stack(terms).sum() if terms else torch.zeros(())


@register_method
class VAE(Method):
    """The notes' VAE of weight blocks: stored latent means and a per-layer MLP decoder."""

    name: ClassVar[str] = "vae"
    options: ClassVar[dict] = {
        "latent_dim": 4,  # d: latents per block
        "block_size": 16,  # m of a Linear's (and a small-kernel Conv2d's) row chunks; a kh×kw slice otherwise
        "hidden": 32,  # the encoder's and decoder's hidden width (0: affine)
        "fit_steps": 1000,  # Adam steps of the ELBO fit to each layer's blocks
        "kl_weight": 1.0,  # β of the end-to-end training: β·KL/N beside the mean loss
        "mean_epochs": 0,  # the last epochs: no sampling, μ on finish's grid (straight through)
    }
    structure_options: ClassVar[dict] = {"fit_steps": 0}

    def check(self) -> None:
        for key, low in (("latent_dim", 1), ("block_size", 2), ("hidden", 0), ("fit_steps", 0), ("mean_epochs", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
        if self.block_size <= self.latent_dim:
            raise ValueError(f"block_size must be above latent_dim ({self.latent_dim}), got {self.block_size!r}")
        beta = self.kl_weight
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
            raise ValueError(f"kl_weight must be a number >= 0, got {beta!r}")

    def parametrization(
        self, module: nn.Module, *, kernel: str, keep: float, axes: tuple[int, ...], init: str, wavelet: str
    ) -> tuple[nn.Module, tuple[int, ...], list[str]]:
        weight = module.weight.detach()
        axes, bases, notes = transform_bases(module, kernel, axes, wavelet=wavelet)
        param = VAEWeight(
            tuple(weight.shape), bases, latent_dim=self.latent_dim, block_size=self.block_size, hidden=self.hidden,
            fit_steps=self.fit_steps, dtype=weight.dtype, device=weight.device,
        )  # fmt: skip
        what = f"{param.num_blocks} blocks of {param.block} -> {self.latent_dim} latents, decoder"
        return param, axes, notes + [f"VAE: {what} {param.stored() - param.num_blocks * self.latent_dim} values"]

    def stages(self, max_epochs: int) -> list[Stage]:
        return with_trailing_stage(
            "vae", MEANS, self.mean_epochs, max_epochs, "mean_epochs", "epoch with sampled latents"
        )

    def start_stage(self, model: nn.Module, stage: Stage) -> None:
        for _, param, _ in layers_stored_by(model, VAEWeight):
            param.sampling = stage.name != MEANS

    def penalty(self, model: nn.Module, *, stage: Stage, epoch: int, num_train: int) -> Callable | None:
        if stage.name not in ("vae", MEANS) or not self.kl_weight:
            return None
        weight = self.kl_weight / num_train
        return lambda: weight * kl_divergence(model)

    def epoch_metrics(self, model: nn.Module) -> dict:
        with torch.no_grad():
            return {"kl_bits": round(float(kl_divergence(model)) / math.log(2.0))}

    def finish(self, model: nn.Module) -> None:
        for _, param, mu in layers_stored_by(model, VAEWeight):
            param.finish(mu)

    def restore(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        """A finished model's layers hold integer latents under a prior, and no log σ²."""
        names = {id(m): n for n, m in model.named_modules()}
        for module, param, _ in layers_stored_by(model, VAEWeight):
            prior = state_dict.get(f"{names[id(module)]}.parametrizations.weight.0.prior_log_scale")
            if prior is not None:
                param.finished(torch.zeros_like(prior, device=param.decoder[0].weight.device))
