"""Model registry in the style of torchvision's ``models/_api.py``: builders register by name."""

from collections.abc import Callable
from typing import TypeVar

from torch import nn

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator that registers a builder ``fn(*, num_classes, in_channels, image_size)`` under ``name``."""

    def wrapper(fn: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"a model is already registered under the name {name!r}")
        _MODELS[name] = fn
        return fn

    return wrapper


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def build_model(name: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Build the registered model ``name`` for square ``in_channels × image_size × image_size`` inputs."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {list_models()}")
    sizes = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    for arg, value in sizes.items():
        if value < 1:
            raise ValueError(f"{arg} must be >= 1, got {value}")
    model = _MODELS[name](**sizes)
    # torchvision's ReLU(inplace=True) overwrites the output of the layer before it (a Conv2d in
    # AlexNet), which breaks full backward hooks and any hook that keeps activations.
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model
