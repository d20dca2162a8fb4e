"""Fixtures of the CUDA tests: the device under test, tolerances, and compressed model pairs.

Every test here compares a result on the device under test against the fp32 CPU result of the
same model (built once on the CPU, its state copied to the device). The device is CUDA unless
`CNNCOMP_TEST_DEVICE=cpu`, which runs the same comparisons CPU against CPU (gloo instead of NCCL)
so that the test code itself runs on a machine without a GPU. Without CUDA and without the
variable, every test of this folder is skipped at collection (no fixture runs).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

HERE = Path(__file__).resolve().parent
DEVICES = ("cuda", "cpu")


def _device_name() -> str:
    name = os.environ.get("CNNCOMP_TEST_DEVICE", "cuda")
    if name not in DEVICES:
        raise pytest.UsageError(f"CNNCOMP_TEST_DEVICE={name!r}; allowed: {', '.join(DEVICES)}")
    return name


def pytest_collection_modifyitems(config, items):
    """Skip this folder's tests when the device under test is CUDA and there is none."""
    if _device_name() != "cuda" or torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device (CNNCOMP_TEST_DEVICE=cpu runs these tests CPU against CPU)")
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device under test: cuda (default) or cpu (`CNNCOMP_TEST_DEVICE=cpu`)."""
    return torch.device(_device_name())


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread(device):
    """CPU against CPU on a shared machine: one torch thread (two threads on two busy cores made a
    LeNet-5 step 400x slower here). On CUDA the CPU reference keeps the machine's threads."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 means fp32: no TF32 in matmuls or cuDNN convolutions (cuDNN's default allows it; its
    10-bit mantissa would dominate every fp32 tolerance below)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@dataclass(frozen=True)
class Tolerances:
    """Bounds on rel_err (max |a - b| / max |b| over a tensor), device result against fp32 CPU.

    fp32: the same network in another summation order (another GEMM tiling, cuDNN's Winograd or
    FFT convolutions, TF32 off): each output is a sum of k products computed with unit roundoff
    u = 2^-24 ~ 6e-8, whose order changes the result by at most ~k·u of the sum of magnitudes;
    k ~ 1e3 to 1e4 in these layers and a few layers compound: outputs 1e-4. Gradients of weights
    sum over batch and positions as well (k ~ 1e4 more terms, with cancellation): 1e-3.

    bf16 autocast, outputs: every product's inputs are rounded to bf16, u = 2^-8 ~ 3.9e-3 (8-bit
    mantissa; accumulation stays fp32). One rounded layer perturbs its outputs by ~u·√2 of their
    scale (weight and input rounded, errors independent over the k terms); over L rounded products
    in a row (each layer's input, and its W rebuilt by 2 to 4 mode products) they add in quadrature,
    ~u·√(2L), and the max over thousands of outputs is ~4 standard deviations out: 4·u·√(2L). LeNet-5
    has 5 layers of 3 to 5 rounded products each, L ≤ 25: 4 · 3.9e-3 · √50 = 0.11 (ResNet-18's
    BatchNorms rescale every block, so its error does not grow with depth). Measured (CPU bf16 against
    CPU fp32, every case of test_cuda_numerics): ≤ 0.044.

    bf16 autocast, gradients: no such bound holds per element or per tensor. Activations within u
    of a tie flip a ReLU or move a max-pool's argmax, which sends whole gradient entries elsewhere,
    and BatchNorm's backward subtracts nearly equal bf16-rounded terms (bias gradients measured up
    to 70 % off per tensor). What must hold is the whole gradient's direction: its relative l2
    error over all parameters, measured ≤ 0.36 (ResNet-18; LeNet-5 ≤ 0.17, i.e. cosine ≥ 0.93);
    bound 0.5 (cosine ≥ ~0.87): a wrong cast, layout or kernel gives an unrelated gradient, ~1.4.
    """

    fp32_out: float = 1e-4
    fp32_grad: float = 1e-3
    bf16_out: float = 4 * 2**-8 * math.sqrt(2 * 25)  # 0.110
    bf16_grad_l2: float = 0.5
    optimizer: float = 1e-5  # fused/foreach against the per-parameter update: elementwise, a few ulps a step
    loss_compile: float = 1e-3  # torch.compile against eager: fused elementwise kernels, reordered sums


@pytest.fixture(scope="session")
def tol() -> Tolerances:
    return Tolerances()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (b: the fp32 CPU reference), both taken to fp32 on the CPU."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


@pytest.fixture(scope="session")
def relative_error():
    """`relative_error(a, b)`: max |a - b| / max |b|, b the reference."""
    return rel_err


@pytest.fixture(scope="session")
def build_compressed(make_cfg):
    """`build_compressed(overrides, seed)`: the app's model for `overrides` (model, kernel, method,
    layers groups as on the command line), compressed as the app compresses it, on the CPU, from
    `torch.manual_seed(seed)`; the dataset's shape comes from the overrides' dataset."""
    from cnncomp.training.model import build_run_model, run_method

    def build(overrides: list[str], seed: int = 0) -> torch.nn.Module:
        config = OmegaConf.to_container(make_cfg(["dataset=synthetic", *overrides]), resolve=True)
        d = config["dataset"]
        torch.manual_seed(seed)
        model, *_ = build_run_model(
            config,
            run_method(config),
            num_classes=d["num_classes"],
            in_channels=d["in_channels"],
            image_size=d["image_size"] or 28,
        )
        return model

    return build


@pytest.fixture(scope="session")
def on_device(build_compressed, device):
    """`on_device(overrides, seed)`: (reference on the CPU, the same model on `device`): copies of
    one CPU build (built once a session per overrides: ResNet-18's Tucker-2 takes seconds), the
    device copy moved there with its state (masks included)."""
    built: dict[tuple, torch.nn.Module] = {}

    def pair(overrides: list[str], seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
        key = (tuple(overrides), seed)
        if key not in built:
            built[key] = build_compressed(overrides, seed)
        ref, dev = copy.deepcopy(built[key]), copy.deepcopy(built[key]).to(device)
        state = ref.state_dict()
        assert all(torch.equal(t.cpu(), state[k]) for k, t in dev.state_dict().items())
        return ref, dev

    return pair
