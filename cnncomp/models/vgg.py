"""VGG: Simonyan, Zisserman, "Very deep convolutional networks for large-scale image recognition",
ICLR 2015 (with batch norm, as torchvision's ``vgg*_bn``)."""

from torch import nn
from torchvision.models.vgg import VGG, cfgs, make_layers

from ._common import IMAGENET_MIN_SIZE, classifier_net
from ._registry import register_model


def _vgg(cfg: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    features = make_layers(cfgs[cfg], batch_norm=True)
    features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)  # make_layers assumes 3 channels
    if image_size >= IMAGENET_MIN_SIZE:
        return VGG(features, num_classes=num_classes)  # AdaptiveAvgPool2d(7) + 4096-wide head; inits all
    # Five floor-mode 2×2 pools take 28 px to 0; ceil mode gives 28→14→7→4→2→1 (32 px is unchanged).
    for module in features:
        if isinstance(module, nn.MaxPool2d):
            module.ceil_mode = True
    model = classifier_net(features, nn.Linear(512, num_classes), pool_size=1)  # (N, 512) -> (N, classes)
    # torchvision's VGG init (BatchNorm2d already starts at weight 1, bias 0).
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)
    return model


@register_model("vgg16")
def vgg16(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """VGG-16 with BatchNorm (Simonyan & Zisserman 2015, config D); one Linear(512, classes) below 64 px."""
    return _vgg("D", num_classes=num_classes, in_channels=in_channels, image_size=image_size)
