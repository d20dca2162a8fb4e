"""LeNet-5: LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document recognition",
Proc. IEEE 1998 (modern variant: ReLU and max pooling)."""

from torch import nn

from ._common import classifier_net
from ._registry import register_model


def _lenet5(*, num_classes: int, in_channels: int, image_size: int) -> nn.Sequential:
    # LeCun et al. centred the 28-px MNIST digits in a 32-px field; padding 2 gives that geometry.
    padding = 2 if image_size == 28 else 0
    side = ((image_size + 2 * padding - 4) // 2 - 4) // 2  # two (5×5 conv, 2×2 pool) stages
    if side < 1:
        raise ValueError(f"LeNet-5 needs image_size >= 16, got {image_size}")
    features = nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding),  # (N, 6, 28, 28) at 28/32 px
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 6, 14, 14)
        nn.Conv2d(6, 16, kernel_size=5),  # (N, 16, 10, 10)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 16, 5, 5)
    )
    classifier = nn.Sequential(
        nn.Linear(16 * side * side, 120),  # 400 -> 120 at 28/32 px
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
    return classifier_net(features, classifier)


@register_model("lenet")
def lenet(*, num_classes: int, in_channels: int, image_size: int) -> nn.Sequential:
    """LeNet-5 (LeCun et al. 1998); 61,706 parameters for 1×28×28 inputs and 10 classes."""
    return _lenet5(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
