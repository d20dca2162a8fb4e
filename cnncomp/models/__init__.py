"""CNNs for compression studies, built by name: ``build_model("resnet18", num_classes=10, in_channels=3,
image_size=32)``. Importing the family modules registers their builders."""

from . import alexnet, densenet, lenet, resnet, vgg  # noqa: F401  (registers the builders)
from ._registry import build_model, list_models, register_model

__all__ = ["build_model", "list_models", "register_model"]
