"""Every run writes model.cnnc; its bytes are in the record, and `cnncomp.load` rebuilds the model
from it alone, with the accuracy the record reports."""

import json

import pytest
import torch

import cnncomp
from cnncomp.compression import codec
from cnncomp.data import DataSpec, build_data
from cnncomp.train import train
from cnncomp.training import engine
from cnncomp.training.model import MODEL_FILE, codec_spec

RUNS = {
    "dct block": ["kernel=dct"],
    "dct magnitude": ["kernel=dct", "method.selection=magnitude", "kernel.keep=0.1"],
    "sparse vd": ["recipe=sparse_vd", "kernel.keep=0.2", "method.kl_warmup_epochs=0", "trainer.max_epochs=2"],
    "lowrank": ["recipe=lowrank", "kernel.keep=0.2"],
    "frequency": ["recipe=frequency"],
    "dense kmeans": ["kernel=none", "codec=kmeans", "codec.bits=4"],
}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_the_file_rebuilds_the_model_the_record_reports(run, tmp_path, make_cfg, quick):
    r = train(make_cfg([*quick, *RUNS[run]]), tmp_path)
    assert r["status"] == "completed", r["error"]
    path = tmp_path / MODEL_FILE
    assert r["file_bytes"] == path.stat().st_size == json.loads((tmp_path / "result.json").read_text())["file_bytes"]
    assert r["file_ratio"] == pytest.approx(4 * r["dense_params"] / r["file_bytes"])
    model = cnncomp.load(tmp_path)
    assert not model.training
    # the decoded model is the run's quantized model: model.pt through the codec's quantizer
    stored = torch.load(tmp_path / "model.pt", weights_only=True)
    meta, decoded = codec.read_file(path)
    assert set(meta["config"]) == {"model", "kernel", "method", "layers", "codec"}  # result.json has the rest
    expected = codec.quantize(stored, codec_spec(meta["config"]))
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[key]), key
    # and its test accuracy is the record's
    cfg = make_cfg([*quick, *RUNS[run]])
    data = build_data(DataSpec.from_config(dict(cfg.dataset), dict(cfg.trainer)))
    assert engine.evaluate(model, data.test, device=torch.device("cpu"))["acc"] == r["test_acc"]


def test_a_lossless_codec_keeps_the_accuracy(tmp_path, make_cfg, quick):
    r = train(make_cfg([*quick, "kernel=dct", "codec=none"]), tmp_path)
    assert r["test_acc"] == r["test_acc_unquantized"]
    assert r["bits_per_value"] >= 32


def test_a_bad_codec_option_is_a_clear_error(tmp_path, make_cfg, quick):
    r = train(make_cfg([*quick, "codec.bits=40"]), tmp_path)
    assert r["status"] == "failed" and "codec" in r["error"] and "40" in r["error"]
    assert not (tmp_path / MODEL_FILE).exists()


def test_loading_a_run_dir_without_its_file_names_the_dir(tmp_path):
    (tmp_path / "result.json").write_text("{}")  # a failed run: a record, no model.cnnc
    with pytest.raises(FileNotFoundError, match=f"cannot load '{tmp_path}': a run dir without model.cnnc"):
        cnncomp.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.pt.cnnc'.*no such file"):
        cnncomp.load(tmp_path / "model.pt.cnnc")
