"""AlexNet: Krizhevsky, Sutskever, Hinton, "ImageNet classification with deep convolutional neural
networks", NeurIPS 2012."""

from torch import nn
from torchvision.models import AlexNet

from ._common import IMAGENET_MIN_SIZE, classifier_net
from ._registry import register_model


def _small_alexnet(*, num_classes: int, in_channels: int) -> nn.Sequential:
    # torchvision's widths and conv2-5 kernels; the 11×11/4 stem becomes 5×5/1 and the 3×3/2 pools
    # 2×2/2, so a 32-px input ends at 4×4 (28 px: 3×3) instead of vanishing.
    features = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=5, padding=2),  # (N, 64, 32, 32)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 64, 16, 16)
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 192, 8, 8)
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 256, 4, 4)
    )
    # The paper's three-layer 4096-wide classifier keeps ~90% of the parameters in Linear layers.
    classifier = nn.Sequential(
        nn.Dropout(0.5),
        nn.Linear(256 * 2 * 2, 4096),  # after AdaptiveAvgPool2d(2): (N, 1024)
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Linear(4096, num_classes),
    )
    return classifier_net(features, classifier, pool_size=2)


def _alexnet(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    if image_size < IMAGENET_MIN_SIZE:
        return _small_alexnet(num_classes=num_classes, in_channels=in_channels)
    model = AlexNet(num_classes=num_classes)  # torchvision's, AdaptiveAvgPool2d(6) before the classifier
    model.features[0] = nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2)
    return model


@register_model("alexnet")
def alexnet(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """AlexNet (Krizhevsky et al. 2012): torchvision's at >= 64 px, a stride-1 CIFAR variant below."""
    return _alexnet(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
