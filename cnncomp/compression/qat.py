"""Quantization-aware fine-tuning: train the stored values through the codec's own quantizer.

Every tensor the codec quantizes (`kinds.tensor_kind` "values") gets a fake quantizer, registered
with `torch.nn.utils.parametrize` on the module or ParametrizationList that holds it, so that the
forward sees exactly what the file decodes:

- uniform: the tensor stays a latent float tensor; the forward is `codec.quantize` of it (the same
  grid from the same range), the backward passes the gradient straight through (STE);
- kmeans (Deep Compression, Han et al. 2016): each value's centroid is fixed when the quantizer is
  installed and the trained parameter is the codebook itself (2**bits centroids, the unused ones
  padding), so the tensor always holds codebook values; a centroid's gradient is the sum of its
  members' gradients (the backward of the gather).

`remove` takes the quantizers off and leaves what the codec reproduces exactly: the latent values
(uniform) or centroids[assignment] (kmeans, at most 2**bits distinct values: their own codebook).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from cnncomp.compression import codec, kinds
from cnncomp.compression.quantizers import kmeans_symbols, uniform_step


def uniform_levels(x: torch.Tensor, bits: int) -> torch.Tensor:
    """`codec.quantize` of one uniform "values" tensor, computed in torch (float64, on the tensor's
    device, without a host sync): symbols round(v / step), step = float32((max - min) / (2**bits - 1))."""
    v = x.detach().to(torch.float64)
    if v.numel() == 0:
        return x.detach().clone()
    step = uniform_step(v.min(), v.max(), bits)
    return (torch.round(v / step) * step).to(x.dtype)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int) -> torch.Tensor:
        return uniform_levels(x, bits)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class UniformFakeQuant(nn.Module):
    """The codec's uniform quantizer in the forward, the identity in the backward (STE)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(x, self.bits)


class KMeansFakeQuant(nn.Module):
    """Values as centroids[assign]: `right_inverse` fits the codec's k-means codebook to the tensor
    and fixes each value's centroid; the trained tensor is the codebook (2**bits entries)."""

    def __init__(self, shape: torch.Size, bits: int, device: torch.device) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("assign", torch.zeros(shape, dtype=torch.long, device=device))

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        return centroids[self.assign]

    @torch.no_grad()
    def right_inverse(self, x: torch.Tensor) -> torch.Tensor:
        v = x.detach().cpu().to(torch.float64).numpy().ravel()
        if v.size and not np.isfinite(v).all():
            raise ValueError("stored values must be finite to quantize")
        symbols, used = kmeans_symbols(v, self.bits)
        k = 2**self.bits
        codebook = np.zeros(k, np.float32)
        codebook[: used.size] = used
        codebook[used.size :] = used[-1] if used.size else 0.0  # padding, never assigned
        self.assign.copy_(torch.from_numpy(symbols).reshape(self.assign.shape))
        return torch.from_numpy(codebook).to(device=x.device, dtype=x.dtype)


def values_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(state_dict name, owner, attribute) of every tensor of `model` that the codec quantizes."""
    found = []
    for name in kinds.value_names(model.state_dict(keep_vars=True)):  # not an original coded under its own prior (EPR)
        prefix, _, attr = name.rpartition(".")
        found.append((name, model.get_submodule(prefix), attr))
    return found


def install(model: nn.Module, spec: codec.CodecSpec) -> int:
    """Put a fake quantizer for `spec` on every "values" tensor of `model`; how many there are."""
    if spec.quantizer not in ("uniform", "kmeans"):
        raise ValueError(f"quantization-aware training needs quantizer uniform or kmeans, got {spec.quantizer!r}")
    targets = values_tensors(model)
    spec.check_layers([name for name, _, _ in targets])
    for name, owner, attr in targets:
        tensor, bits = getattr(owner, attr), spec.bits_of(name)
        if spec.quantizer == "uniform":
            fake = UniformFakeQuant(bits)
        else:
            fake = KMeansFakeQuant(tensor.shape, bits, tensor.device)
        parametrize.register_parametrization(owner, attr, fake, unsafe=True)
    return len(targets)


def _fake_quantized(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    found = []
    for module in model.modules():
        for attr, chain in getattr(module, "parametrizations", {}).items():
            if isinstance(chain[0], (UniformFakeQuant, KMeansFakeQuant)):
                found.append((module, attr, chain[0]))
    return found


def installed(model: nn.Module) -> bool:
    return bool(_fake_quantized(model))


@torch.no_grad()
def remove(model: nn.Module) -> None:
    """Take every fake quantizer off, leaving the values `codec.quantize` maps to the fake-quantized
    forward: the latent tensor (uniform), the codebook values themselves (kmeans)."""
    for owner, attr, fake in _fake_quantized(model):
        leave = isinstance(fake, KMeansFakeQuant)
        parametrize.remove_parametrizations(owner, attr, leave_parametrized=leave)
