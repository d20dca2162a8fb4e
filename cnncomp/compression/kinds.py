"""What each tensor of a cnncomp state_dict is to the codec, from its name (and dtype)."""

from __future__ import annotations

import re

import torch

_VALUES = re.compile(r"\.parametrizations\.[^.]+\.original\d*$")
_MASK = re.compile(r"\.parametrizations\.[^.]+\.\d+\.mask$")
_EXACT = re.compile(r"\.parametrizations\.[^.]+\.\d+\.(freq|phase|decoder_\w+|prior_\w+)$")
_PRIOR = re.compile(r"^(.*\.parametrizations\.[^.]+)\.\d+\.prior_log_scale$")


def tensor_kind(name: str, tensor: torch.Tensor) -> str:
    """ "values" (stored values, quantized: a compressed layer's originals, and the weight matrix or
    filters of a layer left dense), "mask" (a selection's kept positions), "exact" (a frequency
    layer's freq/phase, EPR's decoder and prior: never rounded, float16 only when every value is a
    float16 number, else float32) or "raw" (biases, normalization parameters and statistics)."""
    dense_weight = name.endswith(".weight") and tensor.ndim >= 2
    if (_VALUES.search(name) or dense_weight) and tensor.is_floating_point():
        return "values"
    if _MASK.search(name) and tensor.dtype == torch.bool:
        return "mask"
    if _EXACT.search(name) and tensor.is_floating_point():
        return "exact"
    return "raw"


def priors(state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """{name of an `original` coded under a prior: name of its prior's log scales}."""
    return {m.group(1) + ".original": n for n in state_dict if (m := _PRIOR.match(n))}


def prior_zero(state_dict: dict[str, torch.Tensor], prior: str) -> str | None:
    """The name of the spike-and-slab prior's point-mass logit beside the log scales `prior`, if any."""
    name = prior.removesuffix("prior_log_scale") + "prior_zero_logit"
    return name if name in state_dict else None


def tensor_kinds(state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """`tensor_kind` of every tensor, and "symbols" for the originals coded under their own prior."""
    coded = priors(state_dict)
    return {n: "symbols" if n in coded else tensor_kind(n, t) for n, t in state_dict.items()}


def value_names(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The tensors the codec quantizes ("values"), in state_dict order."""
    return [n for n, kind in tensor_kinds(state_dict).items() if kind == "values"]
