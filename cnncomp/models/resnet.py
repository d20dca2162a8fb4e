"""ResNet: He, Zhang, Ren, Sun, "Deep residual learning for image recognition", CVPR 2016."""

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ._common import IMAGENET_MIN_SIZE, stem_conv
from ._registry import register_model


def _resnet(
    block: type[BasicBlock | Bottleneck],
    layers: list[int],
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
) -> ResNet:
    model = ResNet(block, layers, num_classes=num_classes)
    model.conv1 = stem_conv(in_channels, image_size)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
    if image_size < IMAGENET_MIN_SIZE:
        # CIFAR stem (He et al. §4.2): no max pool, so a 32-px input reaches layer4 at 4×4.
        model.maxpool = nn.Identity()
    return model


@register_model("resnet18")
def resnet18(*, num_classes: int, in_channels: int, image_size: int) -> ResNet:
    """ResNet-18 (He et al. 2016); 11,173,962 parameters with the CIFAR stem, 3 channels, 10 classes."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels, image_size=image_size)
