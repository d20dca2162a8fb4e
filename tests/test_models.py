"""Model registry and architectures: shapes, gradients, exact parameter counts, torchvision parity."""

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils import parametrize

from cnncomp.models import build_model, list_models, register_model

SMALL_SHAPES = [(1, 28), (3, 32)]  # (in_channels, image_size): MNIST-like, CIFAR-like

# Parameters at num_classes=10. Independent references: LeNet-5 = 156 + 2,416 + 48,120 + 10,164 + 850;
# Caffe's LeNet-5 = 520 + 25,050 + 400,500 + 5,010 = 431,080 (Han et al. 2016, Table 2: 431K);
# ResNet-18 and VGG-16-BN (one Linear(512, 10)) equal the CIFAR models of kuangliu/pytorch-cifar;
# DenseNet-121 is that repo's count + 128 for torchvision's norm0 after the stem. AlexNet is pinned
# as measured (2.45 M conv + 21.02 M Linear at 3 channels). One channel removes 2 × (conv1 fan-out × k²).
PARAM_COUNTS = {
    ("lenet", 1, 28): 61_706,
    ("lenet", 3, 32): 62_006,
    ("lenet5_caffe", 1, 28): 431_080,
    ("lenet5_caffe", 3, 32): 657_080,  # fc1 sees 50×5×5 = 1,250 inputs
    ("alexnet", 1, 28): 23_468_746,
    ("alexnet", 3, 32): 23_471_946,
    ("resnet18", 1, 28): 11_172_810,
    ("resnet18", 3, 32): 11_173_962,
    ("vgg16", 1, 28): 14_727_114,
    ("vgg16", 3, 32): 14_728_266,
    ("densenet121", 1, 28): 6_955_274,
    ("densenet121", 3, 32): 6_956_426,
}

IMAGENET_REFERENCES = {
    "alexnet": torchvision.models.alexnet,
    "resnet18": torchvision.models.resnet18,
    "vgg16": torchvision.models.vgg16_bn,
    "densenet121": torchvision.models.densenet121,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Batches of 1-2 gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's
    # spinning workers made the DenseNet cases up to 20x slower (0.3 s -> 23 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize(("in_channels", "image_size"), SMALL_SHAPES)
@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name: str, in_channels: int, image_size: int, num_classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    # A full backward hook fails if a layer's output is later modified in place (e.g. ReLU(inplace=True)).
    fired: list[nn.Module] = []
    for layer in weight_layers(model):
        layer.register_full_backward_hook(lambda m, grad_in, grad_out: fired.append(m))
    # Input grads too, so that every hook sees a real grad_input (PyTorch warns otherwise).
    x = torch.randn(2, in_channels, image_size, image_size, requires_grad=True)
    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, num_classes - 1])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert sum(p.grad.abs().sum() for p in model.parameters()) > 0
    assert len(fired) == len(weight_layers(model))


@pytest.mark.parametrize(("name", "in_channels", "image_size"), list(PARAM_COUNTS))
def test_parameter_count(name: str, in_channels: int, image_size: int) -> None:
    model = build_model(name, num_classes=10, in_channels=in_channels, image_size=image_size)
    assert n_params(model) == PARAM_COUNTS[name, in_channels, image_size]


@pytest.mark.parametrize(("in_channels", "image_size"), SMALL_SHAPES)
def test_alexnet_parameters_sit_in_linear_layers(in_channels: int, image_size: int) -> None:
    model = build_model("alexnet", num_classes=10, in_channels=in_channels, image_size=image_size)
    linear = sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters())
    assert linear / n_params(model) > 0.8  # measured 0.8956 at 3×32


@pytest.mark.parametrize(("in_channels", "image_size", "padding"), [(1, 28, 2), (3, 32, 0)])
def test_lenet_classic_geometry(in_channels: int, image_size: int, padding: int) -> None:
    model = build_model("lenet", num_classes=10, in_channels=in_channels, image_size=image_size)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (in_channels, 6, (5, 5), (padding, padding)),
        (6, 16, (5, 5), (0, 0)),
    ]
    assert [(l.in_features, l.out_features) for l in linears] == [(400, 120), (120, 84), (84, 10)]


def test_lenet5_caffe_geometry() -> None:
    model = build_model("lenet5_caffe", num_classes=10, in_channels=1, image_size=28)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 20, (5, 5), (0, 0)),
        (20, 50, (5, 5), (0, 0)),
    ]
    assert [(l.in_features, l.out_features) for l in linears] == [(800, 500), (500, 10)]
    with pytest.raises(ValueError, match="15"):
        build_model("lenet5_caffe", num_classes=10, in_channels=1, image_size=15)


def test_lenet_other_sizes() -> None:
    model = build_model("lenet", num_classes=10, in_channels=1, image_size=64)
    assert model.classifier[0].in_features == 16 * 13 * 13  # 64 → 60 → 30 → 26 → 13
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 10)
    with pytest.raises(ValueError, match="15"):
        build_model("lenet", num_classes=10, in_channels=1, image_size=15)


@pytest.mark.parametrize("name", list_models())
def test_layers_are_plain_and_parametrizable(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=3, image_size=32).eval()
    layers = weight_layers(model)
    # Every parameter lives in a Conv2d, Linear or BatchNorm2d, and no two layers share a weight.
    owners = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear | nn.BatchNorm2d)]
    assert sum(p.numel() for m in owners for p in m.parameters(recurse=False)) == n_params(model)
    assert len({id(m.weight) for m in layers}) == len(layers)
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        for layer in layers:
            parametrize.register_parametrization(layer, "weight", nn.Identity())
        assert torch.equal(model(x), before)


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_imagenet_forward(name: str) -> None:
    model = build_model(name, num_classes=1000, in_channels=3, image_size=224).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize(
    ("image_size", "kernel", "stride", "pool"), [(224, 7, 2, nn.MaxPool2d), (32, 3, 1, nn.Identity)]
)
def test_resnet_stem(image_size: int, kernel: int, stride: int, pool: type[nn.Module]) -> None:
    model = build_model("resnet18", num_classes=10, in_channels=1, image_size=image_size)
    assert model.conv1.in_channels == 1
    assert model.conv1.kernel_size == (kernel, kernel) and model.conv1.stride == (stride, stride)
    assert type(model.maxpool) is pool


@pytest.mark.parametrize("name", sorted(IMAGENET_REFERENCES))
def test_imagenet_size_matches_torchvision(name: str) -> None:
    # On the meta device nothing is allocated; equal state_dict keys and shapes mean torchvision's
    # ImageNet weights load into the 224-px models.
    with torch.device("meta"):
        ours = build_model(name, num_classes=1000, in_channels=3, image_size=224)
        reference = IMAGENET_REFERENCES[name]()
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert shapes == {k: v.shape for k, v in reference.state_dict().items()}


def test_duplicate_registration_raises() -> None:
    before = list_models()
    with pytest.raises(ValueError, match="lenet"):
        register_model("lenet")(lambda **kwargs: nn.Identity())
    assert list_models() == before


def test_unknown_name_lists_allowed() -> None:
    with pytest.raises(ValueError) as info:
        build_model("lenet6", num_classes=10, in_channels=1, image_size=28)
    assert "lenet6" in str(info.value)
    assert all(name in str(info.value) for name in list_models())


@pytest.mark.parametrize("arg", ["num_classes", "in_channels", "image_size"])
def test_non_positive_sizes_raise(arg: str) -> None:
    kwargs = {"num_classes": 10, "in_channels": 1, "image_size": 28, arg: 0}
    with pytest.raises(ValueError, match=f"{arg} must be >= 1, got 0"):
        build_model("lenet", **kwargs)


def test_list_models_sorted() -> None:
    assert (
        list_models()
        == sorted(list_models())
        == [
            "alexnet",
            "densenet121",
            "lenet",
            "lenet5_caffe",
            "resnet18",
            "vgg16",
        ]
    )
