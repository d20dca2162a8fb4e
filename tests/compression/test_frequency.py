import math

import numpy as np
import pytest
import torch
import torch_dct
from torch import nn

from cnncomp import transforms
from cnncomp.compression import compress_module, fold, frequency, index_bits, layer_summary, stored_params
from cnncomp.training.engine import build_optimizer


def direct_row(kind: str, f: float, n: int, phase: float = 0.0) -> np.ndarray:
    """φ_f over j = 0 … n-1 from the formula, one sample at a time, then normalized."""
    if kind == "dct":
        row = [math.cos(math.pi * f * (j + 0.5) / n) for j in range(n)]
    elif kind == "dst":
        row = [math.sin(math.pi * (f + 1) * (j + 0.5) / n) for j in range(n)]
    else:
        row = [math.cos(2 * math.pi * f * j / n + phase) for j in range(n)]
    row = np.array(row)
    return row / np.linalg.norm(row)


def _frequency(module: nn.Module, kind: str, init: str = "variance") -> frequency.FrequencyWeight:
    compress_module(module.double(), kernel=kind, keep=0.5, method="frequency", init=init)
    return module.parametrizations.weight[0]


@pytest.mark.parametrize("kind", frequency.KERNELS)
@pytest.mark.parametrize("n", [1, 2, 5, 8, 16])
def test_integer_frequencies_are_the_basis_rows(kind, n):
    freq, phase = frequency.integer_grid(kind, n)
    rows = frequency.basis_functions(kind, freq, n, phase)
    assert torch.allclose(rows, transforms.basis(kind, n), atol=1e-13)


def test_a_square_linear_dct_at_init_is_torch_dcts_linear_dct():
    layer = nn.Linear(16, 16, bias=False)
    param = _frequency(layer, "dct")
    with torch.no_grad():
        layer.parametrizations.weight.original.fill_(1.0)
    x = torch.randn(7, 16, dtype=torch.float64)
    assert torch.allclose(layer(x), torch_dct.dct(x, norm="ortho"), atol=1e-12)
    # torch-dct builds its LinearDCT weight in float32
    assert torch.allclose(layer(x), torch_dct.LinearDCT(16, "dct", norm="ortho").double()(x), atol=1e-5)
    assert torch.equal(param.freq, torch.arange(16, dtype=torch.float64))


@pytest.mark.parametrize("kind", frequency.KERNELS)
def test_linear_outputs_are_real_and_match_the_basis_functions_at_learned_frequencies(kind):
    layer = nn.Linear(9, 6)
    param = _frequency(layer, kind)
    with torch.no_grad():  # off the integer grid, as after training
        param.freq.add_(torch.rand(6, dtype=torch.float64) * 0.9 + 0.05)
        if param.phase is not None:
            param.phase.uniform_(-3, 3)
    amp = layer.parametrizations.weight.original.detach().numpy()
    phases = param.phase.detach().numpy() if param.phase is not None else np.zeros(6)
    w = np.stack(
        [a * direct_row(kind, f, 9, p) for a, f, p in zip(amp, param.freq.detach().numpy(), phases, strict=True)]
    )
    x = torch.randn(4, 9, dtype=torch.float64)
    y = layer(x)
    assert not y.is_complex()
    assert np.allclose(y.detach().numpy(), x.numpy() @ w.T + layer.bias.detach().numpy(), atol=1e-12)
    assert np.allclose(np.linalg.norm(layer.weight.detach().numpy(), axis=1), np.abs(amp), atol=1e-12)


@pytest.mark.parametrize("kind", frequency.KERNELS)
def test_separable_conv_filters_match_the_basis_functions(kind):
    conv = nn.Conv2d(3, 4, (3, 5), padding=1)
    param = _frequency(conv, kind)
    with torch.no_grad():
        param.freq.add_(torch.rand(param.freq.shape, dtype=torch.float64) * 0.7)
        if param.phase is not None:
            param.phase.uniform_(-3, 3)
    freq, amp = param.freq.detach().numpy(), conv.parametrizations.weight.original.detach().numpy()
    phase = param.phase.detach().numpy() if param.phase is not None else np.zeros_like(freq)
    for o in range(4):
        for i in range(3):
            expected = amp[o, i] * np.outer(
                direct_row(kind, freq[0, o, i], 3, phase[0, o, i]), direct_row(kind, freq[1, o, i], 5, phase[1, o, i])
            )
            assert np.allclose(conv.weight[o, i].detach().numpy(), expected, atol=1e-12)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(conv(x), fold(conv)(x), atol=1e-12)


def test_frequencies_get_gradients_and_no_weight_decay():
    layer = nn.Linear(10, 4)
    param = _frequency(layer, "dft")
    assert torch.autograd.gradcheck(
        lambda f, p: frequency.basis_functions("dft", f, 10, p),
        (param.freq.detach().clone().add(0.3).requires_grad_(), param.phase.detach().clone().requires_grad_()),
    )
    optimizer = build_optimizer(layer, name="sgd", lr=0.1, weight_decay=0.1, momentum=0.9)
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(param.freq) in no_decay and id(param.phase) in no_decay
    assert id(layer.parametrizations.weight.original) not in no_decay


@pytest.mark.parametrize("kind", frequency.KERNELS)
def test_project_fits_the_largest_coefficient_of_each_row(kind):
    torch.manual_seed(0)
    basis = transforms.basis(kind, 12)
    coeffs = torch.randn(5, 12, dtype=torch.float64) * 0.1
    top = torch.tensor([0, 3, 7, 11, 5])
    coeffs[torch.arange(5), top] = torch.tensor([2.0, -3.0, 1.5, 2.5, -1.0], dtype=torch.float64)
    layer = nn.Linear(12, 5).double()
    with torch.no_grad():
        layer.weight.copy_(coeffs @ basis)
    _frequency(layer, kind, init="project")
    assert torch.allclose(layer.parametrizations.weight.original, coeffs[torch.arange(5), top], atol=1e-12)
    assert torch.allclose(layer.weight, coeffs[torch.arange(5), top, None] * basis[top], atol=1e-12)


@pytest.mark.parametrize(
    ("kind", "module", "values"),
    [
        ("dct", nn.Linear(400, 120), 120 * 2),
        ("dft", nn.Linear(400, 120), 120 * 3),
        ("dst", nn.Conv2d(6, 16, 5), 16 * 6 * 3),
        ("dft", nn.Conv2d(6, 16, 5), 16 * 6 * 5),
    ],
)
def test_state_dict_holds_only_amplitudes_frequencies_and_phases(kind, module, values):
    _frequency(module, kind)
    assert layer_summary(module).stored_params == values
    assert stored_params(module) == values + module.bias.numel()
    assert index_bits(module) == 0
    assert set(module.state_dict()) <= {
        "bias",
        "parametrizations.weight.original",
        "parametrizations.weight.0.freq",
        "parametrizations.weight.0.phase",
    }


def test_variance_init_keeps_the_dense_weight_variance():
    torch.manual_seed(0)
    layer = nn.Linear(400, 120)
    dense_std = layer.weight.detach().std()
    _frequency(layer, "dct")
    assert layer.weight.detach().std() / dense_std == pytest.approx(1.0, abs=0.15)


def test_frequency_needs_a_kernel_with_frequencies():
    for kernel in ("identity", "wavelet"):
        with pytest.raises(ValueError, match=f"method=frequency.*{kernel!r}.*dct, dst, dft"):
            compress_module(nn.Linear(4, 4), kernel=kernel, keep=0.5, method="frequency")
    with pytest.raises(ValueError, match="unknown method 'fourier'; allowed: epr, frequency, lowrank, sparse_vd"):
        compress_module(nn.Linear(4, 4), kernel="dct", keep=0.5, method="fourier")
