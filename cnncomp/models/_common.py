"""Pieces shared by the model families."""

from collections import OrderedDict

from torch import nn

# Inputs at least this large get the ImageNet geometry (strided stems, torchvision's heads);
# smaller ones (28 px MNIST, 32 px CIFAR) get the CIFAR geometry that keeps the resolution early on.
IMAGENET_MIN_SIZE = 64


def stem_conv(in_channels: int, image_size: int) -> nn.Conv2d:
    """First conv of ResNet/DenseNet: 7×7 stride 2 on ImageNet-size inputs, 3×3 stride 1 on small ones."""
    if image_size >= IMAGENET_MIN_SIZE:
        return nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)


def classifier_net(features: nn.Module, classifier: nn.Module, pool_size: int | None = None) -> nn.Sequential:
    """features → [AdaptiveAvgPool2d(pool_size)] → flatten → classifier.

    The submodule names are those of torchvision's AlexNet and VGG, so state_dict keys match theirs.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(features=features)
    if pool_size is not None:
        layers["avgpool"] = nn.AdaptiveAvgPool2d(pool_size)
    layers["flatten"] = nn.Flatten()
    layers["classifier"] = classifier
    return nn.Sequential(layers)
