"""The codec: a compressed state_dict to a small file and back, bit-exactly, at near-entropy size."""

import json
import math
import struct
import zlib

import numpy as np
import pytest
import torch

from cnncomp.breakdown import breakdown
from cnncomp.compression import build_method, compress_model, masks, sparse_vd
from cnncomp.compression import entropy as ent
from cnncomp.compression.codec import (
    FORMAT_VERSION,
    CodecError,
    CodecSpec,
    decode,
    empirical_entropy_bits,
    encode,
    quantize,
    read_file,
    read_header,
    write_file,
)
from cnncomp.compression.header import EPR_DICT, HEADER_DICT
from cnncomp.compression.kinds import tensor_kind
from cnncomp.models import build_model

CASES = {
    "magnitude": dict(kernel="dct", keep=0.25, method="transform", selection="magnitude"),
    "lowrank": dict(kernel="identity", keep=0.25, method="lowrank"),
    "frequency": dict(kernel="dct", keep=0.25, method="frequency"),
    "sparse_vd": dict(kernel="identity", keep=0.1, method="sparse_vd"),
}
SPECS = [CodecSpec(q, b) for q in ("uniform", "kmeans") for b in (8, 4)] + [CodecSpec("none", other="float32")]
SPECS += [CodecSpec("uniform", 4, "coded"), CodecSpec("kmeans", 6, "coded")]


def compressed_lenet(case: str, seed: int = 0) -> torch.nn.Module:
    """LeNet compressed as `case` says (sparse VD: pruned), the same for the same seed."""
    torch.manual_seed(seed)
    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    compress_model(model, layers="all", **CASES[case])
    if case == "sparse_vd":
        with torch.no_grad():  # a trained-looking spread of θ so that pruning keeps a mix
            for m in model.modules():
                if hasattr(m, "parametrizations"):
                    m.parametrizations.weight[0].log_sigma2.uniform_(-12.0, 4.0)
        sparse_vd.prune(model)
    return model.eval()


def outputs(model: torch.nn.Module, state_dict: dict) -> torch.Tensor:
    model.load_state_dict(state_dict)
    with torch.no_grad():
        return model(torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.quantizer}{s.bits}-{s.other}")
@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_is_quantize_bit_for_bit(case, spec, tmp_path):
    model = compressed_lenet(case)
    sd = model.state_dict()
    meta = {"model": "lenet", "args": {"num_classes": 10}, "compression": CASES[case]}
    path = tmp_path / "model.cnnc"
    stats = write_file(path, sd, meta, spec)
    got_meta, decoded = read_file(path)
    expected = quantize(sd, spec)
    assert got_meta == meta
    assert list(decoded) == list(sd) == list(expected)
    for name in sd:
        assert decoded[name].dtype == sd[name].dtype and decoded[name].shape == sd[name].shape, name
        assert torch.equal(decoded[name], expected[name]), name
    assert path.stat().st_size == stats.total_bytes
    assert stats.value_bits + stats.index_bits + stats.other_bits + stats.header_bits == 8 * stats.total_bytes
    assert stats.header_bits > 0 and stats.stored_values == sum(
        t.numel() for n, t in sd.items() if tensor_kind(n, t) == "values"
    )
    # the decoded file and quantize() give the same model, bit for bit
    assert torch.equal(outputs(compressed_lenet(case), decoded), outputs(compressed_lenet(case), expected))
    if spec.quantizer != "none" and case != "frequency":  # frequency layers: freq/phase stay float32
        assert stats.total_bytes < sum(t.numel() * t.element_size() for t in sd.values()) / 2


def test_uniform_8_bits_is_within_half_a_step():
    sd = compressed_lenet("magnitude").state_dict()
    q = quantize(sd, CodecSpec("uniform", 8))
    for name, t in sd.items():
        if tensor_kind(name, t) != "values":
            continue
        step = float(np.float32((t.max() - t.min()).item() / 255))
        err = (q[name].double() - t.double()).abs().max().item()
        assert err <= step / 2 * (1 + 1e-6) + 1e-7 * t.abs().max().item(), name
        assert err > 0  # it did quantize


@pytest.mark.parametrize("bits", [1, 3, 5])
def test_kmeans_uses_at_most_2_to_the_bits_values(bits):
    sd = compressed_lenet("lowrank").state_dict()
    q = quantize(sd, CodecSpec("kmeans", bits))
    for name, t in sd.items():
        if tensor_kind(name, t) == "values":
            assert q[name].unique().numel() <= min(2**bits, t.numel()), name


@pytest.mark.parametrize("distinct", [1, 2, 7, 8])
def test_kmeans_keeps_values_that_fit_its_codebook_exactly(distinct):
    # Lloyd from a linear initialization can merge two of 8 distinct values; these are their own codebook
    torch.manual_seed(distinct)
    levels = torch.tensor([-0.9, -0.31, -0.3, 0.0, 0.01, 0.2, 0.7, 3.0])[:distinct]
    t = levels[torch.randint(distinct, (300,))]
    q = quantize({"a.parametrizations.weight.original": t}, CodecSpec("kmeans", 3))
    assert torch.equal(q["a.parametrizations.weight.original"], t)


def test_kmeans_beats_uniform_error_at_equal_bits():
    # k-means places levels where the values are (Han et al. 2016): less squared error than a uniform grid
    t = compressed_lenet("lowrank").state_dict()["classifier.0.parametrizations.weight.original0"]
    err = {
        q: (
            quantize({"x.parametrizations.weight.original": t}, CodecSpec(q, 4))["x.parametrizations.weight.original"]
            - t
        )
        .pow(2)
        .sum()
        for q in ("uniform", "kmeans")
    }
    assert err["kmeans"] < err["uniform"]


def test_none_keeps_values_and_other_float16_rounds_the_rest():
    sd = compressed_lenet("frequency").state_dict()
    q = quantize(sd, CodecSpec("none", other="float16"))
    for name, t in sd.items():
        kind = tensor_kind(name, t)
        if kind in ("values", "exact"):  # stored values and freq/phase: float32 exactly
            assert torch.equal(q[name], t), name
        else:
            assert torch.equal(q[name], t.half().float()), name
    assert any(tensor_kind(n, t) == "exact" for n, t in sd.items())
    q32 = quantize(sd, CodecSpec("uniform", other="float32"))
    assert all(torch.equal(q32[n], t) for n, t in sd.items() if tensor_kind(n, t) in ("raw", "exact"))


def test_any_dtype_round_trips(tmp_path):
    sd = {
        "a.frozen": torch.tensor(True),
        "a.fixed": torch.rand(5, 7) > 0.5,
        "bn.num_batches_tracked": torch.tensor(123456789012, dtype=torch.int64),
        "ints": torch.tensor([-3, 0, 2**31, -(2**40)], dtype=torch.int64),
        "small": torch.arange(-4, 4, dtype=torch.int8),
        "f64": torch.randn(3, dtype=torch.float64),
        "bf16": torch.randn(4).bfloat16(),
        "empty": torch.zeros(0, 3),
        "l.parametrizations.weight.original": torch.full((6,), 0.5),  # one distinct value: no coded bits
        "m.parametrizations.weight.original": torch.zeros(0),
        "m.parametrizations.weight.0.mask": torch.zeros(4, 4, dtype=torch.bool),
        "n.parametrizations.weight.0.mask": torch.ones(9, dtype=torch.bool),
    }
    for spec in (CodecSpec(), CodecSpec("kmeans", 2), CodecSpec("none")):
        write_file(tmp_path / "x.cnnc", sd, {}, spec)
        _, decoded = read_file(tmp_path / "x.cnnc")
        expected = quantize(sd, spec)
        for name, t in sd.items():
            assert decoded[name].dtype == t.dtype and decoded[name].shape == t.shape, name
            assert torch.equal(decoded[name], expected[name]), name
            if t.dtype in (torch.bool, torch.int64, torch.int8, torch.bfloat16) or "original" in name:
                assert torch.equal(decoded[name], t), name


def test_non_finite_values_cannot_be_quantized():
    sd = {"l.parametrizations.weight.original": torch.tensor([1.0, float("nan")])}
    with pytest.raises(ValueError, match="finite"):
        quantize(sd, CodecSpec())
    assert quantize(sd, CodecSpec("none"))["l.parametrizations.weight.original"].isnan().any()


@pytest.fixture
def written(tmp_path):
    path = tmp_path / "model.cnnc"
    write_file(path, compressed_lenet("magnitude").state_dict(), {"model": "lenet"}, CodecSpec())
    return path


def test_truncated_file_is_refused(written):
    data = written.read_bytes()
    for cut in (1, 5, len(data) // 2, len(data) - 3):
        written.write_bytes(data[:-cut])
        with pytest.raises(CodecError, match=str(written)):
            read_file(written)


@pytest.mark.parametrize("where", [0.5, 0.9, -5])
def test_flipped_byte_is_refused(written, where):
    data = bytearray(written.read_bytes())
    i = int(where * len(data)) if where > 0 else len(data) + where
    data[i] ^= 0x10
    written.write_bytes(bytes(data))
    with pytest.raises(CodecError, match=f"{written}.*checksum"):
        read_file(written)


def test_wrong_magic_is_refused(written):
    data = written.read_bytes()
    written.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(CodecError, match=f"{written}.*magic"):
        read_file(written)


def test_newer_version_is_refused_naming_both(written):
    data = bytearray(written.read_bytes())
    data[4:6] = (FORMAT_VERSION + 1).to_bytes(2, "little")
    written.write_bytes(bytes(data))
    with pytest.raises(CodecError, match=f"version {FORMAT_VERSION + 1}.*version {FORMAT_VERSION}"):
        read_file(written)


def test_value_coder_is_within_2_percent_of_entropy_on_trained_weights(make_cfg, quick, tmp_path):
    from cnncomp.train import train  # the training stack only for this test

    overrides = ["kernel=identity", "method.selection=magnitude", "kernel.keep=0.1", "trainer.max_epochs=2"]
    train(make_cfg(quick + overrides), tmp_path)
    sd = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    for spec in (CodecSpec("uniform", 8), CodecSpec("uniform", 4), CodecSpec("kmeans", 6)):
        _, stats = encode(sd, {}, spec)
        coded = entropy_bits = 0.0
        for name, t in sd.items():
            if tensor_kind(name, t) != "values":
                continue
            symbols = _symbols(t, spec)
            entropy_bits += empirical_entropy_bits(symbols)
            coded += stats.tensors[name]
        assert entropy_bits > 1000
        assert 0.999 * entropy_bits <= coded <= 1.02 * entropy_bits, (spec, coded, entropy_bits)
        assert coded == stats.value_bits


def _symbols(t: torch.Tensor, spec: CodecSpec) -> np.ndarray:
    """The symbols the codec codes for a values tensor: one per distinct dequantized value."""
    q = quantize({"x.parametrizations.weight.original": t}, spec)["x.parametrizations.weight.original"]
    return np.unique(q.numpy(), return_inverse=True)[1]


def _binary_entropy(p: float) -> float:
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _coded_mask_bits(mask: np.ndarray) -> tuple[str, int]:
    """(index coding, bits on the ANS stack + side bytes) for a mask coded alone."""
    import constriction

    code = masks.code_mask(mask)
    coder = constriction.stream.stack.AnsCoder()
    return code.header()["index"], code.encode(coder) + 8 * len(code.side_bytes())


def test_random_mask_codes_near_its_entropy():
    n, p = 100_000, 0.05
    mask = np.random.default_rng(0).random(n) < p
    index, bits = _coded_mask_bits(mask)
    ideal = n * _binary_entropy(mask.mean())
    assert index == "bitmap"
    assert ideal <= bits <= 1.03 * ideal
    assert bits < 0.4 * mask.sum() * math.ceil(math.log2(n))  # far below a list of positions


def test_structured_masks_pick_the_smaller_representation():
    # a block (the top-left 8x8 of 64x64) is a few long gaps; a dense mask, a bitmap of rare zeros
    block = np.zeros(64 * 64, dtype=bool).reshape(64, 64)
    block[:8, :8] = True
    index, bits = _coded_mask_bits(block.ravel())
    assert index == "gaps" and bits < 0.25 * block.size * _binary_entropy(block.mean())
    dense = np.random.default_rng(1).random(20_000) < 0.9
    index, bits = _coded_mask_bits(dense)
    assert index == "bitmap" and bits <= 1.03 * dense.size * _binary_entropy(dense.mean())
    for mask in (block.ravel(), dense):
        code = masks.code_mask(mask)
        other = "gaps" if code.index == "bitmap" else "bitmap"
        positions = np.flatnonzero(mask.ravel())
        gaps = np.diff(np.concatenate([[-1], positions])) - 1
        alt = ent.estimate_bits(mask.ravel().astype(np.int64)) if other == "bitmap" else ent.estimate_bits(gaps)
        assert _coded_mask_bits(mask)[1] <= alt * 1.01 + 64, other


def test_masks_decode_exactly():
    import constriction

    rng = np.random.default_rng(2)
    cases = [rng.random(3000) < 0.01, rng.random(3000) < 0.6, np.arange(3000) % 97 == 0]
    cases += [_unit_pruned_mask(rng, (60, 50), 0.3), _unit_pruned_mask(rng, (30, 20, 5, 5), 0.2)]
    for mask in cases:
        code = masks.code_mask(mask)
        coder = constriction.stream.stack.AnsCoder()
        code.encode(coder)
        reader = ent.Reader(code.side_bytes())
        decoder = constriction.stream.stack.AnsCoder(coder.get_compressed())
        flat = masks.decode_mask(decoder, reader, code.header(), mask.shape, int(mask.sum()))
        assert np.array_equal(flat, mask.ravel()) and reader.at_end() and decoder.is_empty()
    assert [masks.code_mask(m).header()["index"] for m in cases[3:]] == ["lines", "lines"]


def _unit_pruned_mask(rng, shape: tuple[int, ...], density: float) -> np.ndarray:
    """A random mask of `density` inside the crossing of a third of the rows and a quarter of the
    columns (a matrix: the first axis against the rest): what pruned units leave."""
    matrix = np.zeros((shape[0], math.prod(shape[1:])), dtype=bool)
    rows = rng.choice(matrix.shape[0], matrix.shape[0] // 3, replace=False)
    cols = rng.choice(matrix.shape[1], matrix.shape[1] // 4, replace=False)
    matrix[np.ix_(rows, cols)] = rng.random((rows.size, cols.size)) < density
    return matrix.reshape(shape)


def test_a_mask_of_pruned_units_is_coded_by_its_lines_near_their_entropy():
    rng = np.random.default_rng(3)
    mask = _unit_pruned_mask(rng, (500, 800), 0.1)  # fc1-like: 166 rows, 200 columns alive
    matrix = mask.reshape(500, -1)
    rows, cols = matrix.any(1), matrix.any(0)
    cross = matrix[rows][:, cols]
    ideal = sum(m.size * _binary_entropy(m.mean()) for m in (rows, cols, cross))
    index, bits = _coded_mask_bits(mask)
    flat_bits = min(_coded_mask_bits(mask.ravel())[1], _coded_mask_bits(mask.T.ravel())[1])
    assert index == "lines" and ideal <= bits <= 1.03 * ideal + 3 * 64
    assert bits < 0.75 * flat_bits  # the flat codes pay for the empty lines in every gap
    # a mask without empty lines stays flat
    assert masks.code_mask(rng.random((50, 40)) < 0.5).header()["index"] == "bitmap"


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"quantizer": "huffman"}, "'huffman'; allowed: uniform, kmeans, none"),
        ({"bits": 0}, "0"),
        ({"bits": 17}, "17"),
        ({"other": "int8"}, "'int8'; allowed: float16, float32, coded"),
    ],
)
def test_bad_spec_names_the_value(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        CodecSpec(**kwargs)


def test_empirical_entropy():
    assert empirical_entropy_bits(np.array([0, 1, 0, 1])) == pytest.approx(4.0)
    assert empirical_entropy_bits(np.array([7, 7, 7])) == 0.0
    assert empirical_entropy_bits(np.zeros(0)) == 0.0


def test_a_dense_models_weights_are_quantized_and_its_biases_kept(tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    state = model.state_dict()
    kinds = {name: tensor_kind(name, t) for name, t in state.items()}
    assert {n for n, k in kinds.items() if k == "values"} == {n for n in state if n.endswith(".weight")}
    assert {n for n, k in kinds.items() if k == "raw"} == {n for n in state if n.endswith(".bias")}
    stats = write_file(tmp_path / "dense.cnnc", state, {}, CodecSpec("uniform", 8))
    dense_fp32 = 4 * sum(t.numel() for t in state.values())
    assert stats.total_bytes < dense_fp32 / 3.5  # 8-bit symbols, entropy-coded
    _, decoded = read_file(tmp_path / "dense.cnnc")
    for name in state:
        if kinds[name] == "values":
            step = (state[name].max() - state[name].min()) / 255
            assert (decoded[name] - state[name]).abs().max() <= step / 2 + 1e-6, name


def _frame(data: bytes) -> tuple[int, dict]:
    """(version, header JSON) of a file's bytes."""
    return struct.unpack_from("<4sHI", data)[1], read_header(data)


def test_other_coded_quantizes_the_biases_at_bits_and_keeps_the_counters():
    torch.manual_seed(0)
    sd = compressed_lenet("magnitude").state_dict()
    sd["bn.running_var"] = torch.rand(40) + 0.5
    sd["bn.num_batches_tracked"] = torch.tensor(123456789, dtype=torch.int64)
    raw = [n for n, t in sd.items() if tensor_kind(n, t) == "raw" and t.is_floating_point()]
    assert len(raw) == 6
    spec = CodecSpec("uniform", 4, "coded")
    data, stats = encode(sd, {}, spec)
    _, decoded = decode(data)
    half = encode(sd, {}, CodecSpec("uniform", 4))[1]
    for name in raw:
        t, q = sd[name], decoded[name]
        step = float(np.float32((t.max() - t.min()).item() / 15))  # the stored values' uniform grid at 4 bits
        assert torch.equal(q, quantize({name: t}, spec)[name]), name
        assert q.unique().numel() <= 17 and (q - t).abs().max() <= step / 2 * (1 + 1e-6) + 1e-7 * t.abs().max(), name
        assert 0 < stats.tensors[name] < 5 * t.numel() < half.tensors[name] == 16 * t.numel(), name
    assert torch.equal(decoded["bn.num_batches_tracked"], sd["bn.num_batches_tracked"])
    # the biases' coded bits are the raw tensors' (other_bits); the stored values' are as with float16
    # (up to a bit a stream: what a stream adds to the shared ANS stack depends on what lies under it)
    assert stats.other_bits == sum(stats.tensors[n] for n in raw) + half.tensors["bn.num_batches_tracked"]
    assert stats.stored_values == half.stored_values and abs(stats.value_bits - half.value_bits) <= 5
    assert stats.total_bytes < half.total_bytes - 200
    records = {r["name"]: r for r in _frame(data)[1]["records"]}
    assert records["features.0.bias"]["kind"] == "raw" and records["features.0.bias"]["quantizer"] == "uniform"
    assert records["bn.num_batches_tracked"]["store"] == "varint"


def test_other_coded_refuses_non_finite_biases_naming_the_lossless_others():
    sd = {"l.bias": torch.tensor([1.0, float("inf")])}
    with pytest.raises(ValueError, match="l.bias: values must be finite.*other float16 or float32"):
        quantize(sd, CodecSpec(other="coded"))
    assert quantize(sd, CodecSpec(other="float32"))["l.bias"].isinf().any()


def test_exact_tensors_take_float16_when_every_value_is_one():
    grid = torch.tensor([0.5, -3.0, 1024.0, 2.0**-24, -0.0, 65504.0])  # float16 numbers, in float32
    sd = {
        "a.parametrizations.weight.0.decoder_shift": grid,
        "a.parametrizations.weight.0.prior_log_scale": grid + 1e-3,  # not float16 numbers
        "b.parametrizations.weight.0.freq": torch.tensor([1e5, 1.0]),  # beyond float16's range
        "c.parametrizations.weight.0.phase": grid.double(),
    }
    data, stats = encode(sd, {}, CodecSpec("uniform", 8, "float16"))
    _, decoded = decode(data)
    stores = {r["name"]: r["store"] for r in _frame(data)[1]["records"]}
    assert [stores[n] for n in sd] == ["torch.float16", "torch.float32", "torch.float32", "torch.float16"]
    assert [stats.tensors[n] for n in sd] == [16 * 6, 32 * 6, 32 * 2, 16 * 6]
    for name, t in sd.items():
        assert decoded[name].dtype == t.dtype and torch.equal(decoded[name], t), name
    assert torch.equal(decoded["a.parametrizations.weight.0.decoder_shift"].sign(), grid.sign())


def test_records_spell_out_only_what_differs_and_version_1_files_still_read():
    sd = compressed_lenet("sparse_vd").state_dict()
    sd["bn.num_batches_tracked"], sd["empty.bias"] = torch.tensor(3), torch.zeros(0)  # the latter: no side bytes
    data, _ = encode(sd, {"model": "lenet"}, CodecSpec())
    version, header = _frame(data)
    assert version == FORMAT_VERSION == 6
    records = header["records"]
    assert all(("dtype" in r) == (sd[r["name"]].dtype != torch.float32) for r in records)
    assert {r["dtype"] for r in records if "dtype" in r} == {"torch.bool", "torch.int64"}
    assert all(r.get("side", 1) > 0 for r in records)
    assert [r["name"] for r in records if "side" not in r] == ["empty.bias"]
    # version 1 named every dtype and every side length; its files decode as before
    full = [{"name": r["name"], "shape": r["shape"], "dtype": str(sd[r["name"]].dtype)} | r | {"side": r.get("side", 0)}
            for r in records]  # fmt: skip
    old = zlib.compress(json.dumps(header | {"records": full}, separators=(",", ":")).encode(), 9)
    side_and_words = data[10 + struct.unpack_from("<4sHI", data)[2] : -4]
    body = struct.pack("<4sHI", b"CNNC", 1, len(old)) + old + side_and_words
    v1 = body + struct.pack("<I", zlib.crc32(body))
    assert len(v1) > len(data)
    meta, decoded = decode(v1)
    _, new = decode(data)
    assert meta == {"model": "lenet"} and list(decoded) == list(new) == list(sd)
    assert all(decoded[n].dtype == new[n].dtype and torch.equal(decoded[n], new[n]) for n in sd)


def test_version_3_deflates_the_header_against_its_dictionary_and_version_2_files_still_read():
    sd = compressed_lenet("sparse_vd").state_dict()
    meta = {"model_args": {"name": "lenet", "num_classes": 10, "in_channels": 1, "image_size": 28}}
    data, _ = encode(sd, meta, CodecSpec(bits=4))
    _, header = _frame(data)
    n = struct.unpack_from("<4sHI", data)[2]
    plain = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    assert n < 0.75 * len(plain) and len(plain) - n >= 100, (n, len(plain))
    assert zlib.crc32(HEADER_DICT) == 0x072D05AE  # part of the format: a change needs a new version
    # version 2: the same header deflated without the dictionary
    body = struct.pack("<4sHI", b"CNNC", 2, len(plain)) + plain + data[10 + n : -4]
    v2 = body + struct.pack("<I", zlib.crc32(body))
    (old_meta, old), (new_meta, new) = decode(v2), decode(data)
    assert old_meta == new_meta == meta and list(old) == list(new) == list(sd)
    assert all(torch.equal(old[k], new[k]) for k in sd)


def test_version_6_deflates_epr_headers_against_its_records_and_version_5_files_still_read(tmp_path):
    model = build_model("lenet5_caffe", num_classes=10, in_channels=1, image_size=28)
    options = {"prior": "spike_laplace", "group": "layer", "biases": "latents"}
    compress_model(model, kernel="identity", layers="all", keep=1.0, method="epr", init="project", **options)
    build_method("epr", **options).finish(model)
    method = {"init": "project", "name": "epr", "rate_weight": 6, "init_step": 0.25, **options}
    meta = {"model_args": {"name": "lenet5_caffe", "num_classes": 10, "in_channels": 1, "image_size": 28},
            "config": {"kernel": {"keep": 1.0, "axes": None, "name": "identity"}, "method": method}}  # fmt: skip
    data, _ = encode(model.state_dict(), meta)
    _, header = _frame(data)
    n = struct.unpack_from("<4sHI", data)[2]
    v3 = zlib.compressobj(9, zdict=HEADER_DICT)
    v5_header = v3.compress(json.dumps(header, separators=(",", ":")).encode()) + v3.flush()
    assert zlib.crc32(EPR_DICT) == 0xB585299B  # part of the format: a change needs a new version
    assert len(v5_header) - n >= 80, (len(v5_header), n)  # measured 373 -> 274 bytes
    body = struct.pack("<4sHI", b"CNNC", 5, len(v5_header)) + v5_header + data[10 + n : -4]
    v5 = body + struct.pack("<I", zlib.crc32(body))
    (old_meta, old), (new_meta, new) = decode(v5), decode(data)
    assert old_meta == new_meta == meta and list(old) == list(new)
    assert all(torch.equal(old[k], new[k]) for k in new)
    (tmp_path / "v5.cnnc").write_bytes(v5)  # the breakdown of a format-5 file: as format 6 writes it
    b = breakdown(tmp_path / "v5.cnnc")
    assert (b.version, b.file_bytes, b.identical, b.stats.total_bytes) == (5, len(v5), False, len(data))
