"""The planner's bound on a compressed file's bytes: by hand for small cases, and never below what
`codec.encode` writes, on worst-case values (uniformly spread over every level) and masks."""

import json
import math

import numpy as np
import pytest
import torch

from cnncomp.compression import codec, compress_model
from cnncomp.compression import entropy as ent
from cnncomp.compression.file_bound import Slot, file_bound, learned_limits, slots
from cnncomp.models import build_model

SLACK = 0.002 + 2 * 257 / 2**24  # bits a value over log2(levels): entropy.coder_slack_bits


def compress_bound(n: int) -> int:
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13 + 4  # zlib's compressBound + the preset dictionary's id


def test_a_tiny_linear_by_hand():
    """fc.weight 3x4 and fc.bias (3,), uniform at 8 bits, biases as float16, no meta."""
    spec = codec.CodecSpec("uniform", 8, "float16")
    tensors = [Slot("fc.weight", (3, 4), torch.float32), Slot("fc.bias", (3,), torch.float32)]
    bound = file_bound(tensors, spec)
    # 12 values take at most 12 distinct levels: log2(12) bits each + the coder's slack, 2 bits a stream
    values = 12 * (math.log2(12) + 0.002 + 2 * 12 / 2**24) + 2
    assert bound.value_bits == pytest.approx(values) and bound.stored_values == 12
    assert bound.other_bits == 3 * 16 and bound.index_bits == 0
    # the count table: head = varint(257) 2 + layout 1 + first symbol 10; 12 symbols of a range of
    # 257, sparse: 12 count codes of 1 byte, 11 gaps, 2 of them 2 bytes at most -> 25 bytes
    table = 13 + 25
    f, i = -2.2250738585072014e-308, 2**63 - 1
    header = (
        '{"meta":{},"spec":{"quantizer":"uniform","bits":8,"other":"float16"},"records":['
        f'{{"name":"fc.weight","shape":[3,4],"kind":"values","quantizer":"uniform","step":{f},"side":{i}}},'
        f'{{"name":"fc.bias","shape":[3],"kind":"raw","store":"torch.float16","side":{i}}}'
        f'],"ans_words":{i}}}'
    )
    assert json.loads(header)["records"][0]["step"] == f
    frame = 10 + compress_bound(len(header)) + 4  # magic, version, header length | zlib(header) | crc32
    assert codec.header_bound(None, spec, [(s.name, s.shape, s.dtype) for s in tensors]) == frame
    assert bound.header_bits == 8 * (frame + table) + 96  # + the coder's flush of its 64-bit state
    assert bound.total_bytes == math.ceil((values + 48 + bound.header_bits) / 8)


def test_a_dense_lenet_at_8_bits_is_8_bits_a_weight_fp16_biases_and_the_header():
    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    spec = codec.CodecSpec()  # uniform 8 bits, float16 others
    weights = [t.numel() for n, t in model.state_dict().items() if n.endswith("weight")]
    biases = sum(t.numel() for n, t in model.state_dict().items() if n.endswith("bias"))
    meta = {"model_args": {"name": "lenet"}}
    bound = file_bound(slots(model.state_dict()), spec, meta)
    assert weights == [150, 2400, 48_000, 10_080, 840] and biases == 236
    # log2(257) = 8.0056 bits a weight (a grid through 0 has up to 2**8 + 1 levels), but the first
    # layer's 150 weights take at most 150 levels
    levels = [150, 257, 257, 257, 257]
    values = sum(n * (math.log2(lv) + 0.002 + 2 * lv / 2**24) + 2 for n, lv in zip(weights, levels, strict=True))
    assert bound.value_bits == pytest.approx(values)
    assert values / sum(weights) == pytest.approx(8.0, abs=0.01)
    assert bound.stored_values == sum(weights) == 61_470 and bound.other_bits == 16 * biases
    # count tables: a 13-byte head, then all 257 levels present (257 one-byte codes, 256 gaps of 0),
    # and for the first layer 150 codes and 149 gaps
    tables = 8 * (13 + 150 + 149 + 4 * (13 + 257 + 256))
    frame = codec.header_bound(meta, spec, [(n, tuple(t.shape), t.dtype) for n, t in model.state_dict().items()])
    assert bound.header_bits == 8 * frame + tables + 96
    data, stats = codec.encode(model.state_dict(), meta, spec)
    assert len(data) <= bound.total_bytes < 1.1 * len(data)  # untrained weights: nearly 8 bits each


def spread(shape, levels_over: float, seed: int) -> torch.Tensor:
    """Values spread evenly over [-levels_over, levels_over]: every grid level about equally often."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1).mul(levels_over).float()


@pytest.mark.parametrize("other", ["float16", "coded"])
@pytest.mark.parametrize(
    "quantizer, bits", [("uniform", 1), ("uniform", 2), ("uniform", 8), ("kmeans", 3), ("none", 8)]
)
def test_the_bound_holds_for_values_spread_over_every_level(quantizer, bits, other):
    spec = codec.CodecSpec(quantizer, bits, other)
    for seed, n in enumerate([1, 2, 7, 300, 5000, 70_000]):
        # under other="coded" the biases are quantized too: spread over every level as well
        state = {"a.weight": spread((n, 1), 1.5, seed), "a.bias": spread((min(n, 3000),), 0.5, seed + 100)}
        state["bn.num_batches_tracked"] = torch.tensor(7)
        state["a.parametrizations.weight.0.freq"] = spread((5,), 2.0, seed)  # "exact": float32 at most
        data, stats = codec.encode(state, {"seed": seed}, spec)
        bound = file_bound(slots(state), spec, {"seed": seed})
        assert len(data) <= bound.total_bytes, (seed, n)
        assert stats.other_bits <= bound.other_bits, (seed, n)


def test_coded_biases_are_bounded_as_uniform_values_at_bits():
    """fc.bias (3,) under other="coded" at 8 bits: 3 levels at most, log2(3) bits each and the coder's
    slack, and a count table at its longest in the header; the counter stays a varint."""
    tensors = [Slot("fc.bias", (3,), torch.float32), Slot("bn.num_batches_tracked", (), torch.int64)]
    coded, half = (file_bound(tensors, codec.CodecSpec("kmeans", 8, other)) for other in ("coded", "float16"))
    assert coded.other_bits == pytest.approx(3 * (math.log2(3) + 0.002 + 2 * 3 / 2**24) + 2 + 8 * 10)
    assert half.other_bits == 3 * 16 + 8 * 10 and coded.value_bits == half.value_bits == 0
    frame = {
        other: codec.header_bound(
            None, codec.CodecSpec("kmeans", 8, other), [(t.name, t.shape, t.dtype) for t in tensors]
        )
        for other in ("coded", "float16")
    }
    assert frame["coded"] > frame["float16"]  # its record holds the grid's step instead of a dtype
    table = ent.table_bytes_bound(3, 257, 257)  # the uniform grid's, whatever the values' quantizer
    assert coded.header_bits - 8 * frame["coded"] == half.header_bits - 8 * frame["float16"] + 8 * table


@pytest.mark.parametrize("n, kept", [(1, 0), (1, 1), (10, 3), (1000, 500), (4096, 40), (60_000, 59_000), (70_000, 7)])
def test_masks_are_bounded_by_their_bitmap(n, kept):
    rng = np.random.default_rng(n + kept)
    mask = np.zeros(n, bool)
    mask[rng.choice(n, kept, replace=False)] = True
    assert ent.bitmap_bits(n, kept) == ent.estimate_bits(mask.astype(np.int64))  # the codec's own estimate
    for m in (mask, np.sort(mask)[::-1].copy()):  # random, and one run (coded as gaps)
        state = {"l.parametrizations.weight.0.mask": torch.from_numpy(m)}
        data, _ = codec.encode(state)
        assert len(data) <= file_bound(slots(state), codec.CodecSpec()).total_bytes


def test_a_learned_kept_set_is_bounded_at_its_budget():
    """Sparse VD keeps at most ⌈keep·n⌉ values a layer: any mask within that budget fits the bound."""
    torch.manual_seed(0)
    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    compress_model(model, kernel="dct", layers="all", keep=0.3, method="sparse_vd")
    from cnncomp.compression import sparse_vd

    sparse_vd.prune(model)
    limits = learned_limits(model)
    masks = {n: t for n, t in model.state_dict().items() if n.endswith(".mask")}
    assert set(masks) <= set(limits) and len(limits) == 2 * len(masks)
    assert all(limits[n] == math.ceil(0.3 * t.numel()) for n, t in masks.items())
    spec = codec.CodecSpec()
    bound = file_bound(slots(model.state_dict(), limits), spec)
    assert bound.learned
    rng = np.random.default_rng(0)
    for fraction in (0.3, 0.15, 0.01):  # what training may leave: the budget or fewer
        state = dict(model.state_dict())
        for name, mask in masks.items():
            k = min(limits[name], math.ceil(fraction * mask.numel()))
            m = np.zeros(mask.numel(), bool)
            m[rng.choice(mask.numel(), k, replace=False)] = True
            state[name] = torch.from_numpy(m).reshape(mask.shape)
            values = name.replace(".0.mask", ".original")
            state[values] = torch.randn(k) * 0.1
        assert len(codec.encode(state, None, spec)[0]) <= bound.total_bytes, fraction
