"""Quantization-aware fine-tuning (codec.finetune_epochs): the run's last stage trains through the codec."""

import os
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import cnncomp
from cnncomp.compression import codec, compress_model, kinds, qat
from cnncomp.config import check_config
from cnncomp.errors import ConfigError
from cnncomp.models import build_model
from cnncomp.train import train
from cnncomp.training import engine
from cnncomp.training.model import build_run_model, codec_spec, run_method

DCT = ["kernel=dct", "method.selection=magnitude", "kernel.keep=0.2", "codec.bits=3"]
SPARSE_VD = ["recipe=sparse_vd", "method.finetune_epochs=1", "codec.bits=3"]
KMEANS = [*DCT, "codec=kmeans", "codec.bits=3"]


def lenet(kernel: str = "dct", method: str = "transform") -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    options = {"selection": "magnitude"} if method == "transform" else {}
    return compress_model(model, kernel=kernel, keep=0.2, layers="conv", method=method, **options)[0]


def fake_quantized_model(run_dir: Path, checkpoint: str = "last.pt") -> torch.nn.Module:
    """The model of a quantize-stage checkpoint as it trained: finished structure, fake quantizers on."""
    ckpt = torch.load(run_dir / checkpoint, weights_only=True)
    config, args = ckpt["config"], ckpt["model_args"]
    method = run_method(config)
    model, *_ = build_run_model(config, method, **{k: args[k] for k in ("num_classes", "in_channels", "image_size")})
    method.restore(model, ckpt["model"])
    qat.install(model, codec_spec(config))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def values(state: dict) -> dict:
    return {k: v for k, v in state.items() if kinds.tensor_kind(k, v) == "values"}


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_uniform_fake_quantizer_is_the_codec_bit_for_bit(bits):
    torch.manual_seed(bits)
    for x in [torch.randn(500) * 0.1, torch.rand(7, 3) + 2, torch.full((4,), -0.3), torch.zeros(3), torch.randn(1)]:
        expected = codec.quantize({"a.weight_values.parametrizations.w.original": x}, codec.CodecSpec("uniform", bits))
        assert torch.equal(qat.uniform_levels(x, bits), next(iter(expected.values())))


def test_uniform_gradient_goes_straight_through():
    x = torch.randn(50, requires_grad=True)
    out = qat.UniformFakeQuant(3)(x)
    (out * torch.arange(50.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(50.0))


def test_kmeans_trains_centroids_and_leaves_its_codebook_values():
    model = lenet()
    spec = codec.CodecSpec("kmeans", 3)
    assert qat.install(model, spec) == len(values(model.state_dict())) == 5  # 2 masked convs, 3 dense linears
    centroids = model.features[0].parametrizations.weight.parametrizations.original.original
    assert centroids.shape == (8,)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    assign = model.features[0].parametrizations.weight.parametrizations.original[0].assign
    member_grads = torch.zeros(8).index_add_(0, assign.flatten(), torch.ones(assign.numel()))
    assert centroids.grad is not None and (centroids.grad[member_grads == 0] == 0).all()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    x = torch.randn(4, 1, 28, 28)
    forward = model.eval()(x)
    qat.remove(model)
    assert not qat.installed(model)
    state = model.state_dict()
    for name, v in values(state).items():
        assert v.unique().numel() <= 8, name
    decoded = codec.quantize(state, codec.CodecSpec("kmeans", 3, "float32"))
    assert all(torch.equal(decoded[k], v) for k, v in values(state).items())
    model.load_state_dict(decoded)
    assert torch.allclose(model(x), forward, atol=1e-6)


@pytest.mark.parametrize("method, kernel", [("lowrank", "identity"), ("frequency", "dct"), ("transform", "wavelet")])
@pytest.mark.parametrize("quantizer", ["uniform", "kmeans"])
def test_every_methods_values_train_through_the_codec(method, kernel, quantizer):
    model = lenet(kernel, method)
    spec = codec.CodecSpec(quantizer, 3, "float32")
    assert qat.install(model, spec) == len(values(model.state_dict()))
    x = torch.randn(4, 1, 28, 28)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    forward = model.eval()(x)
    qat.remove(model)
    model.load_state_dict(codec.quantize(model.state_dict(), spec))
    assert torch.allclose(model(x), forward, atol=1e-6)


def run(tmp_path: Path, make_cfg, quick, overrides: list[str], name: str = "run", epochs: int = 3, qat_epochs=1):
    cfg = make_cfg([*quick, f"trainer.max_epochs={epochs}", f"codec.finetune_epochs={qat_epochs}", *overrides])
    record = train(cfg, run_dir=tmp_path / name)
    assert record["status"] == "completed", record["error"]
    return record


@pytest.mark.parametrize("quantizer", ["uniform", "kmeans"])
def test_the_quantize_stage_trains_the_model_the_file_decodes(quantizer, tmp_path, make_cfg, quick):
    # codec.other=float32: the biases too are in the file as trained, so the decoded model is exactly the trained one
    r = run(tmp_path, make_cfg, quick, [*DCT, f"codec={quantizer}", "codec.bits=3", "codec.other=float32"])
    run_dir = tmp_path / "run"
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 3
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["state"]["stage"] == "quantize" and r["best_epoch"] == 3
    trained, decoded = fake_quantized_model(run_dir), cnncomp.load(run_dir)
    x = torch.randn(64, 1, 28, 28)
    assert torch.allclose(trained(x), decoded(x), atol=1e-6)
    assert torch.equal(trained(x).argmax(1), decoded(x).argmax(1))
    fp32 = torch.load(run_dir / "model.pt", weights_only=True)
    assert all(torch.equal(v, decoded.state_dict()[k]) for k, v in values(fp32).items()) == (quantizer == "kmeans")
    if quantizer == "kmeans":  # the values are their codebooks: the codec leaves them as they are
        assert all(v.unique().numel() <= 8 for v in values(fp32).values())
        assert r["test_acc"] == r["test_acc_unquantized"]


def test_sparse_vd_prunes_then_quantizes(tmp_path, make_cfg, quick):
    r = run(tmp_path, make_cfg, quick, SPARSE_VD)
    model = cnncomp.load(tmp_path / "run")
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    state = model.state_dict()
    assert not any("log_sigma2" in k for k in state)  # pruned: the finished structure
    assert any(k.endswith(".mask") for k in state) and r["file_bytes"] > 0
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and rows[-1].endswith(",")  # no kept count for the quantize stage (already pruned)


@pytest.mark.parametrize("overrides", [DCT, KMEANS, SPARSE_VD], ids=["uniform", "kmeans", "sparse_vd"])
def test_sigterm_in_the_quantize_stage_resumes_to_the_same_weights(overrides, tmp_path, make_cfg, quick, monkeypatch):
    overrides = [*overrides, "trainer.deterministic=true"]
    full = run(tmp_path, make_cfg, quick, overrides, name="full", epochs=4, qat_epochs=2)
    real, calls = engine.train_epoch, []

    def train_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the second quantize epoch: last.pt holds the first
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_epoch", train_epoch)
    cfg = make_cfg([*quick, "trainer.max_epochs=4", "codec.finetune_epochs=2", *overrides])
    killed = train(cfg, run_dir=tmp_path / "killed")
    assert killed["status"] == "interrupted"
    last = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert (last["state"]["epoch"], last["state"]["stage"]) == (3, "quantize")
    monkeypatch.setattr(engine, "train_epoch", real)
    again = train(cfg, run_dir=tmp_path / "killed")
    assert again["status"] == "completed" and again["epochs_completed"] == 4
    assert (full["test_acc"], full["test_loss"], full["file_bytes"]) == (
        again["test_acc"],
        again["test_loss"],
        again["file_bytes"],
    )
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("full", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "full" / "model.cnnc").read_bytes() == (tmp_path / "killed" / "model.cnnc").read_bytes()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["codec.finetune_epochs=-1"], "codec.finetune_epochs must be an integer >= 0, got -1"),
        (["codec.finetune_epochs=1.5"], "codec.finetune_epochs must be an integer >= 0, got 1.5"),
        (["codec.finetune_epochs=3"], "codec.finetune_epochs=3 leaves no epoch .* trainer.max_epochs=3"),
        (["codec.finetune_epochs=4"], "codec.finetune_epochs=4 leaves no epoch .* trainer.max_epochs=3"),
        (
            ["recipe=sparse_vd", "method.finetune_epochs=2", "codec.finetune_epochs=1"],
            "finetune_epochs=2 leaves no sparse VD epoch.*codec.finetune_epochs=1 leaves the method 2 epochs",
        ),
        (["codec=none", "+codec.finetune_epochs=1"], "codec.finetune_epochs=1 needs codec=uniform or kmeans"),
    ],
)
def test_bad_finetune_epochs_are_refused_naming_the_value(overrides, message, make_cfg, quick):
    config = OmegaConf.to_container(make_cfg([*quick, "trainer.max_epochs=3", *overrides]))
    with pytest.raises(ConfigError, match=message):
        check_config(config)
