import pytest
import torch
from omegaconf import OmegaConf

from cnncomp.compression import codec, fold
from cnncomp.errors import ConfigError
from cnncomp.models import build_model
from cnncomp.train import train
from cnncomp.training.model import MODEL_FILE, build_run_model, codec_spec, file_meta, load, run_method

SHAPE = {"num_classes": 10, "in_channels": 1, "image_size": 28}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A dense LeNet-5 state_dict as a kernel=none run saves it (model.pt), with trained-looking
    weights: far from the variance init, so a projection that drops anything shows."""
    torch.manual_seed(3)
    model = build_model("lenet", **SHAPE)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    path = tmp_path_factory.mktemp("dense") / "model.pt"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def _run_model(make_cfg, overrides):
    config = OmegaConf.to_container(make_cfg(overrides), resolve=True)
    return build_run_model(config, run_method(config), **SHAPE)[0].eval()


@pytest.mark.parametrize("kernel", ["identity", "dct", "dst", "dft", "wavelet"])
@pytest.mark.parametrize(
    "method", ["method.selection=block", "method.selection=magnitude", "method=sparse_vd method.threshold=100"]
)
def test_project_then_fold_reproduces_the_pretrained_model_at_keep_1(pretrained, kernel, method, make_cfg):
    path, dense = pretrained
    overrides = [f"kernel={kernel}", *method.split(), "kernel.keep=1.0", "method.init=project"]
    model = _run_model(make_cfg, overrides + [f"model.pretrained={path}"])
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = dense(x)
        assert torch.allclose(model(x), expected, atol=1e-4)
        assert torch.allclose(fold(model)(x), expected, atol=1e-4)
    folded = fold(model).state_dict()
    for name, tensor in dense.state_dict().items():
        assert torch.allclose(folded[name], tensor, atol=1e-5), name


def test_magnitude_keeps_the_largest_projected_coefficients_of_the_pretrained_weight(pretrained, make_cfg):
    path, dense = pretrained
    model = _run_model(
        make_cfg,
        ["kernel=identity", "method.selection=magnitude", "kernel.keep=0.1", "method.init=project"]
        + [f"model.pretrained={path}"],
    )
    w = dense.classifier[0].weight.detach()
    kept = model.classifier[0].parametrizations.weight[0].mask
    assert int(kept.sum()) == round(0.1 * w.numel())
    assert w.abs()[kept].min() >= w.abs()[~kept].max()  # pruning: the largest |w| survive
    assert torch.equal(model.classifier[0].weight.detach()[kept], w[kept])


def test_a_bad_pretrained_checkpoint_is_a_clear_error(tmp_path, pretrained, make_cfg, quick):
    with pytest.raises(ConfigError, match="no such file"):
        _run_model(make_cfg, [f"model.pretrained={tmp_path / 'missing.pt'}"])
    wrong = tmp_path / "alexnet.pt"
    torch.save(build_model("alexnet", **SHAPE).state_dict(), wrong)
    with pytest.raises(ConfigError, match="does not fit this model"):
        _run_model(make_cfg, [f"model.pretrained={wrong}"])
    result = train(make_cfg(quick + [f"model.pretrained={wrong}"]), tmp_path / "run")
    assert result["status"] == "failed" and "does not fit" in result["error"]


@pytest.mark.parametrize(
    "overrides",
    [["kernel=wavelet", "kernel.wavelet=db2", "layers=conv"], ["recipe=epr"], ["recipe=frequency"], ["kernel=none"]],
)
def test_the_files_header_keeps_only_what_rebuilds_the_model(overrides, pretrained, make_cfg, tmp_path):
    path, _ = pretrained
    config = OmegaConf.to_container(make_cfg([*overrides, f"model.pretrained={path}", "codec.bits=6"]), resolve=True)
    method = run_method(config)
    model, _, args, _ = build_run_model(config, method, **SHAPE)
    method.finish(model)
    meta = file_meta(config, args)
    assert meta == {
        "model_args": {"name": "lenet", **SHAPE},
        "config": {"model": {"name": "lenet"}} | {k: config[k] for k in ("kernel", "method", "layers", "codec")},
    }
    spec = codec_spec(config)
    stats = codec.write_file(tmp_path / MODEL_FILE, model.state_dict(), meta, spec)
    loaded = load(tmp_path)
    model.load_state_dict(codec.quantize(model.state_dict(), spec))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    # the whole resolved config (trainer, dataset, logger …) took a few hundred bytes more
    whole = codec.encode(model.state_dict(), {"model_args": args, "config": config}, spec)[1]
    assert whole.total_bytes - stats.total_bytes > 220, whole.total_bytes - stats.total_bytes
