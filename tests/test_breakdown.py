import pytest
import torch

from cnncomp.breakdown import breakdown, main
from cnncomp.compression import codec


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    weight = torch.randn(20, 30)
    weight[:, :10] = 0  # 400 of 600 nonzero, fewer once quantized
    state = {"fc.weight": weight, "fc.bias": torch.randn(20)}
    path, spec = tmp_path / "model.cnnc", codec.CodecSpec(bits=6)
    stats = codec.write_file(path, state, {"note": "test"}, spec)
    nonzero = int(codec.quantize(state, spec)["fc.weight"].count_nonzero())
    assert 300 < nonzero < 400
    return path, stats, nonzero


def test_parts_and_tensors_add_up_to_the_files_bits(model_file):
    path, written, nonzero = model_file
    b = breakdown(path.parent)  # a run dir: its model.cnnc
    assert b.identical and b.version == codec.FORMAT_VERSION and b.file_bytes == path.stat().st_size
    s = b.stats
    assert s == written
    assert s.value_bits + s.index_bits + s.other_bits + s.header_bits == 8 * b.file_bytes
    assert sum(t.bits for t in b.tensors) == s.value_bits + s.index_bits + s.other_bits
    by = {t.name: t for t in b.tensors}
    assert (by["fc.weight"].kind, by["fc.weight"].nonzero, by["fc.weight"].numel) == ("values", nonzero, 600)
    assert (by["fc.bias"].kind, by["fc.bias"].bits) == ("raw", 20 * 16)  # float16 biases: their bytes


def test_cli_prints_every_tensor_and_names_a_bad_file(model_file, capsys, tmp_path):
    path, written, nonzero = model_file
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{written.total_bytes:,} bytes, format {codec.FORMAT_VERSION} (re-encoded: identical)" in out
    assert "fc.weight" in out and "fc.bias" in out and f"{nonzero}/600" in out
    bad = tmp_path / "bad.cnnc"
    bad.write_bytes(path.read_bytes()[:-1] + b"\0")
    assert main([str(bad)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert main([str(tmp_path / "none")]) == 2
    assert "no compressed file" in capsys.readouterr().err
