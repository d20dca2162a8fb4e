import io
import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from cnncomp.compression import compress_module, fold, index_bits, layer_summary, stored_params
from cnncomp.compression.transform import SELECTIONS, block_sizes
from cnncomp.transforms import KINDS, basis

LAYERS = {
    "linear400x120": (lambda: nn.Linear(400, 120), (4, 400)),
    "conv6x16k5": (lambda: nn.Conv2d(6, 16, 5), (2, 6, 14, 14)),
    "conv64x64k3": (lambda: nn.Conv2d(64, 64, 3, padding=1), (2, 64, 8, 8)),
}
KEEPS = [0.5, 0.25, 0.1]


def make(layer: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    factory, shape = LAYERS[layer]
    torch.manual_seed(seed)
    return factory(), torch.randn(shape)


def best_achievable(sizes: list[int], keep: float) -> float:
    """Relative error of the best block by brute force over all integer sizes (small layers only)."""
    total = math.prod(sizes)
    return min(abs(math.prod(ks) / total / keep - 1) for ks in itertools.product(*[range(1, n + 1) for n in sizes]))


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("kernel", KINDS)
@pytest.mark.parametrize("layer", LAYERS)
def test_compressed_layer(layer, kernel, selection, keep):
    module, x = make(layer)
    compress_module(module, kernel=kernel, keep=keep, selection=selection)
    summary = layer_summary(module)

    # achieved keep within 10 % (relative) wherever integer block sizes allow it
    transformed = [module.weight.shape[i] for i, a in enumerate(("out", "in", "kh", "kw")) if a in summary.axes]
    allowed = max(0.1, best_achievable(transformed, keep) + 1e-9) if selection == "block" else 0.1
    assert abs(summary.achieved_keep / keep - 1) <= allowed

    # fold: a fresh dense layer with the same outputs
    dense = fold(module)
    assert type(dense) in (nn.Linear, nn.Conv2d) and not parametrize.is_parametrized(dense)
    y = module(x)
    assert (dense(x) - y).abs().max() <= 1e-5 * y.abs().max()

    # the state_dict holds exactly the stored numbers: coefficients + bias (+ a bool mask)
    state = module.state_dict()
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    assert sum(v.numel() for v in floats.values()) == stored_params(module)
    assert stored_params(module) == summary.stored_params + module.bias.numel()
    assert not any("basis" in k for k in state)  # bases are rebuilt, never stored
    assert ("parametrizations.weight.0.mask" in state) == (selection != "block")

    # reload into a freshly compressed module (different init) gives identical outputs
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh, _ = make(layer, seed=1)
    compress_module(fresh, kernel=kernel, keep=keep, selection=selection)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(fresh(x), y)


@pytest.mark.parametrize("kernel", KINDS)
@pytest.mark.parametrize("layer", LAYERS)
def test_keep_one_project_reproduces_dense_weight(layer, kernel):
    module, _ = make(layer)
    dense = module.weight.detach().clone()
    compress_module(module, kernel=kernel, keep=1.0, init="project")
    assert (module.weight - dense).abs().max() < 1e-6


@pytest.mark.parametrize("selection", SELECTIONS)
def test_project_is_the_orthogonal_projection(selection):
    module, _ = make("linear400x120")
    w = module.weight.detach().clone()
    compress_module(module, kernel="dct", keep=0.25, selection=selection, init="project")
    approx = module.weight.detach()
    coeffs = module.parametrizations.weight.original.detach()
    # Pythagoras: ‖W‖² = ‖P W‖² + ‖W − P W‖², and ‖P W‖ = ‖K‖ for an orthonormal basis
    assert torch.allclose((w**2).sum(), (approx**2).sum() + ((w - approx) ** 2).sum(), rtol=1e-5)
    assert torch.allclose((coeffs**2).sum(), (approx**2).sum(), rtol=1e-5)


def test_magnitude_keeps_the_largest_projected_coefficients():
    module, _ = make("conv6x16k5")
    w = module.weight.detach().clone().double()
    compress_module(module, kernel="dct", keep=0.1, selection="magnitude", init="project")
    full = w
    for axis, n in enumerate(w.shape):
        full = torch.movedim(torch.tensordot(full, basis("dct", n).T, dims=([axis], [0])), -1, axis)
    mask = module.parametrizations.weight[0].mask
    assert full.abs()[mask].min() >= full.abs()[~mask].max()


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("selection", SELECTIONS)
def test_variance_init_keeps_the_dense_weight_variance(layer, selection):
    module, _ = make(layer)
    dense_std = module.weight.detach().std()
    compress_module(module, kernel="dct", keep=0.25, selection=selection)
    assert module.weight.detach().std() / dense_std == pytest.approx(1.0, abs=0.15)


@pytest.mark.parametrize("layer", ["linear400x120", "conv6x16k5"])
def test_identity_kernel_is_a_masked_weight_with_no_rebuild_cost(layer):
    module, _ = make(layer)
    dense = module.weight.detach().clone()
    compress_module(module, kernel="identity", keep=0.1, selection="magnitude", init="project")
    param = module.parametrizations.weight[0]
    assert param.axes == () and param.rebuild_flops() == 0
    kept = dense.abs() >= dense.abs().flatten().kthvalue(dense.numel() - int(param.mask.sum()) + 1).values
    assert torch.equal(param.mask, kept)
    assert torch.equal(module.weight, dense * kept)


def test_block_linear_is_a_low_rank_factorization():
    module, x = make("linear400x120")
    compress_module(module, kernel="dst", keep=0.1)
    k = module.parametrizations.weight.original  # (k_out, k_in)
    b_out = basis("dst", 120, dtype=torch.float32)[: k.shape[0]]
    b_in = basis("dst", 400, dtype=torch.float32)[: k.shape[1]]
    factorized = ((x @ b_in.T) @ k.T) @ b_out + module.bias
    assert torch.allclose(factorized, module(x), atol=1e-5)


def test_block_sizes_hit_keep_with_sizes_as_equal_as_the_axes_allow():
    assert block_sizes([400, 120], 0.25) in ([110, 109], [109, 110])  # rank bound 109, not 60 (= 200 x 60)
    assert block_sizes([10, 84], 0.25) == [10, 21]  # a small axis is kept whole
    ks = block_sizes([512, 512, 3, 3], 0.1)
    assert abs(math.prod(ks) / (512 * 512 * 9) / 0.1 - 1) < 0.01
    assert block_sizes([7], 1.0) == [7] and block_sizes([7], 1e-6) == [1]


def test_axes_subset_transforms_only_those_axes():
    module, x = make("conv64x64k3")
    compress_module(module, kernel="dct", keep=0.25, axes=["in", "out"])
    s = layer_summary(module)
    assert s.axes == ("out", "in") and s.block[2:] == () and module.parametrizations.weight.original.shape[2:] == (3, 3)
    assert s.achieved_keep == pytest.approx(0.25, rel=0.02)


def test_wavelet_axis_that_cannot_be_decomposed_falls_back_to_identity():
    module, _ = make("conv64x64k3")
    compress_module(module, kernel="wavelet", keep=0.25, wavelet="db2")
    s = layer_summary(module)
    assert s.axes == ("out", "in")
    assert any("kh" in n and "identity" in n for n in s.notes)


def test_fold_of_a_model_leaves_the_original_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    compress_module(model[0], kernel="dct", keep=0.5)
    compress_module(model[4], kernel="dft", keep=0.25, selection="random")
    model.eval()
    x = torch.randn(3, 3, 8, 8)
    dense = fold(model)
    assert not any(parametrize.is_parametrized(m) for m in dense.modules())
    assert parametrize.is_parametrized(model[0]) and parametrize.is_parametrized(model[4])
    assert torch.allclose(dense(x), model(x), atol=1e-6)
    dense[1].running_mean += 1  # buffers are copies, not shared
    assert model[1].running_mean.abs().sum() == 0


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"kernel": "dct", "keep": 0.0}, ["keep", "0.0", "(0, 1]"]),
        ({"kernel": "dct", "keep": 1.5}, ["keep", "1.5"]),
        ({"kernel": "dct", "keep": True}, ["keep", "True"]),
        ({"kernel": "foo", "keep": 0.5}, ["'foo'", "dct", "wavelet"]),
        ({"kernel": "dct", "keep": 0.5, "selection": "best"}, ["'best'", "block", "triangle"]),
        ({"kernel": "wavelet", "keep": 0.5, "wavelet": "nope"}, ["'nope'", "haar"]),
        ({"kernel": "dct", "keep": 0.5, "axes": ["kh"]}, ["'kh'", "out", "in"]),
        ({"kernel": "dct", "keep": 0.5, "init": "zeros"}, ["'zeros'", "variance", "project"]),
        ({"kernel": "dct", "keep": 0.5, "colour": 1}, ["'colour'", "transform", "selection", "seed"]),
        ({"kernel": "dct", "keep": 0.5, "method": "autoencoder"}, ["'autoencoder'", "sparse_vd", "vae"]),
    ],
)
def test_bad_input_raises_value_error_naming_value_and_allowed(kwargs, words):
    with pytest.raises(ValueError) as err:
        compress_module(nn.Linear(8, 4), **kwargs)
    for w in words:
        assert w in str(err.value)


def test_unsupported_modules_raise():
    with pytest.raises(ValueError, match="Conv1d.*Linear, Conv2d"):
        compress_module(nn.Conv1d(3, 4, 3), kernel="dct", keep=0.5)
    with pytest.raises(ValueError, match="groups=4.*groups=1"):
        compress_module(nn.Conv2d(8, 8, 3, groups=4), kernel="dct", keep=0.5)
    twice = compress_module(nn.Linear(8, 4), kernel="dct", keep=0.5)
    with pytest.raises(ValueError, match="already parametrized"):
        compress_module(twice, kernel="dct", keep=0.5)


def test_index_bits_is_the_cheaper_of_bitmap_and_positions():
    dense = nn.Linear(400, 120)
    block = compress_module(nn.Linear(400, 120), kernel="dct", keep=0.25)
    sparse = compress_module(nn.Linear(400, 120), kernel="dct", keep=0.01, selection="magnitude")
    half = compress_module(nn.Linear(400, 120), kernel="dct", keep=0.5, selection="random")
    assert index_bits(dense) == 0 and index_bits(block) == 0
    assert index_bits(sparse) == 480 * 16  # 480 positions of ceil(log2 48000) = 16 bits < 48000
    assert index_bits(half) == 48_000  # a bitmap is cheaper than 24,000 positions
    assert index_bits(nn.Sequential(sparse, half)) == 480 * 16 + 48_000
