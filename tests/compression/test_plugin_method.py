"""A method defined here, outside the library, trains through `train` with its parametrization,
penalty, stages and metrics: adding a method is one file plus one config node."""

import csv
import math

import pytest
import torch
from hydra.core.config_store import ConfigStore
from torch import nn

from cnncomp.compression import Method, Stage, build_method, compress_module, list_methods, register_method
from cnncomp.train import train
from cnncomp.training.engine import build_optimizer


class ScaledWeight(nn.Module):
    """W = s·V: the weight V and one learnable scale s per layer."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, v):
        return self.scale * v

    def right_inverse(self, weight):
        return weight

    def stored(self):
        return math.prod(self.shape) + 1

    def variance_init(self, chain, std):
        pass  # V starts as the dense init

    def no_weight_decay(self):
        return ("scale",)


@register_method
class ScaledL1(Method):
    """An L1 penalty on V for the first stage, none in the second."""

    name = "test_scaled_l1"
    options = {"strength": 1e-3}
    kernels = ("identity",)

    def check(self):
        if not self.strength >= 0:
            raise ValueError(f"strength must be >= 0, got {self.strength!r}")

    def parametrization(self, module, *, kernel, keep, axes, init, wavelet):
        return ScaledWeight(module.weight.shape), axes, ["V times a learnable scale"]

    def stages(self, max_epochs):
        return [Stage("l1", max_epochs - 1), Stage("plain", 1)]

    def penalty(self, model, *, stage, epoch, num_train):
        if stage.name != "l1":
            return None
        originals = [m.parametrizations.weight.original for m in model.modules() if hasattr(m, "parametrizations")]
        return lambda: self.strength * sum(v.abs().sum() for v in originals)

    def epoch_metrics(self, model):
        return {"l1": sum(float(m.parametrizations.weight.original.detach().abs().sum()) for m in _layers(model))}


def _layers(model):
    return [m for m in model.modules() if hasattr(m, "parametrizations")]


ConfigStore.instance().store(group="method", name="test_scaled_l1", node={"name": "test_scaled_l1", "strength": 0.0})


def test_the_registry_knows_the_method_and_refuses_a_second_one_of_the_name():
    assert "test_scaled_l1" in list_methods()
    with pytest.raises(ValueError, match="'test_scaled_l1' is already registered"):
        register_method(type("Again", (ScaledL1,), {}))
    with pytest.raises(ValueError, match="unknown option.*'power'.*allowed: strength"):
        build_method("test_scaled_l1", power=2)
    with pytest.raises(ValueError, match="does not work with kernel 'dct'; allowed: identity"):
        compress_module(nn.Linear(4, 4), kernel="dct", keep=1.0, method="test_scaled_l1")


def test_its_parameters_declare_no_weight_decay():
    layer = compress_module(nn.Linear(8, 4), kernel="identity", keep=1.0, method="test_scaled_l1")
    decayed, exempt = build_optimizer(layer, name="sgd", lr=0.1, weight_decay=0.1).param_groups
    assert {id(p) for p in exempt["params"]} == {id(layer.bias), id(layer.parametrizations.weight[0].scale)}
    assert [id(p) for p in decayed["params"]] == [id(layer.parametrizations.weight.original)]


def _run(make_cfg, quick, tmp_path, strength):
    overrides = ["kernel=identity", "method=test_scaled_l1", f"method.strength={strength}", "trainer.max_epochs=3"]
    result = train(make_cfg(quick + overrides), tmp_path)
    assert result["status"] == "completed", result["error"]
    return result, list(csv.DictReader((tmp_path / "metrics.csv").open()))


def test_it_trains_through_the_app_with_its_penalty_stages_and_metrics(make_cfg, quick, tmp_path):
    plain, plain_rows = _run(make_cfg, quick, tmp_path / "plain", 0.0)
    l1, l1_rows = _run(make_cfg, quick, tmp_path / "l1", 0.05)
    assert l1["selection"] == l1["method"] == "test_scaled_l1"
    layers = [r for r in l1["layers_summary"] if r["compressed"]]
    assert len(layers) == 5 and all(r["notes"] == ["V times a learnable scale"] for r in layers)
    assert l1["stored_params"] == l1["dense_params"] + 5  # one scale per layer
    # the penalty shrinks V in the l1 stage only: the last epoch ("plain") trains without it
    assert float(l1_rows[1]["l1"]) < 0.9 * float(plain_rows[1]["l1"])
    assert float(l1_rows[0]["l1"]) > float(l1_rows[1]["l1"])
    shrink_l1 = float(l1_rows[1]["l1"]) - float(l1_rows[0]["l1"])
    shrink_plain = float(l1_rows[2]["l1"]) - float(l1_rows[1]["l1"])
    assert shrink_l1 < shrink_plain
