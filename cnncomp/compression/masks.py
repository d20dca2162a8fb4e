"""Boolean masks for the codec: the smallest of a bitmap under a two-symbol model (≈ n·H(k/n) bits:
optimal for a random mask), the gaps between kept positions (runs, blocks), and, for a matrix with
empty rows or columns, its lines: the non-empty rows and columns, then the mask where they cross
(what pruned units leave). Each is coded with `entropy`'s streams on the shared ANS stack."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cnncomp.compression.entropy import (
    Reader,
    Stream,
    Table,
    bitmap_bits,
    coder_slack_bits,
    decode_stream,
    estimate_bits,
    varints,
)


@dataclass
class MaskCode:
    """How a flat mask is coded: `index` "bitmap" or "gaps" (with `escape` T: gaps ≥ T are coded as
    the symbol T and their excess g - T as a varint in `side`), the stream, the escapes' bytes, and
    the estimated bits (entropy, table and escapes) `code_mask` compares."""

    index: str
    escape: int
    stream: Stream
    side: bytes
    bits: float

    def header(self) -> dict:
        return {"index": self.index, "escape": self.escape}

    def encode(self, coder) -> int:
        return self.stream.encode(coder)

    def side_bytes(self) -> bytes:
        """Its table, then (gaps) the escapes' excesses."""
        return self.stream.table.to_bytes() + self.side

    @property
    def payload_bits(self) -> int:
        return 8 * len(self.side)

    def slack_bits(self) -> float:
        return coder_slack_bits(len(self.stream.indices), len(self.stream.table.present))


@dataclass
class LinesCode:
    """A mask of a matrix (a tensor's first axis against the rest) coded by its lines: which rows and
    which columns hold a kept entry, then the mask where they cross, each coded flat. A dead unit
    empties a whole row (its weights) or column (the weights from it); the lines pay for it once
    instead of in every row's gaps."""

    rows: MaskCode
    cols: MaskCode
    cross: MaskCode
    rows_kept: int
    cols_kept: int

    @property
    def parts(self) -> tuple[MaskCode, MaskCode, MaskCode]:
        return self.rows, self.cols, self.cross

    @property
    def bits(self) -> float:
        return sum(p.bits for p in self.parts)

    def header(self) -> dict:
        rows, cols, cross = self.parts
        return {
            "index": "lines",
            "rows": [rows.index, rows.escape, self.rows_kept],
            "cols": [cols.index, cols.escape, self.cols_kept],
            "cross": [cross.index, cross.escape],
        }

    def encode(self, coder) -> int:
        return sum(p.encode(coder) for p in reversed(self.parts))  # a stack: decoded rows, cols, cross

    def side_bytes(self) -> bytes:
        return b"".join(p.side_bytes() for p in self.parts)

    @property
    def payload_bits(self) -> int:
        return sum(p.payload_bits for p in self.parts)

    def slack_bits(self) -> float:
        return sum(p.slack_bits() for p in self.parts)


def longest_lines_header(longest_int: int) -> dict:
    """A lines record's header fields at their longest (`codec.header_bound`)."""
    return {
        "index": "lines",
        "rows": ["bitmap", longest_int, longest_int],
        "cols": ["bitmap", longest_int, longest_int],
        "cross": ["bitmap", longest_int],
    }


def _gap_symbols(gaps: np.ndarray, escape: int) -> tuple[np.ndarray, bytes]:
    excess = gaps[gaps >= escape] - escape
    return np.minimum(gaps, escape), varints(excess)


def _escape_candidates(gaps: np.ndarray) -> list[int]:
    # powers of two up to the largest gap, and the table that needs no escape at all
    top = int(gaps.max()) + 1 if gaps.size else 1
    return sorted({2**j for j in range(max(1, math.ceil(math.log2(top))) + 1) if 2**j < top} | {top})


def _code_flat(flat: np.ndarray) -> MaskCode:
    """The cheaper of the bitmap (two-symbol model, ≈ n·H(k/n) bits: optimal for a random mask) and
    the gaps between kept positions (structured masks: runs, blocks)."""
    best = MaskCode("bitmap", 0, Stream.of(flat.astype(np.int64)), b"", bitmap_bits(flat.size, int(flat.sum())))
    positions = np.flatnonzero(flat)
    if positions.size == 0:
        return best
    gaps = np.diff(np.concatenate([[-1], positions])) - 1
    for escape in _escape_candidates(gaps):
        symbols, excess = _gap_symbols(gaps, escape)
        bits = estimate_bits(symbols) + 8 * len(excess)
        if bits < best.bits:
            best = MaskCode("gaps", escape, Stream.of(symbols), excess, bits)
    return best


def code_mask(mask: np.ndarray) -> MaskCode | LinesCode:
    """The cheapest coding of `mask`: flat (its bitmap or its gaps, in row-major order) or, for a
    mask of two or more axes, its lines (`LinesCode`). The lines are picked only when their estimate
    plus the coder's slack on their three streams is below the flat estimate, so a coded mask never
    takes more than the bitmap's estimate plus one stream's slack (the file bound's)."""
    mask = np.asarray(mask, dtype=bool)
    flat = _code_flat(mask.ravel())
    if mask.ndim < 2 or mask.size == 0:
        return flat
    matrix = mask.reshape(mask.shape[0], -1)
    rows, cols = matrix.any(axis=1), matrix.any(axis=0)
    if rows.all() and cols.all():
        return flat
    cross = matrix[rows][:, cols].ravel()
    lines = LinesCode(_code_flat(rows), _code_flat(cols), _code_flat(cross), int(rows.sum()), int(cols.sum()))
    return lines if lines.bits + lines.slack_bits() < flat.bits else flat


def _decode_flat(coder, reader: Reader, index: str, escape: int, numel: int, kept: int) -> np.ndarray:
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


def decode_mask(coder, reader: Reader, code: dict, shape: tuple[int, ...] | list[int], kept: int) -> np.ndarray:
    """The flat boolean mask of a tensor of `shape`, `kept` entries True, from `code_mask`'s coding
    (`code`: its header fields)."""
    numel = math.prod(shape)
    if code["index"] != "lines":
        return _decode_flat(coder, reader, code["index"], code["escape"], numel, kept)
    (rows_index, rows_escape, n_rows), (cols_index, cols_escape, n_cols), (index, escape) = (
        code["rows"],
        code["cols"],
        code["cross"],
    )
    width = numel // shape[0]
    rows = _decode_flat(coder, reader, rows_index, rows_escape, shape[0], n_rows)
    cols = _decode_flat(coder, reader, cols_index, cols_escape, width, n_cols)
    cross = _decode_flat(coder, reader, index, escape, n_rows * n_cols, kept)
    matrix = np.zeros((shape[0], width), dtype=bool)
    matrix[np.ix_(rows, cols)] = cross.reshape(n_rows, n_cols)
    return matrix.ravel()
