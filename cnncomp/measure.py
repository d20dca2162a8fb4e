"""Model cost figures: multiply-accumulates of a forward pass and bytes of a state_dict."""

from __future__ import annotations

import io

import torch
from torch import nn


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one sample of `input_shape` (C, H, W),
    as the dense (folded) network computes them."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            # each output element: in_channels/groups × kh × kw products
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters())
        model(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def state_dict_bytes(state_dict: dict[str, torch.Tensor]) -> int:
    """Bytes of `torch.save(state_dict)`: the size of the model on disk."""
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    return buf.getbuffer().nbytes
