"""method=epr: integer latents in a transform domain, an affine decoder and a learned Laplace (or
spike-and-slab) prior; the file codes the latents under that prior and decodes to the trained model exactly."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnncomp
from cnncomp.compression import build_method, codec, compress_model, compress_module, entropy
from cnncomp.compression.epr import EPRWeight, laplace_log2_pmf, rate_bits, spike_laplace_log2_pmf
from cnncomp.models import build_model
from cnncomp.train import train
from cnncomp.training.engine import build_optimizer
from cnncomp.transforms import basis


def _epr_lenet(seed=0, init="variance", kernel="dct", **options):
    torch.manual_seed(seed)
    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    model, _ = compress_model(model, kernel=kernel, layers="all", keep=1.0, method="epr", init=init, **options)
    return model


def _layers(model):
    return [
        m
        for m in model.modules()
        if hasattr(m, "parametrizations") and isinstance(m.parametrizations.weight[0], EPRWeight)
    ]


def _train_toy(model, steps=30, rate_weight=1.0, seed=0, **options):
    """A few Adam steps on random images and labels with EPR's penalty (N = 1000 examples)."""
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    method = build_method("epr", rate_weight=rate_weight, **options)
    penalty = method.penalty(model, stage=method.stages(1)[0], epoch=1, num_train=1000)
    opt = build_optimizer(model, name="adamw", lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        (F.cross_entropy(model(x), y) + (penalty() if penalty else 0)).backward()
        opt.step()
    return method


def _finish_and_write(model, method, path):
    """Finish `model`, then (inputs, its logits, the estimated bits, the FileStats of its file at `path`)."""
    method.finish(model)
    model.eval()
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, estimate = model(x), float(rate_bits(model))
    return x, logits, estimate, codec.write_file(path, model.state_dict(), {}, codec.CodecSpec(other="float32"))


def _laplace_cdf(x, s):
    return torch.where(x < 0, 0.5 * torch.exp(x / s), 1 - 0.5 * torch.exp(-x / s))


def test_the_laplace_pmf_is_the_cdf_difference_and_sums_to_one():
    log_scale = torch.tensor([-2.0, 0.0, 1.5, 3.0], dtype=torch.float64)[:, None]
    s = log_scale.exp()
    k = torch.arange(-400, 401, dtype=torch.float64)[None, :]
    p = 2 ** laplace_log2_pmf(k, log_scale)
    ref = (_laplace_cdf(k + 0.5, s) - _laplace_cdf(k - 0.5, s)).clamp_min(2.0**-24)
    assert torch.allclose(p, ref, rtol=1e-6, atol=0)  # the reference cancels in the tails: 1e-16 / p
    # the floor 2^-24 (the coder's leaky minimum) adds at most 801·2^-24; s = e^3 leaves mass past ±400
    assert torch.allclose(p.sum(1)[:3], torch.ones(3, dtype=torch.float64), atol=801 * 2.0**-24)
    # continuous arguments too (the relaxed training rate): F(x + ½) − F(x − ½)
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    s = torch.tensor(0.3, dtype=torch.float64).exp()
    ref = _laplace_cdf(x + 0.5, s) - _laplace_cdf(x - 0.5, s)
    assert torch.allclose(2 ** laplace_log2_pmf(x, s.log()), ref, rtol=1e-9)


@pytest.mark.parametrize("kernel", ["dct", "dst", "dft", "wavelet", "identity"])
def test_projection_rounds_to_a_small_error_and_the_decoder_costs_a_few_floats(kernel):
    torch.manual_seed(0)
    dense = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    model = _epr_lenet(seed=0, kernel=kernel, init="project")  # the same seed: the same dense weights
    pairs = zip(_layers(model), [m for m in dense.modules() if isinstance(m, (nn.Linear, nn.Conv2d))], strict=True)
    for m, d in pairs:
        err = float((m.weight - d.weight).detach().norm() / d.weight.detach().norm())
        # rounding error std a/√12 with a = 0.25 × the group's std: about 7 % of the weights'
        assert 0.03 < err < 0.12, err
        groups = 25 if d.weight.ndim == 4 else 1
        assert m.parametrizations.weight[0].stored() == d.weight.numel() + 3 * groups


def test_gradients_reach_the_latents_the_decoder_and_the_prior():
    model = _epr_lenet()
    method = build_method("epr")
    penalty = method.penalty(model, stage=method.stages(1)[0], epoch=1, num_train=100)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    (F.cross_entropy(model(x), y) + penalty()).backward()
    for m in _layers(model):
        p = m.parametrizations.weight[0]
        for t in (m.parametrizations.weight.original, p.decoder_log_step, p.decoder_shift, p.prior_log_scale):
            assert t.grad is not None and t.grad.abs().sum() > 0
    # the prior's scale gets its gradient from the rate only, the decoder from the data only
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert all(m.parametrizations.weight[0].prior_log_scale.grad is None for m in _layers(model))


def test_its_decoder_and_prior_take_no_weight_decay():
    layer = compress_module(nn.Linear(8, 4), kernel="dct", keep=1.0, method="epr")
    decayed, exempt = build_optimizer(layer, name="sgd", lr=0.1, weight_decay=0.1).param_groups
    p = layer.parametrizations.weight[0]
    assert {id(t) for t in exempt["params"]} == {
        id(layer.bias),
        id(p.decoder_log_step),
        id(p.decoder_shift),
        id(p.prior_log_scale),
    }


def test_a_layer_of_zero_latents_decodes_to_the_inverse_transformed_bias():
    conv = compress_module(nn.Conv2d(3, 4, 5), kernel="dct", keep=1.0, method="epr")
    p = conv.parametrizations.weight[0]
    with torch.no_grad():
        conv.parametrizations.weight.original.zero_()
        p.decoder_shift.copy_(torch.randn(p.decoder_shift.shape))
    # C = a·(0 + β) = b at every (out, in) frequency of its (kh, kw) position, inverse-transformed on all four axes
    coeffs = (p.decoder_log_step.exp() * p.decoder_shift).detach().expand(4, 3, 5, 5)
    bo, bi, bk = (basis("dct", n, dtype=torch.float32) for n in (4, 3, 5))
    expected = torch.einsum("po,qi,rh,sw,pqrs->oihw", bo, bi, bk, bk, coeffs)
    assert torch.allclose(conv.weight, expected, atol=1e-6)
    model = nn.Sequential(conv)
    data, stats = codec.encode(model.state_dict(), {}, codec.CodecSpec(other="float32"))
    assert stats.tensors["0.parametrizations.weight.original"] == 0  # one symbol: nothing coded
    _, decoded = codec.decode(data)
    model.load_state_dict(decoded)
    assert torch.allclose(conv.weight, expected, atol=1e-6)
    assert torch.equal(decoded["0.parametrizations.weight.original"], torch.zeros(4, 3, 5, 5))


@pytest.mark.parametrize("prior", ["laplace", "spike_laplace"])
def test_estimated_bits_match_the_coded_latents_and_the_file_decodes_to_the_same_outputs(tmp_path, prior):
    model = _epr_lenet(prior=prior)
    method = _train_toy(model, prior=prior)
    x, logits, estimate, stats = _finish_and_write(model, method, tmp_path / "m.cnnc")
    coded = sum(bits for name, bits in stats.tensors.items() if name.endswith(".original"))
    assert coded == stats.value_bits
    assert abs(coded / estimate - 1) < 0.03, (coded, estimate)
    assert estimate > 10_000  # enough coded bits that the coder's flush and fixed point are small
    # the decoder and the prior: 3 floats per group (25 per conv, 1 per linear; 4 with the spike),
    # finished to float16 numbers, so the file keeps them exactly at 2 bytes each
    side = sum(bits for name, bits in stats.tensors.items() if ".parametrizations.weight.0." in name)
    assert side == 16 * (3 if prior == "laplace" else 4) * (25 + 25 + 1 + 1 + 1)
    _, decoded = codec.read_file(tmp_path / "m.cnnc")
    fresh = _epr_lenet(seed=5, prior=prior)
    build_method("epr", prior=prior).restore(fresh, decoded)
    fresh.load_state_dict(decoded)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), logits)
    # default codec: the latents, decoder and prior are still exact; only biases go to float16
    _, half = codec.decode(codec.encode(model.state_dict())[0])
    for name, t in model.state_dict().items():
        if ".parametrizations." in name:
            assert torch.equal(half[name], t), name


def test_unfinished_latents_are_refused_by_the_codec_and_restore():
    model = _epr_lenet()
    with torch.no_grad():
        _layers(model)[0].parametrizations.weight.original.add_(0.3)
    with pytest.raises(ValueError, match="must be int32 integers"):
        codec.encode(model.state_dict())
    with pytest.raises(ValueError, match="must be integers"):
        build_method("epr").restore(model, model.state_dict())


def test_the_rate_falls_when_lambda_grows():
    rates = []
    for lam in (0.0, 1.0, 10.0):
        model = _epr_lenet()
        _train_toy(model, steps=40, rate_weight=lam)
        with torch.no_grad():
            rates.append(float(rate_bits(model)))
    assert rates[0] > rates[1] > rates[2]
    assert rates[2] < 0.98 * rates[0]  # 40 Adam steps of 1e-2 move a latent by 0.4 at most


def test_the_penalty_is_lambda_ln2_bits_per_example():
    model = _epr_lenet()
    method = build_method("epr", rate_weight=3.0)
    penalty = method.penalty(model, stage=method.stages(2)[0], epoch=1, num_train=500)
    torch.manual_seed(0)
    value = penalty().detach().item()
    torch.manual_seed(0)
    assert value == pytest.approx(3.0 * math.log(2) / 500 * rate_bits(model, relaxed=True).detach().item(), rel=1e-6)
    assert build_method("epr", rate_weight=0.0).penalty(model, stage=method.stages(2)[0], epoch=1, num_train=5) is None


@pytest.mark.parametrize(
    "bad",
    [{"rate_weight": -1.0}, {"init_step": 0}, {"rate_weight": "a"}, {"prior": "gauss"}, {"group": "filter"},
     {"biases": "fp8"}],
)  # fmt: skip
def test_bad_options_name_the_value(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        build_method("epr", **bad)


@pytest.mark.parametrize(
    "options", [[], ["kernel=identity", "method.prior=spike_laplace", "method.group=layer", "method.biases=latents"]]
)
def test_it_trains_through_the_app_and_loads_from_its_file(make_cfg, quick, tmp_path, options):
    cfg = make_cfg(quick + ["recipe=epr", "trainer.max_epochs=2", "method.rate_weight=0.5", *options])
    result = train(cfg, tmp_path)
    assert result["status"] == "completed", result["error"]
    assert result["method"] == "epr"
    assert result["file_bytes"] == (tmp_path / "model.cnnc").stat().st_size
    assert result["file_ratio"] == pytest.approx(4 * result["dense_params"] / result["file_bytes"])
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert "rate_bits" in rows[0]
    model = cnncomp.load(tmp_path)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    latents = [t for n, t in state.items() if n.endswith(".original")]
    assert latents and all(torch.equal(t, t.round()) for t in latents)
    loaded = model.state_dict()
    for name, t in state.items():
        if ".parametrizations." in name:
            assert torch.equal(loaded[name], t), name
    assert isinstance(_layers(model)[0].parametrizations.weight[0], EPRWeight)
    assert np.isfinite(result["test_acc"])


def test_finish_rounds_the_decoder_and_the_prior_to_float16_numbers():
    model = _epr_lenet()
    _train_toy(model, steps=3)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    p = _layers(model)[0].parametrizations.weight[0]
    with torch.no_grad():  # a shift beyond float16's range stays as it is (the file keeps it at float32)
        p.decoder_shift[0, 0, 0, 0] = 1e6
        before["features.0.parametrizations.weight.0.decoder_shift"][0, 0, 0, 0] = 1e6
    build_method("epr").finish(model)
    floats = [n for n in before if n.rsplit(".", 1)[1] in ("decoder_log_step", "decoder_shift", "prior_log_scale")]
    assert len(floats) == 15
    after = model.state_dict()
    for name in floats:
        t, b = after[name], before[name]
        fits = b.abs() < 65504
        assert torch.equal(t[fits], b[fits].half().float()), name
        assert torch.equal(t[~fits], b[~fits]), name
        assert not torch.equal(t, b), name  # trained floats were not float16 numbers before
        assert ((t - b)[fits].abs() <= 2**-11 * b[fits].abs() + 2**-25).all(), name  # to the nearest
    data, stats = codec.encode(after)
    _, decoded = codec.decode(data)
    assert all(torch.equal(decoded[n], after[n]) for n in floats)
    shift = "features.0.parametrizations.weight.0.decoder_shift"
    assert [stats.tensors[n] for n in floats if n != shift] == [16 * after[n].numel() for n in floats if n != shift]
    assert stats.tensors[shift] == 32 * 25


def test_the_spike_and_slab_pmf_is_a_point_mass_and_the_laplace_on_the_nonzero_integers():
    log_scale = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)[:, None]
    zero_logit = torch.tensor([-2.0, 1.0, 4.0], dtype=torch.float64)[:, None]
    pi, k = torch.sigmoid(zero_logit), torch.arange(-60, 61, dtype=torch.float64)[None, :]
    p = 2 ** spike_laplace_log2_pmf(k, log_scale, zero_logit)
    scale = log_scale.exp()  # the slab from the Laplace's CDF (|k| ≤ 10: no cancellation in float64)
    laplace = _laplace_cdf(k + 0.5, scale) - _laplace_cdf(k - 0.5, scale)
    slab = laplace / (1 - (_laplace_cdf(torch.tensor(0.5), scale) - _laplace_cdf(torch.tensor(-0.5), scale)))
    ref = torch.where(k == 0, pi, (1 - pi) * slab).clamp_min(2.0**-24)
    near = k.abs().squeeze(0) <= 10
    assert torch.allclose(p[:, near], ref[:, near], rtol=1e-9, atol=0)
    assert torch.allclose(p.sum(1), torch.ones(3, dtype=torch.float64), atol=121 * 2.0**-24)
    # the codec's table over the integers is the same pmf, from the same stored float32 numbers
    for i in range(3):
        table = entropy.spike_laplace_pmf(-60, 60, math.exp(log_scale[i].item()), pi[i].item())
        assert np.allclose(table, p[i].numpy(), rtol=1e-9, atol=2.0**-24)


def test_the_spike_and_slab_training_rate_is_the_expected_bits_of_random_rounding():
    layer = compress_module(nn.Linear(4, 3), kernel="identity", keep=1.0, method="epr", prior="spike_laplace")
    p = layer.parametrizations.weight[0]
    with torch.no_grad():
        p.prior_log_scale.fill_(1.0)
        p.prior_zero_logit.fill_(3.0)
    bits = {k: -p.log2_prior(torch.tensor(float(k))).item() for k in (-2, -1, 0, 1, 2)}
    z = torch.tensor([0.0, 0.25, -0.75, 1.0, 1.5], requires_grad=True)
    rate = p.rate_bits(z, relaxed=True)
    expected = bits[0] + (0.75 * bits[0] + 0.25 * bits[1]) + (0.75 * bits[-1] + 0.25 * bits[0]) + bits[1]
    expected += 0.5 * bits[1] + 0.5 * bits[2]
    assert rate.item() == pytest.approx(expected, rel=1e-6)
    rate.backward()
    # the slope between two integers is the difference of their bits: leaving 0 costs ~ all of them
    slopes = [bits[1] - bits[0], bits[1] - bits[0], bits[0] - bits[-1], bits[2] - bits[1], bits[2] - bits[1]]
    assert torch.allclose(z.grad, torch.tensor(slopes), rtol=1e-5)
    assert bits[1] - bits[0] > 4  # π = σ(3): leaving 0 costs far more than the slab's slope 1/(s ln 2)
    # at integers the relaxed rate is the coded one
    ints = torch.tensor([[0.0, 3.0, -1.0, 0.0]] * 3)
    assert p.rate_bits(ints, relaxed=True).item() == pytest.approx(p.rate_bits(ints, relaxed=False).item())


def test_the_spike_and_slab_prior_codes_sparse_latents_near_their_entropy_and_below_the_laplace():
    """Latents 95 % zero, the rest spread over ±1…±20 (what a strong rate leaves: most weights off,
    the kept ones at several levels): the best spike-and-slab lands within 2 % of their empirical
    entropy; the best Laplace cannot have both a high p(0) and a slow tail, and costs ≥ 25 % more."""
    torch.manual_seed(0)
    n = 40_000
    slab = torch.distributions.Laplace(0.0, 5.0).sample((n,)).round().clamp(-20, 20)
    z = torch.where(torch.rand(n) < 0.95, torch.zeros(n), slab).reshape(200, 200)
    _, counts = torch.unique(z, return_counts=True)
    entropy_bits = float(-(counts * torch.log2(counts / n)).sum())
    coded = {}
    for prior in ("laplace", "spike_laplace"):
        layer = compress_module(nn.Linear(200, 200), kernel="identity", keep=1.0, method="epr", prior=prior)
        p, model = layer.parametrizations.weight[0], nn.Sequential(layer)  # the codec names layers in a model
        with torch.no_grad():
            layer.parametrizations.weight.original.copy_(z)
            p.fit(z.clone())  # the prior's initial fit (scale mean |z|, the spike from the zeros)
        opt = torch.optim.Adam([t for t in (p.prior_log_scale, p.prior_zero_logit) if t is not None], lr=0.05)
        for _ in range(400):  # the prior's maximum likelihood fit on these latents
            opt.zero_grad()
            p.rate_bits(z, relaxed=False).backward()
            opt.step()
        build_method("epr", prior=prior).finish(model)
        _, stats = codec.encode(model.state_dict(), {}, codec.CodecSpec(other="float32"))
        coded[prior] = stats.value_bits
        estimate = float(p.rate_bits(z, relaxed=False).detach())
        assert abs(stats.value_bits / estimate - 1) < 0.01  # the coder codes with the trained model
    assert coded["spike_laplace"] < 1.02 * entropy_bits, (coded, entropy_bits)
    assert coded["laplace"] > 1.25 * entropy_bits, (coded, entropy_bits)


def test_the_spike_is_fitted_to_the_zeros_trained_and_finished_like_the_other_floats():
    model = _epr_lenet(prior="spike_laplace", init="project")
    layers = [m.parametrizations.weight[0] for m in _layers(model)]
    for p, m in zip(layers, _layers(model), strict=True):
        k = m.parametrizations.weight.original.detach().round().abs()
        zeros = (k == 0).float().mean((0, 1), keepdim=True)
        pi = torch.sigmoid(p.prior_zero_logit)
        # π the share of zeros but at least ½; maximum likelihood: the geometric's mean r/(1 − r) that of |k| − 1 ≠ 0
        assert torch.allclose(pi, zeros.clamp(0.5, 0.99), atol=1e-5)
        nonzero = (k > 0).float()
        mean = ((k - 1) * nonzero).sum((0, 1), keepdim=True) / nonzero.sum((0, 1), keepdim=True)
        r = torch.exp(-1 / p.prior_log_scale.exp())
        assert torch.allclose(r / (1 - r), mean, rtol=1e-4)
    method = _train_toy(model, steps=2, prior="spike_laplace")
    assert all(p.prior_zero_logit.grad is not None and p.prior_zero_logit.grad.abs().sum() > 0 for p in layers)
    decayed, exempt = build_optimizer(model, name="sgd", lr=0.1, weight_decay=0.1).param_groups
    assert {id(p.prior_zero_logit) for p in layers} <= {id(t) for t in exempt["params"]}
    method.finish(model)
    assert all(torch.equal(p.prior_zero_logit, p.prior_zero_logit.half().float()) for p in layers)


def test_one_group_a_layer_fits_the_whole_layer_and_stores_four_floats():
    model = _epr_lenet(prior="spike_laplace", init="project", kernel="identity", group="layer")
    conv = _layers(model)[1]
    p, z = conv.parametrizations.weight[0], conv.parametrizations.weight.original
    assert all(t.shape == (1, 1, 1, 1) for t in p.floats()) and len(p.floats()) == 4
    # b = the layer's mean, a = init_step × its std: Z has mean 0 and std 1/init_step over the whole layer
    assert abs(z.mean().item()) < 1e-4 and z.std().item() == pytest.approx(1 / 0.25, rel=1e-4)
    assert torch.allclose(conv.weight, p.decode(z).detach(), atol=0.5 * p.decoder_log_step.exp().item() + 1e-7)
    method = _train_toy(model, steps=3, prior="spike_laplace", group="layer")
    method.finish(model)
    _, stats = codec.encode(model.state_dict(), {}, codec.CodecSpec(other="float32"))
    floats = sum(bits for name, bits in stats.tensors.items() if ".parametrizations.weight.0." in name)
    assert floats == 16 * 4 * 5  # 4 float16 numbers a layer, 5 layers (25 groups a conv layer by position)


def test_biases_as_latents_are_coded_under_their_prior_and_decode_to_the_same_outputs(tmp_path):
    options = {"prior": "spike_laplace", "group": "layer", "biases": "latents"}
    model = _epr_lenet(init="project", kernel="identity", **options)
    conv = _layers(model)[0]
    bias = conv.parametrizations.bias
    assert isinstance(bias[0], EPRWeight) and bias.original.shape == (6,)
    assert all(t.shape == (1,) for t in bias[0].floats())
    with torch.no_grad():  # projected: the bias within half a step of its latent's decoding
        assert (conv.bias - bias[0].decode(bias.original)).abs().max() <= 0.5 * bias[0].decoder_log_step.exp() + 1e-7
    method = _train_toy(model, rate_weight=2.0, **options)
    assert bias.original.grad is not None and bias.original.grad.abs().sum() > 0
    with torch.no_grad():
        chains = [m.parametrizations.weight for m in _layers(model)]
        weights_only = sum(float(c[0].rate_bits(c.original, relaxed=False)) for c in chains)
        assert float(rate_bits(model)) > weights_only  # the biases' bits are in the rate
    x, logits, estimate, stats = _finish_and_write(model, method, tmp_path / "m.cnnc")
    assert stats.other_bits == 16 * 8 * 5  # no raw bias left: 8 float16 numbers a layer (weight's and bias's)
    assert abs(stats.value_bits / estimate - 1) < 0.03, (stats.value_bits, estimate)
    _, decoded = codec.read_file(tmp_path / "m.cnnc")
    assert torch.equal(decoded["features.0.parametrizations.bias.original"], bias.original.detach())
    fresh = _epr_lenet(seed=5, kernel="identity", **options)
    build_method("epr", **options).restore(fresh, decoded)
    fresh.load_state_dict(decoded)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), logits)
    decoded["features.0.parametrizations.bias.original"] += 0.5
    with pytest.raises(ValueError, match="features.0.parametrizations.bias.original: EPR latents must be integers"):
        build_method("epr", **options).restore(fresh, decoded)
