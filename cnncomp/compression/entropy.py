"""Entropy coding for the codec: symbol streams and boolean masks through constriction's ANS coder.

Every stream is coded with a categorical model fitted to its own symbol counts (the static
entropy-coding stage of Deep Compression, Han et al., ICLR 2016, with ANS, Duda 2013, in place of
Huffman: within a fraction of a percent of the empirical entropy instead of up to 1 bit a symbol).
The count table travels beside the stream as varints. `compression.masks` codes boolean masks
with these streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import constriction
import numpy as np


def empirical_entropy_bits(symbols: np.ndarray) -> float:
    """Σ -log2 p(s) over `symbols`, p the symbols' own frequencies: what an ideal static coder spends."""
    symbols = np.asarray(symbols).ravel()
    if symbols.size == 0:
        return 0.0
    _, counts = np.unique(symbols, return_counts=True)
    counts = counts.astype(np.float64)
    return float(-(counts * np.log2(counts / symbols.size)).sum())


# --- varints (LEB128) and a reader over the side bytes --------------------------------------------


def zigzag(values: np.ndarray) -> np.ndarray:
    """Signed -> unsigned (0, -1, 1, -2, … -> 0, 1, 2, 3, …), so small magnitudes give short varints."""
    v = np.asarray(values, dtype=np.int64)
    return ((v << 1) ^ (v >> 63)).view(np.uint64)


def unzigzag(values: np.ndarray) -> np.ndarray:
    u = np.asarray(values, dtype=np.uint64)
    return ((u >> np.uint64(1)).astype(np.int64)) ^ -((u & np.uint64(1)).astype(np.int64))


def varints(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of each value: 7 bits a byte, the high bit says another byte follows."""
    out = bytearray()
    for v in np.asarray(values, dtype=np.uint64).tolist():
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


class Reader:
    """Sequential reads from a bytes object; any read past the end raises EOFError."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise EOFError(f"read of {n} bytes at {self.pos} runs past {len(self.data)}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def varint(self) -> int:
        value = shift = 0
        while True:
            (byte,) = self.take(1)
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ValueError("varint longer than 64 bits")

    def varints(self, n: int) -> np.ndarray:
        return np.array([self.varint() for _ in range(n)], dtype=np.uint64)

    def at_end(self) -> bool:
        return self.pos == len(self.data)


# --- count tables -----------------------------------------------------------------------------------

COUNT_STEPS = 8  # count codes per octave: a stored count is within 2^(1/16) - 1 = 4.4 % of the true one


def count_codes(counts: np.ndarray) -> np.ndarray:
    """Counts as log-scale codes (0: absent, k ≥ 1: 2^((k-1)/COUNT_STEPS)): one byte each where exact
    counts take two. The model loses KL(p‖q) < 0.001 bits a symbol for the 4.4 % count error."""
    counts = np.asarray(counts, dtype=np.float64)
    codes = np.zeros(counts.shape, dtype=np.int64)
    present = counts > 0
    codes[present] = np.rint(np.log2(counts[present]) * COUNT_STEPS).astype(np.int64) + 1
    return codes


def code_weights(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes, dtype=np.int64)
    return np.where(codes > 0, np.exp2((codes - 1) / COUNT_STEPS), 0.0)


@dataclass
class Table:
    """The symbols a stream may use (sorted) with their count codes: the stream's categorical model.

    Written either sparse (the symbols present, as gaps) or dense (a range of symbols, absent ones
    with code 0), whichever is shorter; the decoder rebuilds the same model from the same codes."""

    alphabet: np.ndarray  # int64, sorted, unique
    codes: np.ndarray  # int64 count codes (`count_codes`)

    @classmethod
    def of(cls, symbols: np.ndarray) -> Table:
        return cls.of_counts(*np.unique(np.asarray(symbols, dtype=np.int64), return_counts=True))

    @classmethod
    def of_counts(cls, alphabet: np.ndarray, counts: np.ndarray) -> Table:
        """The table of a stream whose symbols `alphabet` (sorted, unique) occur `counts` times."""
        if alphabet.size > 1 and alphabet[-1] - alphabet[0] + 1 <= 2 * alphabet.size:
            # dense over the range when that is no longer than the gaps between present symbols
            span = np.arange(alphabet[0], alphabet[-1] + 1, dtype=np.int64)
            dense = np.zeros(span.size, dtype=np.int64)
            dense[alphabet - alphabet[0]] = counts
            if span.size <= alphabet.size + len(varints(np.diff(alphabet) - 1)):
                alphabet, counts = span, dense
        return cls(alphabet, count_codes(counts))

    @property
    def present(self) -> np.ndarray:
        return self.alphabet[self.codes > 0]

    def dense(self) -> bool:
        return self.alphabet.size > 1 and bool((np.diff(self.alphabet) == 1).all()) and not (self.codes > 0).all()

    def to_bytes(self) -> bytes:
        """Varints: size, layout (0 sparse, 1 dense), first symbol (zigzag), [sparse: gaps - 1], codes."""
        n = len(self.alphabet)
        if n == 0:
            return varints([0])
        dense = self.dense()
        head = varints(np.array([n, int(dense), int(zigzag(self.alphabet[:1])[0])], dtype=np.uint64))
        gaps = b"" if dense else varints(np.diff(self.alphabet) - 1)
        return head + gaps + varints(self.codes)

    @classmethod
    def read(cls, reader: Reader) -> Table:
        n = reader.varint()
        if n == 0:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))
        dense = reader.varint()
        first = int(unzigzag(np.array([reader.varint()]))[0])
        gaps = np.zeros(n - 1, np.int64) if dense else reader.varints(n - 1).astype(np.int64)
        alphabet = first + np.concatenate([[0], np.cumsum(gaps + 1)]).astype(np.int64)
        return cls(alphabet, reader.varints(n).astype(np.int64))

    def model(self):
        # the decoder rebuilds this from the same integer codes, so both sides hold the same model
        return constriction.stream.model.Categorical(code_weights(self.codes), perfect=False)


# --- symbol streams -----------------------------------------------------------------------------------


@dataclass
class Stream:
    """Symbols to push on the shared ANS stack, with their table."""

    table: Table
    indices: np.ndarray  # int32 positions of the symbols in table.alphabet

    @classmethod
    def of(cls, symbols: np.ndarray) -> Stream:
        table = Table.of(symbols)
        indices = np.searchsorted(table.alphabet, np.asarray(symbols, dtype=np.int64)).astype(np.int32)
        return cls(table, indices)

    def encode(self, coder) -> int:
        """Push onto `coder` (an AnsCoder; streams go on in reverse order); returns the bits it added.

        A stream of one distinct symbol costs nothing: its table says it all (and a one-symbol
        categorical model cannot be built)."""
        if len(self.table.present) <= 1:
            return 0
        before = coder.num_valid_bits()
        coder.encode_reverse(self.indices, self.table.model())
        return coder.num_valid_bits() - before


def decode_stream(coder, table: Table, n: int) -> np.ndarray:
    """The `n` symbols of a stream coded by `Stream.encode` with `table` (int64)."""
    if n == 0:
        return np.zeros(0, np.int64)
    present = table.present
    if len(present) == 0:
        raise ValueError(f"an empty table cannot give {n} symbols")
    if len(present) == 1:
        return np.full(n, present[0], dtype=np.int64)
    return table.alphabet[coder.decode(table.model(), n).astype(np.int64)]


def estimate_bits(symbols: np.ndarray) -> float:
    """The bits a stream of `symbols` costs with its table (empirical entropy + table bytes)."""
    return empirical_entropy_bits(symbols) + 8 * len(Table.of(symbols).to_bytes())


# --- bounds, before the symbols are known (the planner's file bound) --------------------------------

# the coder's slack over n·log2(levels) bits: the count codes' model error (KL < 0.0014 bits a
# symbol at COUNT_STEPS 8), constriction's 24-bit probabilities (< 2 · levels / 2**24 bits a
# symbol), a few bits a stream, and the flush of the shared coder's 64-bit state into 32-bit words
MODEL_SLACK_BITS = 0.002
STREAM_SLACK_BITS = 2
FLUSH_BITS = 64 + 32
VARINT_MAX = 10  # bytes of the longest LEB128 of a uint64


def coder_slack_bits(n: int, levels: int) -> float:
    """The most bits `Stream.encode` spends on `n` symbols of at most `levels` distinct values
    beyond their empirical entropy."""
    return n * (MODEL_SLACK_BITS + 2 * max(1, min(levels, n)) / 2**24) + STREAM_SLACK_BITS


def stream_bits_bound(n: int, levels: int) -> float:
    """The most bits `Stream.encode` adds for `n` symbols of at most `levels` distinct values:
    n·log2(levels) (the entropy of the flattest distribution over them) plus the coder's slack."""
    levels = max(1, min(levels, n))
    return 0.0 if levels == 1 else n * math.log2(levels) + coder_slack_bits(n, levels)


def table_bytes_bound(n: int, levels: int, span: int, first_bytes: int = VARINT_MAX) -> int:
    """The most bytes `Table.to_bytes` takes for `n` symbols of at most `levels` distinct values
    within a range of `span` consecutive integers whose first one's zigzag varint takes at most
    `first_bytes`, whichever layout `Table.of` picks: dense (the range, a count code each; only for a
    range of at most twice the symbols present) or sparse (a count code and a gap each; a range over
    twice the symbols present, gaps summing below it, or else shorter than the range)."""
    levels = max(1, min(levels, n, span))
    code = len(varints(count_codes([max(n, 1)])))  # the longest count code: every symbol the same
    few = min(levels, max(1, (span - 1) // 2))  # symbols present in a range over twice their number
    # gaps of 128 and more take 2+ bytes: fewer of them the more bytes each, their sum below the range
    extra = min(sum(span // 128**j for j in range(1, 10)), (few - 1) * (len(varints([span])) - 1))
    head = len(varints([max(span, levels)])) + 1 + first_bytes
    return head + max(
        min(span, 2 * levels) * code,  # dense
        few * code + few - 1 + extra,  # sparse, a wide range
        levels * (code - 1) + min(span, 2 * levels),  # sparse, shorter than the dense range
        levels * (code + 1) - 1,  # every symbol of the range present: gaps of 0
    )


def bitmap_counts(n: int, kept: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphabet, counts) of the bitmap of a mask of `n` entries, `kept` of them True."""
    alphabet, counts = np.array([0, 1], np.int64), np.array([n - kept, kept], np.int64)
    present = counts > 0
    return alphabet[present], counts[present]


def bitmap_bits(n: int, kept: int) -> float:
    """`estimate_bits` of the bitmap of a mask of `n` entries, `kept` of them True, from the counts
    alone: ≈ n·H(kept/n) + its table. `masks.code_mask` never picks a coding estimated above it."""
    alphabet, counts = bitmap_counts(n, kept)
    c = counts.astype(np.float64)
    entropy = float(-(c * np.log2(c / n)).sum()) if n else 0.0
    return entropy + 8 * len(Table.of_counts(alphabet, counts).to_bytes())


# --- integer symbols under a stored parametric prior --------------------------------------------------


def prior_scales(log_scale: np.ndarray, shape: tuple[int, ...] | list[int]) -> np.ndarray:
    """Per-symbol Laplace scales exp(log_scale) (float64), `log_scale` broadcast to `shape` and
    flattened in row-major order: the encoder and the decoder compute them from the same stored
    float32 log scales, so both hold the same model."""
    scale = np.exp(np.asarray(log_scale, dtype=np.float32).astype(np.float64))
    return np.ascontiguousarray(np.broadcast_to(scale, tuple(shape)).ravel())


def prior_zero_probs(zero_logit: np.ndarray, shape: tuple[int, ...] | list[int]) -> np.ndarray:
    """Per-symbol probabilities π = σ(zero_logit) of a spike-and-slab prior's point mass at 0 (float64),
    broadcast and flattened as `prior_scales`."""
    logit = np.asarray(zero_logit, dtype=np.float32).astype(np.float64)
    return np.ascontiguousarray(np.broadcast_to(1.0 / (1.0 + np.exp(-logit)), tuple(shape)).ravel())


def spike_laplace_pmf(lo: int, hi: int, scale: float, zero_prob: float) -> np.ndarray:
    """p(k) for k = lo..hi of the spike-and-slab p(0) = π, p(k) = (1 − π)·½·(1 − r)·r^{|k| − 1} with
    r = e^{−1/scale}: the discretized Laplace of that scale restricted to k ≠ 0 (`epr.spike_laplace_log2_pmf`)."""
    k = np.abs(np.arange(lo, hi + 1, dtype=np.float64))
    slab = (1.0 - zero_prob) * 0.5 * -np.expm1(-1.0 / scale) * np.exp(-(np.maximum(k, 1.0) - 1.0) / scale)
    return np.where(k == 0, zero_prob, slab)


def _laplace(lo: int, hi: int):
    # bins [k - ½, k + ½) of Laplace(0, scale) on lo..hi (leaky: every symbol in range is codable)
    return constriction.stream.model.QuantizedLaplace(lo, hi)


def _spike_groups(scales: np.ndarray, zero_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (scale, π) pairs and each symbol's pair: one categorical model a decoder group."""
    pairs, group = np.unique(np.stack([scales, zero_probs], axis=1), axis=0, return_inverse=True)
    return pairs, group.ravel()


def _spike_model(lo: int, hi: int, pair: np.ndarray):
    # leaky (perfect=False): every symbol in lo..hi keeps a nonzero probability
    return constriction.stream.model.Categorical(spike_laplace_pmf(lo, hi, *pair), perfect=False)


@dataclass
class PriorStream:
    """Integer symbols coded under a discretized Laplace prior p(k) = F(k + ½) − F(k − ½), F the CDF
    of Laplace(0, scale_i), one scale per symbol (constriction's QuantizedLaplace over the symbols'
    range lo..hi, which the header holds): a learned prior whose parameters are stored, not counts
    (EPR, Oktay et al., ICLR 2020). With `zero_probs` the prior is the spike-and-slab p(0) = π and
    the Laplace on the nonzero integers (`spike_laplace_pmf`), coded as one categorical model per
    distinct (scale, π), group after group."""

    symbols: np.ndarray  # int64
    scales: np.ndarray  # float64, one per symbol
    zero_probs: np.ndarray | None = None  # float64, one per symbol: the spike's p(0) = π

    def bounds(self) -> tuple[int, int]:
        return (int(self.symbols.min()), int(self.symbols.max())) if self.symbols.size else (0, 0)

    def encode(self, coder) -> int:
        """Push onto `coder`; returns the bits it added. One distinct symbol costs nothing (lo == hi)."""
        lo, hi = self.bounds()
        if lo == hi:
            return 0
        before = coder.num_valid_bits()
        if self.zero_probs is None:
            means = np.zeros_like(self.scales)
            coder.encode_reverse(self.symbols.astype(np.int32), _laplace(lo, hi), means, self.scales)
        else:
            pairs, group = _spike_groups(self.scales, self.zero_probs)
            for g in reversed(range(len(pairs))):  # a stack: the first group is decoded first
                coder.encode_reverse((self.symbols[group == g] - lo).astype(np.int32), _spike_model(lo, hi, pairs[g]))
        return coder.num_valid_bits() - before


def decode_prior(coder, scales: np.ndarray, lo: int, hi: int, zero_probs: np.ndarray | None = None) -> np.ndarray:
    """The symbols of a `PriorStream` with these per-symbol `scales` (and `zero_probs`) and range lo..hi (int64)."""
    if scales.size == 0 or lo == hi:
        return np.full(scales.size, lo, dtype=np.int64)
    if zero_probs is None:
        return coder.decode(_laplace(lo, hi), np.zeros_like(scales), scales).astype(np.int64)
    pairs, group = _spike_groups(scales, zero_probs)
    symbols = np.empty(scales.size, dtype=np.int64)
    for g, pair in enumerate(pairs):
        where = group == g
        symbols[where] = coder.decode(_spike_model(lo, hi, pair), int(where.sum())).astype(np.int64) + lo
    return symbols
