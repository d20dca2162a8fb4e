"""A compressed model's state_dict as a small file, and back: bytes on disk, as the field counts them.

Deep Compression (Han, Mao & Dally, ICLR 2016) stores a pruned network as quantized values plus an
entropy-coded index; this codec does the same for what a cnncomp state_dict stores. The stored
values (every `….parametrizations.<p>.original*`: transform coefficients, kept weights, low-rank
factors, frequency amplitudes) are quantized per tensor, uniformly or by k-means with a linearly
initialized codebook (Deep Compression's best initialization), and their symbols entropy-coded with
a categorical model of their own counts (constriction's ANS coder in place of Huffman). Boolean
masks are coded as a bitmap, as gaps between kept positions, or by their lines (a matrix's non-empty
rows and columns, then the mask where they cross), whichever is smallest. Everything
else (biases, norm statistics, counters) is stored raw: floats as float16 or float32, or
(`other="coded"`) quantized uniformly at `bits` and entropy-coded as the stored values are; integers
as varints. The "exact" tensors (`kinds.tensor_kind`: a frequency layer's `freq` and `phase`, EPR's
decoder and prior) are never rounded: each at float16 when all its values are float16 numbers, else
at float32.

A parametrization can supply its own symbols and probability model instead (EPR's integer latents):
when it holds a tensor named `prior_log_scale` (broadcastable to its `original`), that `original`
must be integer-valued and is coded as those integers under the discretized Laplace prior with
scale exp(prior_log_scale), or, when it holds `prior_zero_logit` too, under p(0) = σ(prior_zero_logit)
and that Laplace on the nonzero integers (`entropy.PriorStream`), not quantized; its `prior_*` and `decoder_*`
tensors are "exact" ones, so the file decodes to the exact model.

File layout (little-endian):

    b"CNNC" | version: uint16 | header length: uint32 | header: zlib(JSON) | side bytes
    | ANS words: uint32… | crc32: uint32

From version 3 the header is deflated against a preset dictionary (`compression.header`); from
version 4 a mask may be coded by its lines; from version 5 a prior may hold a point mass at 0 (a
symbols record names its `zero` logits); from version 6 the dictionary holds EPR's records too.

The header holds the caller's `meta`, the spec (`compression.spec.CodecSpec`), and one record per
tensor in state_dict order (name, shape, dtype unless float32, kind, coding parameters and how many
side bytes it takes unless none; version 1 spelled out both); the side bytes hold the count tables,
k-means codebooks, raw tensors and mask escapes, record after record; the ANS words hold every
entropy-coded stream, decoded record after record. The crc32 covers everything before it.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import constriction
import numpy as np
import torch

import cnncomp.atomic as atomic
from cnncomp.compression import entropy, kinds, masks, raw
from cnncomp.compression.entropy import empirical_entropy_bits
from cnncomp.compression.header import deflate_header, inflate_header
from cnncomp.compression.quantizers import dequantize_uniform, kmeans_symbols, uniform_symbols
from cnncomp.compression.spec import CodecSpec

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "CodecError",
    "CodecSpec",
    "FileStats",
    "decode",
    "empirical_entropy_bits",
    "encode",
    "header_bound",
    "quantize",
    "read_file",
    "read_header",
    "store_of",
    "write_file",
]

MAGIC = b"CNNC"
FORMAT_VERSION = 6
DEFAULT_DTYPE = torch.float32  # a record names its tensor's dtype only when it is another
_PREFIX = struct.Struct("<4sHI")  # magic, version, header length
_CRC = struct.Struct("<I")


class CodecError(ValueError):
    """A file the codec cannot read back exactly: bad magic, unknown version, failed checksum, bad records."""


@dataclass
class FileStats:
    """Where a file's bytes go. value_bits: the stored values' coded symbols (raw float32 bits for
    quantizer "none"); index_bits: the masks' coded bitmaps or gaps and their escapes; other_bits:
    raw tensors (their bytes, or their coded symbols under other="coded"); header_bits: the rest
    (magic, version, header, count tables, codebooks, coder flush, checksum). The four sum to
    8 * total_bytes."""

    total_bytes: int
    value_bits: int
    index_bits: int
    other_bits: int
    header_bits: int
    stored_values: int
    tensors: dict[str, int] = field(default_factory=dict)  # bits of each tensor's coded stream or raw bytes

    @property
    def bits_per_value(self) -> float:
        """Value bits per stored value (tables and index not included)."""
        return self.value_bits / self.stored_values if self.stored_values else 0.0

    def as_dict(self) -> dict:
        return asdict(self) | {"bits_per_value": self.bits_per_value}


def _storage_dtype(dtype: torch.dtype, ceiling: torch.dtype) -> torch.dtype:
    """A float tensor's dtype on disk: `ceiling`, unless its own dtype is narrower (then its own)."""
    return dtype if dtype.itemsize <= ceiling.itemsize else ceiling


# --- encoding plans -------------------------------------------------------------------------------


@dataclass
class _Plan:
    """One tensor as the file stores it: its header record, side bytes, coded stream, decoded tensor."""

    record: dict
    side: bytes
    stream: entropy.Stream | entropy.PriorStream | masks.MaskCode | masks.LinesCode | None  # has encode(coder)
    decoded: torch.Tensor
    bits_kind: str  # "value", "index" or "other": which FileStats field its coded bits go to
    side_bits: int = 0  # bits of `side` that are payload rather than table (raw values, escapes)


def _plan_values(t: torch.Tensor, spec: CodecSpec, record: dict) -> _Plan:
    if spec.quantizer == "none":
        record.update(quantizer="none", store=store_of("values", t.dtype, spec))
        data, decoded = raw.to_bytes(t, record["store"])
        return _Plan(record, data, None, decoded, "value", 8 * len(data))
    v = t.detach().cpu().to(torch.float64).numpy().ravel()
    if not np.isfinite(v).all():
        keeps = "quantizer 'none'" if record["kind"] == "values" else "other float16 or float32"
        raise ValueError(f"{record['name']}: values must be finite to quantize ({keeps} keeps any)")
    if spec.quantizer == "uniform":
        symbols, params = uniform_symbols(v, spec.bits_of(record["name"]))
        record.update(quantizer="uniform", **params)
        deq, codebook_bytes = dequantize_uniform(symbols, params["step"]), b""
    else:
        symbols, codebook = kmeans_symbols(v, spec.bits_of(record["name"]))
        record.update(quantizer="kmeans", codebook=int(codebook.size))
        deq, codebook_bytes = codebook[symbols], codebook.astype("<f4").tobytes()
    stream = entropy.Stream.of(symbols)
    decoded = torch.from_numpy(deq).to(t.dtype).reshape(t.shape)
    return _Plan(record, codebook_bytes + stream.table.to_bytes(), stream, decoded, "value")


def _plan_mask(t: torch.Tensor, record: dict) -> _Plan:
    mask = t.detach().cpu().numpy()
    code = masks.code_mask(mask)
    record.update(kept=int(mask.sum()), **code.header())
    return _Plan(record, code.side_bytes(), code, t.detach().cpu().clone(), "index", code.payload_bits)


def store_of(kind: str, dtype: torch.dtype, spec: CodecSpec) -> str:
    """How the file keeps a tensor it does not quantize as stored values ("raw" and "exact" tensors,
    "values" under quantizer "none"): a float dtype (its own when narrower than the ceiling: float32
    for "values" and "exact", `spec.other` for "raw"; an "exact" tensor whose values are all float16
    numbers goes at float16, which this value-blind rule leaves to `_plan_raw`), "coded" ("raw" floats
    under other="coded"), "bits" (bool), "varint" (integers: counters, indices are small; a zigzag
    varint each) or the dtype's own bytes."""
    if dtype.is_floating_point and kind == "raw" and spec.other == "coded":
        return "coded"
    if dtype.is_floating_point:
        return str(_storage_dtype(dtype, raw.dtype_of(spec.other) if kind == "raw" else torch.float32))
    if dtype == torch.bool:
        return "bits"
    if not dtype.is_complex and dtype != torch.uint64 and dtype.itemsize <= 8:
        return "varint"
    return str(dtype)


def _plan_raw(t: torch.Tensor, kind: str, spec: CodecSpec, record: dict) -> _Plan:
    t = t.detach().cpu()
    store = store_of(kind, t.dtype, spec)
    if store == "coded":  # its coded bits count as the raw tensors' (FileStats.other_bits), not the values'
        return replace(_plan_values(t, spec.coded_others(), record), bits_kind="other")
    if kind == "exact" and raw.dtype_of(store).itemsize > 2 and torch.equal(t.half().to(t.dtype), t):
        store = str(torch.float16)  # every value a float16 number: half the bytes, still exact
    data, decoded = raw.to_bytes(t, store)
    record.update(store=store)
    return _Plan(record, data, None, decoded, "other", 8 * len(data))


def _plan_symbols(t: torch.Tensor, state_dict: dict[str, torch.Tensor], prior: str, record: dict) -> _Plan:
    v = t.detach().cpu().to(torch.float64).numpy().ravel()
    if not np.isfinite(v).all() or not np.array_equal(v, np.rint(v)) or (v.size and np.abs(v).max() >= 2**31):
        raise ValueError(
            f"{record['name']}: values coded under a prior must be int32 integers (finish the method first)"
        )
    scales = entropy.prior_scales(state_dict[prior].detach().cpu().numpy(), t.shape)
    zero = kinds.prior_zero(state_dict, prior)
    zero_probs = None if zero is None else entropy.prior_zero_probs(state_dict[zero].detach().cpu().numpy(), t.shape)
    stream = entropy.PriorStream(v.astype(np.int64), scales, zero_probs)
    lo, hi = stream.bounds()
    record.update(prior=prior, **({} if zero is None else {"zero": zero}), lo=lo, hi=hi)
    return _Plan(record, b"", stream, t.detach().cpu().clone(), "value")


def _plan(name: str, t: torch.Tensor, spec: CodecSpec, kind: str, state_dict: dict[str, torch.Tensor]) -> _Plan:
    dtype = {} if t.dtype == DEFAULT_DTYPE else {"dtype": str(t.dtype)}
    record = {"name": name, "shape": list(t.shape), **dtype, "kind": kind}
    if kind == "symbols":
        return _plan_symbols(t.detach().cpu(), state_dict, kinds.priors(state_dict)[name], record)
    if kind == "values":
        return _plan_values(t.detach().cpu(), spec, record)
    if kind == "mask":
        return _plan_mask(t, record)
    return _plan_raw(t, kind, spec, record)


def _plans(state_dict: dict[str, torch.Tensor], spec: CodecSpec) -> list[_Plan]:
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: the codec stores tensors only, got {type(t).__name__}")
    kind_of = kinds.tensor_kinds(state_dict)
    spec.check_layers(kinds.value_names(state_dict))
    return [_plan(n, t, spec, kind_of[n], state_dict) for n, t in state_dict.items()]


def quantize(state_dict: dict[str, torch.Tensor], spec: CodecSpec | None = None) -> dict[str, torch.Tensor]:
    """The state_dict exactly as a file written with `spec` decodes (CPU tensors): evaluate the
    decoded model without writing a file."""
    return {p.record["name"]: p.decoded for p in _plans(state_dict, spec or CodecSpec())}


# --- the file -------------------------------------------------------------------------------------------


def encode(
    state_dict: dict[str, torch.Tensor], meta: dict | None = None, spec: CodecSpec | None = None
) -> tuple[bytes, FileStats]:
    """The file's bytes for `state_dict` with `meta` (JSON-serializable), and where they go."""
    spec = spec or CodecSpec()
    plans = _plans(state_dict, spec)
    coder = constriction.stream.stack.AnsCoder()
    coded = [0] * len(plans)
    for i in reversed(range(len(plans))):  # a stack: pushed last to first, decoded first to last
        if plans[i].stream is not None:
            coded[i] = plans[i].stream.encode(coder)
    words = coder.get_compressed().astype("<u4").tobytes()
    records = [p.record | ({"side": len(p.side)} if p.side else {}) for p in plans]
    header_bytes = deflate_header(_header_json(meta, spec, records, len(words) // 4), FORMAT_VERSION)
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes + b"".join(p.side for p in plans)
    body += words
    data = body + _CRC.pack(zlib.crc32(body))
    return data, _stats(plans, coded, len(data))


def _header_json(meta: dict | None, spec: CodecSpec, records: list[dict], ans_words: int) -> bytes:
    header = {"meta": meta or {}, "spec": spec.header(), "records": records, "ans_words": ans_words}
    try:
        return json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise ValueError(f"meta must be JSON-serializable: {err}") from err


# the longest JSON a float64 and a side length (or count) can take in a header record
_LONGEST_FLOAT, _LONGEST_INT = -2.2250738585072014e-308, 2**63 - 1


def header_bound(meta: dict | None, spec: CodecSpec, tensors: list[tuple[str, tuple[int, ...], torch.dtype]]) -> int:
    """The most bytes the file's frame and zlib'd header can take for tensors of these (name, shape,
    dtype) in state_dict order: each record as `encode` writes it, its numbers at their longest,
    deflated at zlib's worst case (compressBound: stored blocks), plus magic, version and crc32."""
    records = []
    zeros = {name: torch.zeros((1,) * len(shape), dtype=dtype) for name, shape, dtype in tensors}
    for plan, (_, shape, _) in zip(_plans(zeros, spec), tensors, strict=True):
        record = plan.record | {"side": _LONGEST_INT}
        for key, value in record.items():
            if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
                record[key] = _LONGEST_FLOAT if isinstance(value, float) else _LONGEST_INT
        if record["kind"] == "mask" and len(shape) >= 2:  # its lines' header is the longer one
            record |= masks.longest_lines_header(_LONGEST_INT)
        records.append(record | {"shape": list(shape)})
    n = len(_header_json(meta, spec, records, _LONGEST_INT))
    dict_id = 4  # the preset dictionary's adler32 in the zlib stream
    return _PREFIX.size + n + (n >> 12) + (n >> 14) + (n >> 25) + 13 + dict_id + _CRC.size


def file_version(data: bytes) -> int:
    """The format version of a file's bytes whose frame `decode` has checked."""
    return _PREFIX.unpack_from(data)[1]


def read_header(data: bytes) -> dict:
    """The header JSON of a file's bytes whose frame `decode` has checked (any version)."""
    _, version, header_len = _PREFIX.unpack_from(data)
    return json.loads(inflate_header(data[_PREFIX.size : _PREFIX.size + header_len], version))


def _stats(plans: list[_Plan], coded: list[int], total_bytes: int) -> FileStats:
    bits = {"value": 0, "index": 0, "other": 0}
    tensors = {}
    for plan, c in zip(plans, coded, strict=True):
        tensors[plan.record["name"]] = c + plan.side_bits
        bits[plan.bits_kind] += c + plan.side_bits
    stored = sum(math.prod(p.record["shape"]) for p in plans if p.record["kind"] in ("values", "symbols"))
    header = 8 * total_bytes - sum(bits.values())
    return FileStats(total_bytes, bits["value"], bits["index"], bits["other"], header, stored, tensors)


def write_file(
    path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict | None = None, spec: CodecSpec | None = None
) -> FileStats:
    """Write `state_dict` and `meta` to `path` atomically; returns the file's `FileStats`."""
    data, stats = encode(state_dict, meta, spec)
    atomic.write_bytes(path, data)
    return stats


def read_file(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(meta, state_dict) of a file written by `write_file`; CodecError (naming the file) if it is not one."""
    return decode(Path(path).read_bytes(), str(path))


def _check_frame(data: bytes, source: str) -> tuple[int, int]:
    """(version, header length) after checking magic, version and checksum."""
    if len(data) < _PREFIX.size + _CRC.size:
        raise CodecError(f"{source}: {len(data)} bytes is too short for a cnncomp codec file")
    magic, version, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CodecError(f"{source}: bad magic {magic!r}, expected {MAGIC!r} (not a cnncomp codec file)")
    # the version comes before the checksum: a newer format may frame its bytes differently
    if version > FORMAT_VERSION:
        raise CodecError(
            f"{source}: format version {version} is newer than this codec's version {FORMAT_VERSION}; "
            "read it with a newer cnncomp"
        )
    if version < 1:
        raise CodecError(f"{source}: unknown format version {version} (this codec reads 1..{FORMAT_VERSION})")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != crc:
        raise CodecError(f"{source}: checksum mismatch (the file is truncated or altered)")
    return version, header_len


def decode(data: bytes, source: str = "<bytes>") -> tuple[dict, dict[str, torch.Tensor]]:
    """(meta, state_dict) from a file's bytes; CodecError naming `source` for anything but an exact file."""
    _, header_len = _check_frame(data, source)
    try:
        start = _PREFIX.size + header_len
        header = read_header(data)
        side_len = sum(r.get("side", 0) for r in header["records"])
        words = data[start + side_len : len(data) - _CRC.size]
        if len(words) != 4 * header["ans_words"]:
            raise ValueError(f"{len(words)} bytes of coded words, the header says {header['ans_words']} words")
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(words, dtype="<u4").astype(np.uint32))
        side, records = data[start : start + side_len], header["records"]
        ends = np.cumsum([0] + [r.get("side", 0) for r in records]).tolist()
        chunks = [side[a:b] for a, b in zip(ends[:-1], ends[1:], strict=True)]
        # raw tensors first (they use no coded words): a prior's log scales follow its symbols
        decoded = {}
        for coded in (False, True):
            for record, chunk in zip(records, chunks, strict=True):
                if (record["kind"] not in ("raw", "exact") or "quantizer" in record) == coded:
                    decoded[record["name"]] = _decode_record(record, entropy.Reader(chunk), coder, decoded)
        state_dict = {r["name"]: decoded[r["name"]] for r in records}
        if not coder.is_empty():
            raise ValueError("coded words left over after the last tensor")
    except CodecError:
        raise
    except Exception as err:  # any inconsistency is a bad file, never a wrong state_dict
        raise CodecError(f"{source}: cannot decode: {err}") from err
    return header["meta"], state_dict


def _decode_record(record: dict, reader: entropy.Reader, coder, decoded: dict) -> torch.Tensor:
    shape, dtype, kind = record["shape"], raw.dtype_of(record.get("dtype", str(DEFAULT_DTYPE))), record["kind"]
    n = math.prod(shape)
    if kind == "symbols":
        scales = entropy.prior_scales(decoded[record["prior"]].numpy(), shape)
        zero = record.get("zero")
        zero_probs = None if zero is None else entropy.prior_zero_probs(decoded[zero].numpy(), shape)
        symbols = entropy.decode_prior(coder, scales, record["lo"], record["hi"], zero_probs)
        tensor = torch.from_numpy(symbols.astype(np.float64)).to(dtype)
    elif kind == "values" or "quantizer" in record:  # and raw floats coded as values (other="coded")
        tensor = _decode_values(record, reader, coder, n, dtype)
    elif kind == "mask":
        flat = masks.decode_mask(coder, reader, record, shape, record["kept"])
        tensor = torch.from_numpy(flat)
    else:
        tensor = raw.read(reader, record["store"], n, dtype)
    if not reader.at_end():
        raise ValueError(f"{record['name']}: {len(reader.data) - reader.pos} side bytes left over")
    return tensor.reshape(shape)


def _decode_values(record: dict, reader: entropy.Reader, coder, n: int, dtype: torch.dtype) -> torch.Tensor:
    quantizer = record["quantizer"]
    if quantizer == "none":
        return raw.read(reader, record["store"], n, dtype)
    if quantizer == "uniform":
        symbols = entropy.decode_stream(coder, entropy.Table.read(reader), n)
        return torch.from_numpy(dequantize_uniform(symbols, record["step"])).to(dtype)
    if quantizer == "kmeans":
        codebook = np.frombuffer(reader.take(4 * record["codebook"]), dtype="<f4").astype(np.float32)
        symbols = entropy.decode_stream(coder, entropy.Table.read(reader), n)
        if symbols.size and (symbols.min() < 0 or symbols.max() >= codebook.size):
            raise ValueError(f"{record['name']}: symbols outside the codebook of {codebook.size}")
        return torch.from_numpy(codebook[symbols]).to(dtype)
    raise ValueError(f"{record['name']}: unknown quantizer {quantizer!r}")
