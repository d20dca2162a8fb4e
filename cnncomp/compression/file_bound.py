"""The most bytes a compressed file (`codec.encode`) can take, known before training: the planner's
estimate of model.cnnc.

Training changes the stored values but not what the file holds of them: their count per tensor, the
masks' sizes (and, for a selection fixed before training, their kept counts), the other tensors'
shapes and dtypes, and the header's config. So the file is bounded from these alone, with the
codec's own rules (`kinds.tensor_kind`, `codec.store_of`, `codec.header_bound`, the entropy coder's
`bitmap_bits`, `stream_bits_bound` and `table_bytes_bound`):

- quantized values: ≤ log2(levels) bits a value before entropy coding (uniform at b bits: a grid
  through 0 of at most 2**b + 1 levels; k-means: 2**b centroids, plus the codebook at float32), plus
  the coder's slack and each tensor's count table at its longest; quantizer "none": float32 bytes;
- masks: the bitmap's entropy at the kept count (`masks.code_mask` never picks a coding estimated above
  it); for a kept set learned in training (`Method.learned_kept`: sparse VD), at the worst count
  the layer's keep budget allows;
- other tensors: their bytes at `codec.other` (float16/float32; "exact" ones at float32, though a
  tensor of float16 numbers takes half; counters as varints at 10 bytes), or under other="coded" as
  quantized values at `codec.bits` (or the layer's `layer_bits`), uniform;
- the header: `codec.header_bound`.

Entropy coding usually takes far less than this (the values of a trained layer are peaked).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from cnncomp.compression import codec, entropy, kinds, raw
from cnncomp.compression.method import stored_parametrization


@dataclass(frozen=True)
class Slot:
    """One tensor of the file as the bound sees it. `kept`: a mask's True entries; with `learned`,
    the most training may leave (its values' slot then holds that many)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    kept: int | None = None
    learned: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class FileBound:
    """Upper bounds on where a file's bytes go (cf. `codec.FileStats`): value_bits (the quantized
    values' streams, or raw float32 values), index_bits (the masks, with their tables), other_bits
    (raw tensors), header_bits (frame, header, the count tables and codebooks, coder flush)."""

    total_bytes: int
    value_bits: float
    index_bits: float
    other_bits: float
    header_bits: float
    stored_values: int
    learned: bool  # a kept set is learned in training: bounded at its keep budget


def learned_limits(model: nn.Module) -> dict[str, int]:
    """For a model whose kept sets are learned (`Method.learned_kept`): each masked compressed
    layer's mask name and stored values' name -> the most it may keep, ⌈keep·n⌉ of its n."""
    names = {id(m): n for n, m in model.named_modules()}
    limits = {}
    for module in model.modules():
        param = stored_parametrization(module)
        if param is None or getattr(param, "mask", None) is None:
            continue
        most = min(param.mask.numel(), math.ceil(param.request.keep * param.mask.numel()))
        chain = names[id(module.parametrizations.weight)]
        limits[f"{names[id(param)]}.mask"] = limits[f"{chain}.original"] = most
    return limits


def slots(state_dict: Mapping[str, torch.Tensor], most: Mapping[str, int] | None = None) -> list[Slot]:
    """The file's tensors as `file_bound` sees them, in state_dict order; `most` (`learned_limits`)
    replaces the counts of learned kept sets by the most they may keep."""
    most = most or {}
    out = []
    for name, t in state_dict.items():
        kept = int(t.sum()) if t.dtype == torch.bool else None
        if name in most and t.dtype == torch.bool:
            out.append(Slot(name, tuple(t.shape), t.dtype, most[name], learned=True))
        elif name in most:
            out.append(Slot(name, (most[name],), t.dtype, learned=True))  # a masked layer's 1-D values
        else:
            out.append(Slot(name, tuple(t.shape), t.dtype, kept))
    return out


def _mask_bits(slot: Slot) -> float:
    """The coded mask with its table, escapes and the coder's slack."""
    n, k = slot.numel, slot.kept or 0
    if slot.learned:  # the bitmap's entropy grows with the count up to n/2: the worst count allowed
        counts = {min(k, n // 2), min(k, (n + 1) // 2), k}
        bits = max(entropy.bitmap_bits(n, c) for c in counts) + 8  # a count code may take a byte more
    else:
        bits = entropy.bitmap_bits(n, k)
    # a bitmap codes n symbols of 2; gaps, k ≤ n of at most √(2n) + 2 distinct values
    return bits + entropy.coder_slack_bits(n, max(2, math.isqrt(2 * n) + 2))


def _value_bits(slot: Slot, spec: codec.CodecSpec) -> tuple[float, float]:
    """(bits of the values, bits of their table and codebook)."""
    n = slot.numel
    if spec.quantizer == "none":
        return 8 * n * raw.dtype_of(codec.store_of("values", slot.dtype, spec)).itemsize, 0.0
    levels = 2 ** spec.bits_of(slot.name) + (spec.quantizer == "uniform")  # uniform: a grid through 0
    table = entropy.table_bytes_bound(n, levels, levels, 1 if spec.quantizer == "kmeans" else entropy.VARINT_MAX)
    codebook = 4 * min(levels, n) if spec.quantizer == "kmeans" else 0
    return entropy.stream_bits_bound(n, levels), 8.0 * (table + codebook)


def _raw_bits(slot: Slot, kind: str, spec: codec.CodecSpec) -> tuple[float, float]:
    """(bits of a tensor the codec does not quantize as stored values, bits of its table)."""
    store = codec.store_of(kind, slot.dtype, spec)
    if store == "coded":
        return _value_bits(slot, spec.coded_others())
    if store == "bits":
        return 8 * math.ceil(slot.numel / 8), 0.0
    if store == "varint":
        return 8 * entropy.VARINT_MAX * slot.numel, 0.0
    return 8 * slot.numel * raw.dtype_of(store).itemsize, 0.0


def file_bound(tensors: list[Slot], spec: codec.CodecSpec, meta: dict | None = None) -> FileBound:
    """The most bytes `codec.encode` of a state_dict of these tensors with `meta` and `spec` can take."""
    value = index = other = tables = 0.0
    stored = 0
    kind_of = {s.name: kinds.tensor_kind(s.name, torch.zeros((1,) * len(s.shape), dtype=s.dtype)) for s in tensors}
    spec.check_layers([name for name, kind in kind_of.items() if kind == "values"])
    for slot in tensors:
        kind = kind_of[slot.name]
        if kind == "values":
            bits, table = _value_bits(slot, spec)
            value, tables, stored = value + bits, tables + table, stored + slot.numel
        elif kind == "mask":
            index += _mask_bits(slot)
        else:
            bits, table = _raw_bits(slot, kind, spec)
            other, tables = other + bits, tables + table
    frame = 8 * codec.header_bound(meta, spec, [(s.name, s.shape, s.dtype) for s in tensors])
    header = frame + tables + entropy.FLUSH_BITS
    total = math.ceil((value + index + other + header) / 8)
    return FileBound(total, value, index, other, header, stored, any(s.learned for s in tensors))
