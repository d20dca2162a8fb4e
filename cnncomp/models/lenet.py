"""LeNet-5: LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document recognition",
Proc. IEEE 1998 (modern variant: ReLU and max pooling), and the "LeNet-5" the compression papers
measure on (Han et al. "Deep Compression", ICLR 2016; Molchanov et al. "Variational Dropout Sparsifies
Deep Neural Networks", ICML 2017): Caffe's 20-50-500 variant."""

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


@register_model("lenet5_caffe")
def lenet5_caffe(*, num_classes: int, in_channels: int, image_size: int) -> nn.Sequential:
    """Caffe's LeNet-5 (examples/mnist/lenet_train_test.prototxt), the "LeNet-5" of Deep Compression and
    Sparse VD: conv 20 and 50 5×5 (no padding), 2×2 max pooling, 500 hidden units, ReLU;
    431,080 parameters for 1×28×28 inputs and 10 classes."""
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ValueError(f"lenet5_caffe needs image_size >= 16, got {image_size}")
    features = nn.Sequential(
        nn.Conv2d(in_channels, 20, kernel_size=5),  # (N, 20, 24, 24) at 28 px
        nn.MaxPool2d(2),  # (N, 20, 12, 12)
        nn.Conv2d(20, 50, kernel_size=5),  # (N, 50, 8, 8)
        nn.MaxPool2d(2),  # (N, 50, 4, 4)
    )
    classifier = nn.Sequential(nn.Linear(50 * side * side, 500), nn.ReLU(), nn.Linear(500, num_classes))
    return classifier_net(features, classifier)
