"""init=gain: every compressed layer amplifies a real batch as much as the dense init would."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnncomp.compression import compress_model, match_dense_gain
from cnncomp.compression.gain import input_energy
from cnncomp.models import build_model
from cnncomp.train import train


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


def _outputs(model: nn.Module, x: torch.Tensor) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """Each Linear/Conv2d layer's input and output (without bias) in one eval forward."""
    seen = {}

    def hook(m, inputs, output):
        bias = m.bias.view(-1, *([1] * (output.dim() - 2)))
        seen[m] = (inputs[0], output - bias)

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return seen


def test_input_energy_is_the_mean_squared_norm_of_a_patch():
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    x = torch.randn(4, 3, 9, 9)
    patches = F.unfold(x, 3, stride=2, padding=1)  # (N, C·k·k, L): zero-padded patches
    torch.testing.assert_close(input_energy(conv, x), patches.pow(2).sum(1).mean())
    rows = torch.randn(5, 7)
    torch.testing.assert_close(input_energy(nn.Linear(7, 2), rows), rows.pow(2).sum(1).mean())


def test_the_target_is_the_dense_inits_expected_gain():
    """E_W[mean (Wx)²] = σ²·input_energy for W with i.i.d. N(0, σ²) entries (padding included)."""
    torch.manual_seed(0)
    conv, x, sigma = nn.Conv2d(3, 64, 3, padding=1, bias=False), torch.rand(2, 3, 8, 8), 0.3
    ms = []
    for _ in range(200):
        conv.weight.data.normal_(0, sigma)
        ms.append(conv(x).pow(2).mean().item())
    assert sum(ms) / len(ms) == pytest.approx(sigma**2 * input_energy(conv, x).item(), rel=0.03)


@pytest.mark.parametrize("kernel,keep", [("dct", 0.1), ("wavelet", 0.25), ("identity", 0.1)])
def test_every_layer_then_has_the_dense_gain_on_the_batch(kernel, keep):
    torch.manual_seed(0)
    dense = _net()
    stds = [m.weight.std().item() for m in dense if isinstance(m, (nn.Linear, nn.Conv2d))]
    model, _ = compress_model(dense, kernel=kernel, layers="all", keep=keep, init="gain")
    x = torch.randn(16, 3, 16, 16)
    factors = match_dense_gain(model, x)
    assert len(factors) == 4
    layers = [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]
    seen = _outputs(model, x)
    for layer, std in zip(layers, stds, strict=True):
        inp, wx = seen[layer]
        assert wx.pow(2).mean().item() == pytest.approx(std**2 * input_energy(layer, inp).item(), rel=1e-4)


def test_it_scales_the_stored_values_only():
    torch.manual_seed(0)
    model, _ = compress_model(_net(), kernel="dct", layers="all", keep=0.1, init="gain")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    factors = match_dense_gain(model, torch.randn(8, 3, 16, 16))
    after = model.state_dict()
    assert after.keys() == before.keys() and model.training  # the model's mode is restored
    for name, factor in factors.items():
        stored = f"{name}.parametrizations.weight.original"
        torch.testing.assert_close(after[stored], before[stored] * factor)
        torch.testing.assert_close(after[f"{name}.bias"], before[f"{name}.bias"])


def test_a_low_pass_alexnet_starts_with_the_dense_signal_scale():
    """The variance init's low-pass AlexNet at keep 0.1 starts with logits many times the dense
    model's (each layer keeps the inputs' high-energy directions at 10× the dense energy each);
    init=gain brings them back to the dense scale."""
    x = torch.rand(32, 3, 32, 32).sub(0.5).mul(2)  # smooth enough: a post-ReLU mean does the rest

    def logits_rms(kernel: str, init: str) -> float:
        torch.manual_seed(0)
        model = build_model("alexnet", num_classes=10, in_channels=3, image_size=32)
        if kernel != "none":
            model, _ = compress_model(model, kernel=kernel, layers="all", keep=0.1, init=init)
        if init == "gain":
            match_dense_gain(model, x[:16])
        with torch.no_grad():
            return model.eval()(x[16:]).pow(2).mean().sqrt().item()

    dense = logits_rms("none", "variance")
    assert logits_rms("dct", "variance") > 4 * dense
    assert logits_rms("dct", "gain") == pytest.approx(dense, rel=0.5)


def test_the_train_app_runs_it_on_a_training_batch(make_cfg, quick, tmp_path, caplog):
    cfg = make_cfg([*quick, "kernel=dct", "kernel.keep=0.1", "method.init=gain"])
    with caplog.at_level("INFO", logger="cnncomp"):
        result = train(cfg, tmp_path)
    assert result["status"] == "completed"
    assert "init=gain:" in caplog.text


def test_an_unknown_init_names_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown init 'lsuv'; allowed: variance, gain, project"):
        compress_model(_net(), kernel="dct", layers="all", keep=0.5, init="lsuv")


def test_projecting_a_random_init_is_warned_about(make_cfg, quick, tmp_path, caplog):
    cfg = make_cfg([*quick, "recipe=frequency"])
    with caplog.at_level("WARNING", logger="cnncomp"):
        train(cfg, tmp_path)
    assert "method.init=project without model.pretrained projects a random init" in caplog.text
