"""`python -m cnncomp.export`: the decoded model as the file itself, a folded state_dict, or ONNX."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import cnncomp
from cnncomp.compression import fold
from cnncomp.export import export, main
from cnncomp.models import build_model
from cnncomp.train import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, make_cfg, quick):
    run = tmp_path_factory.mktemp("run")
    overrides = ["kernel=dct", "method.selection=magnitude", "kernel.keep=0.2", "codec.bits=6"]
    assert train(make_cfg([*quick, *overrides]), run)["status"] == "completed"
    return run


def test_the_file_format_is_the_runs_file(run_dir, tmp_path):
    out = export(run_dir, "file", tmp_path / "copy.cnnc")
    assert out.read_bytes() == (run_dir / "model.cnnc").read_bytes()


def test_folded_is_a_plain_dense_model_with_the_decoded_outputs(run_dir, tmp_path):
    out = export(run_dir, "folded", tmp_path / "dense.pt")
    dense = build_model("lenet", num_classes=10, in_channels=1, image_size=28).eval()
    dense.load_state_dict(torch.load(out, weights_only=True))
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(dense(x), cnncomp.load(run_dir)(x), atol=1e-5)


def test_onnx_runs_in_onnxruntime_with_the_outputs_of_pytorch(run_dir, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = export(run_dir, "onnx", tmp_path / "model.onnx")
    session = ort.InferenceSession(str(out))
    x = torch.randn(3, 1, 28, 28)  # another batch size than the export's example
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        expected = fold(cnncomp.load(run_dir))(x).numpy()
    assert logits.shape == (3, 10) and np.abs(logits - expected).max() < 1e-4


def test_a_missing_file_or_format_is_a_clear_error(tmp_path, capsys, root):
    assert main([str(tmp_path)]) == 1
    assert "model.cnnc" in capsys.readouterr().err
    run = subprocess.run([sys.executable, "-m", "cnncomp.export", str(tmp_path), "--format", "tflite"],
                         cwd=root, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 2 and "'tflite'" in run.stderr and "onnx" in run.stderr


def test_recode_measures_each_codec_as_the_run_measures_its_own_file(run_dir, capsys):
    from cnncomp.recode import main as recode_main
    from cnncomp.recode import parse_codecs, parse_layer_bits, recode

    record = json.loads((run_dir / "result.json").read_text())
    lossless, six_bits, three_bits = recode(run_dir, parse_codecs(["none", "uniform:6,3"]))
    assert six_bits["file_bytes"] == record["file_bytes"] and six_bits["test_acc"] == record["test_acc"]
    assert lossless["test_acc"] == record["test_acc_unquantized"] and lossless["bits_per_value"] >= 32
    assert three_bits["file_bytes"] < six_bits["file_bytes"] < lossless["file_bytes"]
    (coded,) = recode(run_dir, parse_codecs(["uniform:6"], "coded"))  # biases quantized too
    assert coded["file_bytes"] < six_bits["file_bytes"]
    # by default the other tensors are kept as the run kept them (here float16): its own file again
    assert recode_main([str(run_dir), "--codec", "uniform:6"]) == 0
    assert f"| uniform 6 | {record['file_bytes']:,} |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="'gzip'"):
        parse_codecs(["gzip:4"])
    # one layer at its own bits (`--layer-bits classifier.0=3`): a smaller file, named in the row
    (mixed,) = recode(run_dir, parse_codecs(["uniform:6"], "float16", parse_layer_bits(["classifier.0=3"])))
    assert mixed["codec"] == "uniform 6, classifier.0 3" and mixed["file_bytes"] < six_bits["file_bytes"]
    with pytest.raises(ValueError, match="LAYER=BITS .* got 'classifier.0'"):
        parse_layer_bits(["classifier.0"])
