import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from scipy import integrate
from torch import nn

from cnncomp.compression import compress_module, fold, index_bits, layer_summary, sparse_vd, stored_params
from cnncomp.train import train

LAYERS = {
    "linear": (lambda: nn.Linear(12, 8), (5, 12)),
    "conv": (lambda: nn.Conv2d(3, 4, 3, padding=1, stride=2), (2, 3, 9, 9)),
}


def _learned(layer: str, kernel: str = "dct", **kw):
    torch.manual_seed(0)
    build, shape = LAYERS[layer]
    module = build().double()
    x = torch.randn(shape, dtype=torch.float64)
    dense = module(x).detach()
    compress_module(module, kernel=kernel, keep=kw.pop("keep", 1.0), method="sparse_vd", init="project", **kw)
    return module, x, dense


def _drop_some(module: nn.Module, fraction: float, seed: int):
    """Set log σ² so that a random `fraction` of the coefficients has log α = 5 (pruned), the rest
    log α ≈ -20; returns (parametrization, θ, the dropped mask)."""
    param = module.parametrizations.weight[0]
    theta = module.parametrizations.weight.original
    drop = torch.rand(theta.shape, generator=torch.Generator().manual_seed(seed)) < fraction
    with torch.no_grad():
        param.log_sigma2.copy_(torch.where(drop, 2 * theta.abs().log() + 5.0, torch.full_like(theta, -20.0)))
    return param, theta, drop


def _true_neg_kl(log_alpha: float) -> float:
    """−KL(N(θ, αθ²) ‖ log-uniform) up to the constant that makes it vanish as α → ∞:
    ½ log α − E_{ε~N(1, α)} log|ε| − (γ + log 2)/2, by numerical integration."""
    alpha = math.exp(log_alpha)

    def density(x):
        return math.log(abs(x)) * math.exp(-((x - 1) ** 2) / (2 * alpha)) / math.sqrt(2 * math.pi * alpha)

    e_log = sum(integrate.quad(density, a, b, limit=200)[0] for a, b in ((-np.inf, 0), (0, np.inf)))
    return 0.5 * log_alpha - e_log - (np.euler_gamma + math.log(2)) / 2


def test_kl_approximation_matches_the_exact_curve():
    # Molchanov et al. 2017 fit k1, k2, k3 to this curve; their approximation is within 0.01 of it
    log_alphas = np.linspace(-8, 8, 33)
    exact = np.array([_true_neg_kl(a) for a in log_alphas])
    approx = sparse_vd.neg_kl(torch.tensor(log_alphas)).numpy()
    assert np.abs(exact - approx).max() < 0.01
    assert approx[-1] == pytest.approx(0.0, abs=2e-4)  # → 0 for α → ∞ (the pruned limit)
    assert np.all(np.diff(approx) > 0)  # the KL falls monotonically as α grows


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("kernel", ["dct", "identity", "wavelet"])
def test_eval_is_the_mean_weight_and_training_samples_have_the_exact_moments(layer, kernel):
    module, x, dense = _learned(layer, kernel, threshold=100.0)  # nothing pruned
    param = module.parametrizations.weight[0]
    theta = module.parametrizations.weight.original
    module.eval()
    assert torch.allclose(module(x), dense, atol=1e-10)  # θ is the projection: W unchanged
    with torch.no_grad():
        param.log_sigma2.copy_(torch.empty_like(theta).uniform_(-4, -1))
    # exact output variance: Σ_k σ_k² (∂y/∂θ_k)², the output is linear in θ
    jac = torch.func.jacrev(lambda t: torch.func.functional_call(module, {"parametrizations.weight.original": t}, x))(
        theta.detach()
    )
    var = (jac.pow(2) * param.log_sigma2.exp().detach()).flatten(start_dim=dense.ndim).sum(-1)
    module.train()
    with torch.no_grad():
        samples = torch.stack([module(x) for _ in range(3000)])
    assert torch.allclose(samples.mean(0), dense, atol=4 * float(var.max().sqrt()) / math.sqrt(3000))
    ratio = samples.var(0).sum() / var.sum()
    assert ratio.item() == pytest.approx(1.0, abs=0.05)


def test_identity_kernel_is_the_papers_local_reparameterization():
    # kernel=identity: mean conv(x, θ), variance conv(x², σ²), one normal draw per output
    module, x, _ = _learned("conv", "identity")
    param = module.parametrizations.weight[0]
    theta = module.parametrizations.weight.original.detach()
    with torch.no_grad():
        param.log_sigma2.uniform_(-6, -2)
    module.train()
    torch.manual_seed(5)
    ours = module(x)
    kw = {"stride": 2, "padding": 1}
    mean = F.conv2d(x, theta, **kw)
    var = F.conv2d(x * x, param.log_sigma2.exp().detach(), **kw)
    torch.manual_seed(5)
    paper = mean + (var + 1e-8).sqrt() * torch.randn_like(mean) + module.bias.view(1, -1, 1, 1)
    assert torch.allclose(ours, paper, atol=1e-10)


@pytest.mark.parametrize("layer", LAYERS)
def test_pruning_stores_exactly_the_counted_coefficients(layer):
    module, x, _ = _learned(layer, "dct")
    param, theta, drop = _drop_some(module, 0.6, seed=1)
    kept, size = sparse_vd.sparsity(module)
    assert (kept, size) == (int((~drop).sum()), theta.numel())
    expected = theta.detach()[~drop].clone()
    module.eval()
    before = module(x)
    sparse_vd.prune(module)
    assert torch.equal(module.parametrizations.weight.original, expected)
    assert stored_params(module) == kept + module.bias.numel()
    assert index_bits(module) == min(size, kept * math.ceil(math.log2(size)))
    assert module.parametrizations.weight[0].mask.sum() == kept
    assert layer_summary(module).stored_params == kept
    assert torch.allclose(module(x), before, atol=1e-12)
    assert torch.allclose(fold(module)(x), before, atol=1e-12)
    assert "forward" not in vars(module)  # the class's own forward again


def test_keep_caps_the_number_of_kept_coefficients():
    module, x, _ = _learned("linear", "dct", keep=0.1)  # log σ² = -10: the threshold alone keeps ~all
    kept, total = sparse_vd.sparsity(module)
    assert kept == math.ceil(0.1 * total)
    sparse_vd.prune(module)
    assert stored_params(module) == kept + 8


def test_kl_divergence_sums_over_layers_and_is_zero_without_variational_layers():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    assert sparse_vd.kl_divergence(model).item() == 0.0
    for m in (model[0], model[2]):
        compress_module(m, kernel="dct", keep=1.0, method="sparse_vd")
    expected = sum(
        -sparse_vd.neg_kl(m.parametrizations.weight[0].log_alpha(m.parametrizations.weight.original)).sum()
        for m in (model[0], model[2])
    )
    assert sparse_vd.kl_divergence(model).item() == pytest.approx(expected.item())
    assert [sparse_vd.kl_weight(e, 4) for e in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert sparse_vd.kl_weight(1, 0) == 1.0


def test_log_sigma2_gets_no_weight_decay():
    from cnncomp.training.engine import build_optimizer

    model = nn.Sequential(nn.Linear(6, 5))
    compress_module(model[0], kernel="dct", keep=1.0, method="sparse_vd")
    opt = build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.1)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model[0].parametrizations.weight[0].log_sigma2) not in decayed
    assert id(model[0].parametrizations.weight.original) in decayed


def test_a_learned_run_records_the_pruned_model(tmp_path, make_cfg, quick):
    cfg = make_cfg(
        quick
        + ["method=sparse_vd", "trainer.optimizer=adamw", "trainer.lr=0.01", "kernel.keep=0.3"]
        + ["method.kl_warmup_epochs=0", "trainer.max_epochs=2"]
    )
    result = train(cfg, tmp_path)
    assert result["status"] == "completed", result["error"]
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    floats = sum(t.numel() for t in state.values() if t.is_floating_point())
    assert result["stored_params"] == floats
    assert not any("log_sigma2" in k for k in state)
    compressed = [r for r in result["layers_summary"] if r["compressed"]]
    assert all(r["achieved_keep"] <= 0.3 + 1e-9 for r in compressed)
    masks = [t for t in state.values() if t.dtype == torch.bool]
    assert sum(int(m.sum()) for m in masks) == sum(r["stored_params"] for r in compressed)
    assert result["index_bits"] > 0


@pytest.mark.parametrize("layer", LAYERS)
def test_freeze_fixes_the_kept_set_and_trains_deterministically(layer):
    module, x, _ = _learned(layer, "dct")
    param, theta, drop = _drop_some(module, 0.5, seed=2)
    sparse_vd.freeze(module)
    assert torch.equal(param.fixed, ~drop) and not param.log_sigma2.requires_grad
    with torch.no_grad():
        param.log_sigma2.fill_(10.0)  # would now drop everything: the fixed set must not move
        theta.mul_(1.5)
    assert torch.equal(param.kept(theta), ~drop)
    assert sparse_vd.kl_divergence(module).item() == 0.0  # frozen layers leave the objective
    module.train()
    a, b = module(x), module(x)
    assert torch.equal(a, b)  # no posterior noise
    module.eval()
    assert torch.allclose(a, module(x), atol=1e-12)
    a.square().sum().backward()
    assert theta.grad[drop].abs().max() == 0 and theta.grad[~drop].abs().max() > 0
    state = module.state_dict()
    assert state["parametrizations.weight.0.frozen"] and torch.equal(state["parametrizations.weight.0.fixed"], ~drop)


@pytest.mark.parametrize("devices", [1, 2])
def test_a_learned_run_fine_tunes_its_fixed_kept_set(tmp_path, devices, make_cfg, quick):
    cfg = make_cfg(
        quick
        + ["method=sparse_vd", "trainer.optimizer=adamw", "trainer.lr=0.01", "method.kl_scale=50"]
        + ["method.kl_warmup_epochs=0", "trainer.max_epochs=3", "method.finetune_epochs=2"]
        + ["trainer.device=cpu", f"trainer.devices={devices}", "dataset.num_train=200"]
    )
    result = train(cfg, tmp_path)
    assert result["status"] == "completed", result["error"]
    kept = [int(r.split(",")[-1]) for r in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    assert kept[1] == kept[2] < 61470  # the set fixed after epoch 1 does not change
    assert result["stored_params"] - 236 == kept[2]  # LeNet-5's 236 biases


def test_finetune_epochs_must_leave_a_sparse_vd_epoch(make_cfg, quick):
    from cnncomp.config import check_config
    from cnncomp.errors import ConfigError

    config = OmegaConf.to_container(make_cfg(quick + ["method=sparse_vd", "method.finetune_epochs=1"]))
    with pytest.raises(ConfigError, match="finetune_epochs=1 leaves no sparse VD epoch.*max_epochs=1"):
        check_config(config)
