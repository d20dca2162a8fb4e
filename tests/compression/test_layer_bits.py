"""Mixed precision: `codec.layer_bits` gives a layer its own bits in the file, the planner's bound and
quantization-aware training, and refuses a layer that stores nothing."""

import pytest
import torch

from cnncomp.compression import codec, compress_model, kinds, qat
from cnncomp.compression.file_bound import file_bound, slots
from cnncomp.models import build_model
from cnncomp.train import train


def lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    compress_model(model, kernel="dct", keep=0.25, method="transform", selection="magnitude", layers="all")
    return model.eval()


def levels(t: torch.Tensor) -> int:
    return torch.unique(t).numel()


def test_a_layers_own_bits_code_its_tensors_and_the_file_decodes_them_exactly():
    state = lenet().state_dict()
    spec = codec.CodecSpec("uniform", 8, "coded", {"features.0": 2, "classifier.0": 3})
    quantized = codec.quantize(state, spec)
    for name in kinds.value_names(state) + ["features.0.bias", "classifier.0.bias"]:
        bits = 2 if name.startswith("features.0.") else 3 if name.startswith("classifier.0.") else 8
        alone = codec.quantize({name: state[name]}, codec.CodecSpec("uniform", bits, "coded"))[name]
        assert torch.equal(quantized[name], alone), name
    assert levels(quantized["features.0.parametrizations.weight.original"]) <= 2**2 + 1
    assert levels(quantized["features.3.parametrizations.weight.original"]) > 2**3 + 1
    data, stats = codec.encode(state, {}, spec)
    _, decoded = codec.decode(data)
    assert all(torch.equal(decoded[k], v) for k, v in quantized.items())
    assert stats.total_bytes < codec.encode(state, {}, codec.CodecSpec("uniform", 8, "coded"))[1].total_bytes
    assert len(data) <= file_bound(slots(state), spec, {}).total_bytes


def test_the_innermost_layer_named_decides():
    spec = codec.CodecSpec("kmeans", 5, layer_bits={"features": 4, "features.0": 2})
    assert spec.bits_of("features.0.parametrizations.weight.original") == 2
    assert spec.bits_of("features.3.weight") == 4
    assert spec.bits_of("features.00.weight") == 4  # "features.0" is not a prefix of "features.00"
    assert spec.bits_of("classifier.0.weight") == 5
    assert spec.layer_bits == (("features", 4), ("features.0", 2))  # hashable, in a fixed order


def test_the_header_names_layer_bits_only_when_set():
    assert codec.CodecSpec().header() == {"quantizer": "uniform", "bits": 8, "other": "float16"}
    assert codec.CodecSpec(layer_bits={"fc": 3}).header()["layer_bits"] == {"fc": 3}


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"layer_bits": {"features.0": 0}}, r"layer_bits\['features.0'\] must be an integer in 1..16, got 0"),
        ({"layer_bits": {"features.0": 4.5}}, "got 4.5"),
        ({"quantizer": "none", "layer_bits": {"features.0": 4}}, "quantizer uniform or kmeans"),
        ({"layer_bits": "features.0:4"}, "must map layer names to bits, e.g. {'fc1': 4}, got 'features.0:4'"),
    ],
)
def test_bad_layer_bits_name_the_value(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        codec.CodecSpec(**kwargs)


def test_a_layer_that_stores_no_values_is_refused_with_the_layers_that_do():
    state, spec = lenet().state_dict(), codec.CodecSpec(layer_bits={"fc9": 4})
    message = "names 'fc9', which stores no values; the layers that do: classifier.0, classifier.2, classifier.4, "
    with pytest.raises(ValueError, match=message + "features.0, features.3"):
        codec.encode(state, {}, spec)
    with pytest.raises(ValueError, match="'fc9'"):
        file_bound(slots(state), spec, {})
    with pytest.raises(ValueError, match="'fc9'"):
        qat.install(lenet(), spec)


def test_quantization_aware_training_uses_each_layers_bits():
    model, spec = lenet(), codec.CodecSpec("uniform", 6, "float32", {"classifier.0": 2})
    qat.install(model, spec)
    x = torch.randn(4, 1, 28, 28)
    forward = model(x)
    assert sorted(fake.bits for _, _, fake in qat._fake_quantized(model)) == [2, 6, 6, 6, 6]
    qat.remove(model)
    model.load_state_dict(codec.quantize(model.state_dict(), spec))
    assert torch.allclose(model(x), forward, atol=1e-6)


def test_a_run_codes_its_layers_at_their_bits_and_refuses_a_bad_layer_before_training(tmp_path, make_cfg, quick):
    base = [*quick, "kernel=dct", "method.selection=magnitude", "kernel.keep=0.2", "codec.bits=6"]
    base += ["trainer.max_epochs=2", "codec.finetune_epochs=1"]
    record = train(make_cfg([*base, "codec.layer_bits={classifier.0:2}"]), tmp_path / "mixed")
    assert record["status"] == "completed", record["error"]
    meta, state = codec.read_file(tmp_path / "mixed" / "model.cnnc")
    assert meta["config"]["codec"]["layer_bits"] == {"classifier.0": 2}
    assert levels(state["classifier.0.parametrizations.weight.original"]) <= 2**2 + 1
    assert levels(state["features.3.parametrizations.weight.original"]) > 2**2 + 1
    bad = train(make_cfg([*base, "codec.layer_bits={fc1:2}"]), tmp_path / "bad")
    assert bad["status"] == "failed" and "'fc1', which stores no values" in bad["error"]
    assert not (tmp_path / "bad" / "last.pt").exists()  # refused before its first epoch
