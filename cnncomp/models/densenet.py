"""DenseNet: Huang, Liu, van der Maaten, Weinberger, "Densely connected convolutional networks", CVPR 2017."""

from torch import nn
from torchvision.models import DenseNet

from ._common import IMAGENET_MIN_SIZE, stem_conv
from ._registry import register_model


def _densenet(
    growth_rate: int,
    block_config: tuple[int, int, int, int],
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
) -> DenseNet:
    # memory_efficient=False: checkpointing re-runs layers in backward, which would repeat hooks.
    model = DenseNet(growth_rate, block_config, num_init_features=64, num_classes=num_classes, memory_efficient=False)
    model.features.conv0 = stem_conv(in_channels, image_size)
    nn.init.kaiming_normal_(model.features.conv0.weight)  # as torchvision
    if image_size < IMAGENET_MIN_SIZE:
        # CIFAR stem (Huang et al. §3): no pool0, so a 32-px input reaches the last block at 4×4.
        model.features.pool0 = nn.Identity()
    return model


@register_model("densenet121")
def densenet121(*, num_classes: int, in_channels: int, image_size: int) -> DenseNet:
    """DenseNet-121 (Huang et al. 2017): growth rate 32, blocks (6, 12, 24, 16)."""
    return _densenet(32, (6, 12, 24, 16), num_classes=num_classes, in_channels=in_channels, image_size=image_size)
