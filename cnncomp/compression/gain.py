"""`init=gain`: after the variance init, rescale each compressed layer so that on a batch of real
inputs it amplifies them as much as the dense init would.

The variance init gives W the dense init's entry variance σ², so a layer keeps the dense gain
E‖Wx‖² = n_out·σ²·‖x‖² only for white inputs. Real inputs are not white: post-ReLU activations
carry a large mean (1/π of their energy for a Gaussian pre-activation) and images are smooth, and a
low-pass block keeps exactly those directions, at 1/keep times the dense energy per direction. At
keep 0.1 every layer of AlexNet then amplifies its input ~1.3×, its logits start 10× larger than
the dense model's, and with them the gradients: the same learning rate takes far larger steps.
Matching each layer's gain on data, layer by layer in one forward pass (as LSUV does, Mishkin &
Matas, "All you need is a good init", ICLR 2016, but with the dense init's gain as the target
rather than unit variance), gives the compressed network the dense network's signal scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnncomp.compression.method import stored_parametrization


def input_energy(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean squared norm of what one output value of `module` sees: an input row (Linear) or a
    zero-padded kh×kw×C_in patch (Conv2d), averaged over the batch and output positions."""
    if isinstance(module, nn.Linear):
        return x.pow(2).sum(-1).mean()
    ones = x.new_ones(1, 1, *module.kernel_size)
    energy = F.conv2d(
        x.pow(2).sum(1, keepdim=True), ones, stride=module.stride, padding=module.padding, dilation=module.dilation
    )  # (N, 1, H_out, W_out)
    return energy.mean()


@torch.no_grad()
def _scale_weight(module: nn.Module, factor: float) -> None:
    """W ← factor·W through the first stored tensor (every parametrization here is linear in it)."""
    chain = module.parametrizations.weight
    stored = getattr(chain, "original", None)
    stored = chain.original0 if stored is None else stored
    before = module.weight.clone()
    stored.mul_(factor)
    if not torch.allclose(module.weight, before * factor, rtol=1e-4, atol=1e-6 * float(before.abs().max())):
        method = stored_parametrization(module).request.method
        raise ValueError(f"init=gain needs W linear in its first stored tensor; method={method}'s is not")


@torch.no_grad()
def match_dense_gain(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Rescale every compressed layer of `model` (in eval mode, one forward of `x`) so that the mean
    square of its output without bias is σ²·(input energy), σ the std of the dense init it replaced;
    each layer sees its predecessors already rescaled. Returns the factor per layer name."""
    factors: dict[str, float] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        name = names[module]
        param = stored_parametrization(module)
        bias = 0.0 if module.bias is None else module.bias.view(-1, *([1] * (output.dim() - 2)))
        wx = output - bias
        target = param.init_std**2 * input_energy(module, inputs[0].float())
        actual = wx.float().pow(2).mean()
        factor = math.sqrt(float(target / actual)) if actual > 0 else 1.0
        _scale_weight(module, factor)
        factors[name] = factor
        return wx * factor + bias

    names = {m: n for n, m in model.named_modules() if getattr(stored_parametrization(m), "init_std", None)}
    hooks = [m.register_forward_hook(hook) for m in names]
    was_training = model.training
    try:
        model.eval()  # no dropout; batch norm at its initial running statistics
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return factors
