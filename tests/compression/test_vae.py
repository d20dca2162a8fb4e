"""method=vae: a VAE of each layer's weight blocks, fitted by the ELBO, then trained end to end through
its decoder; the file stores the latent means and the decoder."""

import math

import pytest
import torch
from torch import nn

import cnncomp
from cnncomp.compression import Stage, build_method, codec, compress_model, compress_module
from cnncomp.compression.vae import VAEWeight, block_layout, kl_divergence
from cnncomp.models import build_model
from cnncomp.plan import main as plan_main
from cnncomp.train import train
from cnncomp.transforms import basis


def _vae(module, **options):
    compress_module(module, kernel="identity", keep=1.0, method="vae", init="project", **options)
    return module.parametrizations.weight[0]


@pytest.fixture(scope="module")
def trained_lenet(tmp_path_factory, make_cfg, data_root, need, fashion_mnist):
    """LeNet-5 after one epoch on the real Fashion-MNIST (87 % test): filters with structure."""
    need(fashion_mnist, "Debian's dataset-fashion-mnist")
    run = tmp_path_factory.mktemp("lenet")
    result = train(make_cfg(["kernel=none", "trainer.max_epochs=1", f"dataset.root={data_root}"]), run)
    assert result["status"] == "completed" and result["test_acc"] > 0.8, result
    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    return model


@pytest.mark.parametrize(
    "shape, latent_dim, expected",
    [
        ((16, 6, 5, 5), 4, (96, 25, 25)),  # a Conv2d's kh×kw slices
        ((64, 32, 1, 1), 4, (64, 32, 16)),  # 1×1 filters: each filter's row in chunks
        ((120, 400), 4, (120, 400, 16)),
        ((10, 84), 4, (10, 84, 16)),  # 84 = 5·16 + 4: the last chunk zero-padded
    ],
)
def test_blocks_cut_and_paste_back_exactly(shape, latent_dim, expected):
    assert block_layout(shape, latent_dim, 16) == expected
    param = VAEWeight(shape, {}, latent_dim=latent_dim, block_size=16, hidden=8, fit_steps=0, dtype=torch.float32,
                      device="cpu")  # fmt: skip
    w = torch.randn(shape)
    blocks = param.to_blocks(w)
    assert blocks.shape == (expected[0] * math.ceil(expected[1] / expected[2]), expected[2])
    assert torch.equal(param.from_blocks(blocks), w)
    if shape == (10, 84):  # a row's 84 values, then 12 zeros of padding
        assert torch.equal(blocks[5, :4], w[0, 80:]) and not blocks[5, 4:].any()


@pytest.mark.parametrize("layer", ["features.3", "classifier.2"])
def test_the_fit_lowers_the_error_below_keeping_as_many_dct_coefficients(trained_lenet, layer):
    """ELBO fit on trained blocks: the error ‖x − decoder(μ)‖²/‖x‖² falls from the fresh VAE's and
    ends below that of each block's d lowest DCT coefficients (a block's own DCT, the same count)."""
    torch.manual_seed(0)
    module = dict(trained_lenet.named_modules())[layer]
    dense = module.weight.detach().clone()
    param = _vae(module)
    before, after = param.fit_errors
    blocks = param.to_blocks(dense)
    b = basis("dct", param.block).to(blocks.dtype)
    low = blocks @ b[: param.latent_dim].T @ b[: param.latent_dim]
    dct_error = float((blocks - low).square().sum() / blocks.square().sum())
    assert before > 0.9 and after < 0.9 * dct_error, (before, after, dct_error)
    with torch.no_grad():  # the layer's weight is the decoded blocks, at that same error
        error = float((module.weight - dense).square().sum() / dense.square().sum())
    assert error == pytest.approx(after, rel=1e-4)


def test_noise_only_while_gradients_flow_and_gradients_reach_every_part():
    torch.manual_seed(0)
    layer = nn.Linear(48, 8)
    param = _vae(layer, latent_dim=2, block_size=8, hidden=8, fit_steps=50)
    layer.train()
    with torch.no_grad():
        mean = layer.weight.clone()
        assert torch.equal(layer.weight, mean)  # no noise without gradients: folding, evaluation
    noisy = layer.weight
    assert not torch.allclose(noisy, mean)
    layer.eval()
    assert torch.equal(layer.weight.detach(), mean)
    layer.train()
    loss = layer(torch.randn(4, 48)).square().sum() + kl_divergence(layer)
    loss.backward()
    grads = {"original": layer.parametrizations.weight.original.grad, "log_var": param.latent_log_var.grad}
    grads |= {f"decoder.{n}": p.grad for n, p in param.decoder.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), grads.keys()


def test_the_kl_is_the_gaussians_and_the_penalty_weighs_it_per_example():
    torch.manual_seed(0)
    layer = nn.Linear(32, 4)
    param = _vae(layer, latent_dim=2, block_size=8, hidden=0, fit_steps=20)
    mu, log_var = layer.parametrizations.weight.original, param.latent_log_var
    posterior = torch.distributions.Normal(mu, (0.5 * log_var).exp())
    prior = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(posterior, prior).sum().detach()
    assert float(kl_divergence(layer).detach()) == pytest.approx(float(expected), rel=1e-5)
    method = build_method("vae", kl_weight=3.0)
    penalty = method.penalty(layer, stage=method.stages(2)[0], epoch=1, num_train=500)
    assert float(penalty().detach()) == pytest.approx(3.0 * float(expected) / 500, rel=1e-5)
    assert build_method("vae", kl_weight=0).penalty(layer, stage=method.stages(2)[0], epoch=1, num_train=5) is None


def test_stored_values_are_the_latent_means_and_the_decoder():
    torch.manual_seed(0)
    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    model, _ = compress_model(model, kernel="dct", layers="all", keep=1.0, method="vae", init="variance",
                                    fit_steps=5)  # fmt: skip
    fc = dict(model.named_modules())["classifier.0"].parametrizations.weight[0]
    assert fc.num_blocks == 120 * 25 and fc.stored() == 3000 * 4 + (4 * 32 + 32 + 32 * 16 + 16)
    build_method("vae").finish(model)
    state = model.state_dict()
    assert not any("latent_log_var" in n for n in state) and sum("prior_log_scale" in n for n in state) == 5
    floats = sum(t.numel() for t in state.values() if t.is_floating_point())
    compressed = [m for m in model.modules() if hasattr(m, "parametrizations")]
    stored = sum(m.parametrizations.weight[0].stored() + m.bias.numel() for m in compressed)
    assert len(compressed) == 5 and floats == stored


def test_finishing_rounds_the_latents_in_steps_of_sigma_without_changing_the_decoded_rounding():
    """k = round(μ / s), s the median σ per latent dimension, and s moved into the decoder: the
    finished layer's weight is the old decoder's at k·s; the codec codes k under the stored prior."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 16)
    param = _vae(layer, latent_dim=3, block_size=16, hidden=8, fit_steps=100)
    mu = layer.parametrizations.weight.original
    with torch.no_grad():
        param.latent_log_var.add_(torch.randn_like(param.latent_log_var))  # σ differing across blocks
        step = (0.5 * param.latent_log_var).exp().median(dim=0).values
        expected = param.from_blocks(param.decoder(torch.round(mu / step) * step))
    build_method("vae").finish(layer)
    assert param.latent_log_var is None and torch.equal(mu, mu.round())
    with torch.no_grad():
        assert torch.allclose(layer.weight, expected, atol=1e-6, rtol=1e-5)
    assert torch.allclose(param.prior_log_scale.exp(), mu.abs().mean(0, keepdim=True).clamp_min(1e-3))
    state = nn.Sequential(layer).state_dict()
    assert codec.kinds.tensor_kinds(state)["0.parametrizations.weight.original"] == "symbols"
    data, _ = codec.encode(state)
    _, decoded = codec.decode(data)
    assert torch.equal(decoded["0.parametrizations.weight.original"], mu.detach())


def test_the_means_stage_trains_the_network_the_file_stores():
    """The last `mean_epochs` train without sampling, at μ on finish's grid (straight through): the
    forward is deterministic in training, its gradient reaches μ, the KL still counts, and the
    finished (decoded) layer gives the same weight."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 16)
    param = _vae(layer, latent_dim=3, block_size=16, hidden=8, fit_steps=100)
    method = build_method("vae", mean_epochs=2)
    assert method.stages(5) == [Stage("vae", 3), Stage("means", 2)]
    assert build_method("vae").stages(5) == [Stage("vae", 5)]
    method.start_stage(layer, method.stages(5)[0])
    layer.train()
    assert not torch.equal(layer.weight, layer.weight)  # sampled latents
    method.start_stage(layer, method.stages(5)[1])
    mu = layer.parametrizations.weight.original
    first, second = layer.weight, layer.weight
    assert torch.equal(first, second)
    with torch.no_grad():
        expected = param.from_blocks(param.decoder(torch.round(mu / param.step()) * param.step()))
    assert torch.allclose(first, expected, atol=1e-6)
    (first.square().sum() + method.penalty(layer, stage=method.stages(5)[1], epoch=4, num_train=10)()).backward()
    assert mu.grad is not None and mu.grad.abs().sum() > 0
    method.finish(layer)
    with torch.no_grad():
        assert torch.allclose(layer.weight, first.detach(), atol=1e-5)
    with pytest.raises(ValueError, match="mean_epochs=5 leaves no epoch with sampled latents"):
        build_method("vae", mean_epochs=5).stages(5)


@pytest.mark.parametrize(
    "bad",
    [{"latent_dim": 0}, {"latent_dim": 2.5}, {"block_size": 4, "latent_dim": 4}, {"hidden": -1}, {"fit_steps": True},
     {"mean_epochs": -1},
     {"kl_weight": -1.0}, {"kl_weight": float("nan")}],
)  # fmt: skip
def test_bad_options_name_the_value(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        build_method("vae", **bad)


def test_a_latent_as_large_as_a_layers_block_is_refused():
    with pytest.raises(ValueError, match=r"latent_dim must be below the block size: got 4 for blocks of 3 .*\(2, 3\)"):
        compress_module(nn.Linear(3, 2), kernel="identity", keep=1.0, method="vae", latent_dim=4)


@pytest.mark.parametrize("mean_epochs", [0, 1])
def test_it_trains_through_the_app_and_the_file_decodes_to_the_quantized_model(
    make_cfg, quick, tmp_path, monkeypatch, mean_epochs
):
    options = ["recipe=vae", "trainer.max_epochs=2", "method.fit_steps=20", f"method.mean_epochs={mean_epochs}"]
    cfg = make_cfg(quick + options)
    result = train(cfg, tmp_path)
    assert result["status"] == "completed", result["error"]
    assert result["method"] == "vae"
    assert result["file_bytes"] == (tmp_path / "model.cnnc").stat().st_size
    assert "kl_bits" in (tmp_path / "metrics.csv").read_text().splitlines()[0]
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert not any("latent_log_var" in n for n in state)
    fitted = []  # the fit steps of every VAE fit: loading and the dry run need the structure, not a fit
    fit = VAEWeight.fit
    monkeypatch.setattr(VAEWeight, "fit", lambda self, coeffs: (fitted.append(self.fit_steps), fit(self, coeffs))[1])
    assert plan_main([*quick, "recipe=vae", "method.fit_steps=20", "--no-time"]) == 0
    model = cnncomp.load(tmp_path)
    assert fitted == [0] * 10  # LeNet-5's five layers, twice, none refitted
    expected = codec.quantize(state, codec.CodecSpec())
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[n], expected[n].to(loaded[n].dtype)) for n in expected)
    x = torch.randn(8, 1, 28, 28)
    reference = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    reference, _ = compress_model(reference, kernel="identity", layers="all", keep=1.0, method="vae", fit_steps=0)
    build_method("vae").finish(reference)
    reference.load_state_dict(expected)
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))
