import pytest
import torch
from torch import nn

from cnncomp.compression import compress_module, fold, index_bits, layer_summary, lowrank, stored_params


def _lowrank(module: nn.Module, keep: float, init: str = "project") -> lowrank.LowRankWeight:
    compress_module(module, kernel="identity", keep=keep, method="lowrank", init=init)
    return module.parametrizations.weight[0]


@pytest.mark.parametrize(("m", "n", "keep", "rank"), [(120, 400, 0.1, 9), (84, 120, 0.25, 12), (10, 84, 1.0, 8)])
def test_linear_rank_is_the_largest_within_the_budget(m, n, keep, rank):
    assert lowrank.linear_rank(m, n, keep) == rank
    assert rank * (m + n) <= keep * m * n < (rank + 1) * (m + n) or rank == min(m, n)


def test_project_is_the_truncated_svd():
    # Eckart–Young: the rank-r error is the norm of the dropped singular values
    torch.manual_seed(0)
    layer = nn.Linear(60, 40).double()
    w = layer.weight.detach().clone()
    param = _lowrank(layer, keep=0.25)
    (r,) = param.ranks
    s = torch.linalg.svdvals(w)
    assert (layer.weight - w).norm().item() == pytest.approx(s[r:].norm().item(), rel=1e-10)
    u, v = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
    assert torch.allclose(u.T @ u, v @ v.T, atol=1e-10)  # balanced: both factors carry √s


def test_tucker2_at_full_ranks_reproduces_the_weight_and_hosvd_truncates():
    torch.manual_seed(0)
    w = torch.randn(8, 5, 3, 3, dtype=torch.float64)
    full = lowrank.LowRankWeight(w.shape, (8, 5))
    assert torch.allclose(full(*full.right_inverse(w)), w, atol=1e-12)
    core, a, b = lowrank.LowRankWeight(w.shape, (3, 2)).right_inverse(w)
    assert torch.allclose(a.T @ a, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(b.T @ b, torch.eye(2, dtype=torch.float64), atol=1e-12)
    # the core is the projection onto the factors' spans: the residual is orthogonal to them
    residual = w - torch.einsum("pqhw,op,iq->oihw", core, a, b)
    assert torch.einsum("oihw,op,iq->pqhw", residual, a, b).abs().max() < 1e-12


@pytest.mark.parametrize(
    ("module", "keep"), [(nn.Linear(400, 120), 0.1), (nn.Conv2d(6, 16, 5), 0.1), (nn.Conv2d(64, 128, 3), 0.25)]
)
def test_storage_within_budget_and_counted_by_the_state_dict(module, keep):
    dense = module.weight.numel()
    param = _lowrank(module, keep)
    summary = layer_summary(module)
    assert summary.stored_params == param.stored() <= keep * dense
    assert stored_params(module) == param.stored() + module.bias.numel()
    assert index_bits(module) == 0
    x = torch.randn(2, 400) if isinstance(module, nn.Linear) else torch.randn(2, module.in_channels, 9, 9)
    assert torch.allclose(module(x), fold(module)(x), atol=1e-5)


def test_tucker2_ranks_maximize_the_core():
    r_o, r_i = lowrank.tucker2_ranks(16, 6, 25, 0.1)
    assert (r_o, r_i) == (3, 2)  # 150 + 48 + 12 = 210 <= 240; no pair with a larger core fits
    assert lowrank.tucker2_ranks(6, 1, 25, 0.1) == (1, 1)  # nothing fits: the smallest factorization


def test_variance_init_keeps_the_dense_weight_variance():
    torch.manual_seed(0)
    for module in (nn.Linear(400, 120), nn.Conv2d(16, 32, 3)):
        std = module.weight.detach().std()
        _lowrank(module, 0.2, init="variance")
        assert module.weight.detach().std() / std == pytest.approx(1.0, abs=0.15)


def test_lowrank_needs_the_identity_kernel():
    with pytest.raises(ValueError, match="method=lowrank.*'dct'.*allowed: identity"):
        compress_module(nn.Linear(4, 4), kernel="dct", keep=0.5, method="lowrank")
