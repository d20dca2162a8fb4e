"""What a compressed model stores, and its plain dense equivalent."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize


def stored_params(model: nn.Module) -> int:
    """Numbers a state_dict of `model` holds: every floating-point tensor (coefficients, biases,
    norm statistics), not the boolean masks (see `index_bits`) nor the non-persistent bases."""
    return sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())


def index_bits(model: nn.Module) -> int:
    """Bits that say which stored values a layer kept (its parametrization's `index_bits`: e.g. a
    mask's bitmap or positions), summed over `model`."""
    return sum(m.index_bits() for m in model.modules() if hasattr(m, "index_bits"))


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
