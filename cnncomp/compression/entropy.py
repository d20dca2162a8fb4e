"""Entropy coding for the codec: symbol streams and boolean masks through constriction's ANS coder.

Every stream is coded with a categorical model fitted to its own symbol counts (the static
entropy-coding stage of Deep Compression, Han et al., ICLR 2016, with ANS, Duda 2013, in place of
Huffman: within a fraction of a percent of the empirical entropy instead of up to 1 bit a symbol).
The count table travels beside the stream as varints. Masks are coded either as their bitmap under
a two-symbol model or as the gaps between kept positions, whichever is smaller.
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


@dataclass
class Table:
    """The symbols a stream uses (sorted) and how often each occurs: the stream's categorical model."""

    alphabet: np.ndarray  # int64, sorted, unique
    counts: np.ndarray  # int64, > 0

    @classmethod
    def of(cls, symbols: np.ndarray) -> Table:
        alphabet, counts = np.unique(np.asarray(symbols, dtype=np.int64), return_counts=True)
        return cls(alphabet, counts.astype(np.int64))

    def to_bytes(self) -> bytes:
        """Size, first symbol (zigzag), gaps between symbols minus one, counts minus one: all varints."""
        n = len(self.alphabet)
        if n == 0:
            return varints([0])
        head = np.concatenate([[n], zigzag(self.alphabet[:1])]).astype(np.uint64)
        gaps = np.diff(self.alphabet) - 1
        return varints(head) + varints(gaps) + varints(self.counts - 1)

    @classmethod
    def read(cls, reader: Reader) -> Table:
        n = reader.varint()
        if n == 0:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))
        first = int(unzigzag(np.array([reader.varint()]))[0])
        gaps = reader.varints(n - 1).astype(np.int64)
        alphabet = first + np.concatenate([[0], np.cumsum(gaps + 1)]).astype(np.int64)
        counts = reader.varints(n).astype(np.int64) + 1
        return cls(alphabet, counts)

    def model(self):
        # the decoder rebuilds this from the same integer counts, so both sides hold the same model
        return constriction.stream.model.Categorical(self.counts.astype(np.float64), perfect=False)


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
        if len(self.table.alphabet) <= 1:
            return 0
        before = coder.num_valid_bits()
        coder.encode_reverse(self.indices, self.table.model())
        return coder.num_valid_bits() - before


def decode_stream(coder, table: Table, n: int) -> np.ndarray:
    """The `n` symbols of a stream coded by `Stream.encode` with `table` (int64)."""
    if n == 0:
        return np.zeros(0, np.int64)
    if len(table.alphabet) == 0:
        raise ValueError(f"an empty table cannot give {n} symbols")
    if len(table.alphabet) == 1:
        return np.full(n, table.alphabet[0], dtype=np.int64)
    if int(table.counts.sum()) != n:
        raise ValueError(f"table counts sum to {int(table.counts.sum())}, the stream has {n} symbols")
    return table.alphabet[coder.decode(table.model(), n).astype(np.int64)]


def estimate_bits(symbols: np.ndarray) -> float:
    """The bits a stream of `symbols` costs with its table (empirical entropy + table bytes)."""
    return empirical_entropy_bits(symbols) + 8 * len(Table.of(symbols).to_bytes())


# --- masks ------------------------------------------------------------------------------------------


@dataclass
class MaskCode:
    """How a mask is coded: `index` "bitmap" or "gaps" (with `escape` T: gaps ≥ T are coded as the
    symbol T and their excess g - T as a varint in `side`), the stream and the side bytes (table, escapes)."""

    index: str
    escape: int
    stream: Stream
    side: bytes

    def header(self) -> dict:
        return {"index": self.index, "escape": self.escape}


def _gap_symbols(gaps: np.ndarray, escape: int) -> tuple[np.ndarray, bytes]:
    excess = gaps[gaps >= escape] - escape
    return np.minimum(gaps, escape), varints(excess)


def _escape_candidates(gaps: np.ndarray) -> list[int]:
    # powers of two up to the largest gap, and the table that needs no escape at all
    top = int(gaps.max()) + 1 if gaps.size else 1
    return sorted({2**j for j in range(max(1, math.ceil(math.log2(top))) + 1) if 2**j < top} | {top})


def code_mask(mask: np.ndarray) -> MaskCode:
    """The cheaper of the mask's bitmap (two-symbol model, ≈ n·H(k/n) bits: optimal for a random
    mask) and its gaps between kept positions in row-major order (structured masks: runs, blocks)."""
    flat = np.asarray(mask, dtype=bool).ravel()
    bitmap = flat.astype(np.int64)
    best = MaskCode("bitmap", 0, Stream.of(bitmap), b"")
    best_bits = estimate_bits(bitmap)
    positions = np.flatnonzero(flat)
    if positions.size == 0:
        return best
    gaps = np.diff(np.concatenate([[-1], positions])) - 1
    for escape in _escape_candidates(gaps):
        symbols, excess = _gap_symbols(gaps, escape)
        bits = estimate_bits(symbols) + 8 * len(excess)
        if bits < best_bits:
            best, best_bits = MaskCode("gaps", escape, Stream.of(symbols), excess), bits
    return best


def mask_side(code: MaskCode) -> bytes:
    """The side bytes of a coded mask: its table, then (gaps) the escapes' excesses."""
    return code.stream.table.to_bytes() + code.side


def decode_mask(coder, reader: Reader, index: str, escape: int, numel: int, kept: int) -> np.ndarray:
    """The flat boolean mask of `numel` entries, `kept` of them True, from `code_mask`'s coding."""
    table = Table.read(reader)
    if index == "bitmap":
        flat = decode_stream(coder, table, numel).astype(bool)
        if int(flat.sum()) != kept:
            raise ValueError(f"mask bitmap keeps {int(flat.sum())} entries, the header says {kept}")
        return flat
    if index != "gaps":
        raise ValueError(f"unknown mask index coding {index!r}")
    gaps = decode_stream(coder, table, kept)
    escaped = gaps == escape
    if escaped.any():
        gaps = gaps.copy()
        gaps[escaped] += reader.varints(int(escaped.sum())).astype(np.int64)
    positions = np.cumsum(gaps + 1) - 1
    if kept and (gaps.min() < 0 or positions[-1] >= numel):
        raise ValueError(f"mask gaps run past {numel} entries")
    flat = np.zeros(numel, dtype=bool)
    flat[positions] = True
    return flat
