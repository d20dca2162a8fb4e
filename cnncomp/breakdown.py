"""Where a compressed file's bytes go: `python -m cnncomp.breakdown RUN_DIR|FILE [...]`.

The file's tensors are decoded and encoded again with the codec spec its header names, and the output
says whether that gave the file's bytes back: the codec is deterministic, but a file of an older format
is shown as the current format writes it, and a uniform grid's step recomputed from decoded values may
round to a neighbouring float. Then the file's parts (coded values, masks' index, raw or coded biases
and floats, header with count tables and coder flush) and each tensor's coded bits, its nonzero values
and the bits each of them costs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cnncomp.compression import codec
from cnncomp.compression.spec import CodecSpec
from cnncomp.training.model import MODEL_FILE


@dataclass(frozen=True)
class TensorBits:
    name: str
    shape: tuple[int, ...]
    kind: str  # the header record's: symbols, values, mask, exact, …
    bits: int  # its coded stream's bits, or its raw bytes' (FileStats.tensors)
    nonzero: int
    numel: int


@dataclass(frozen=True)
class Breakdown:
    path: Path
    file_bytes: int
    version: int
    stats: codec.FileStats  # of the re-encoded file
    identical: bool  # the re-encoded bytes are the file's
    tensors: list[TensorBits]


def breakdown(path: str | Path) -> Breakdown:
    """The parts and per-tensor bits of a compressed file (or of a run dir's model.cnnc)."""
    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{str(path)!r}: no compressed file (give a {MODEL_FILE} or the run dir holding one)")
    data = file.read_bytes()
    meta, state = codec.decode(data, str(file))
    header = codec.read_header(data)
    again, stats = codec.encode(state, meta, CodecSpec(**header["spec"]))
    kinds = {r["name"]: r["kind"] for r in header["records"]}
    tensors = [
        TensorBits(name, tuple(t.shape), kinds[name], stats.tensors[name], int(t.count_nonzero()), t.numel())
        for name, t in state.items()
    ]
    return Breakdown(file, len(data), codec.file_version(data), stats, again == data, tensors)


def render(b: Breakdown) -> str:
    s = b.stats
    again = (
        "re-encoded: identical"
        if b.identical
        else f"re-encoded in format {codec.FORMAT_VERSION}: {s.total_bytes:,} bytes, not identical; shown below"
    )
    lines = [
        f"{b.path}: {b.file_bytes:,} bytes, format {b.version} ({again})",
        "  "
        + "  ".join(
            f"{part} {bits / 8:,.0f} B ({100 * bits / (8 * s.total_bytes):.1f} %)"
            for part, bits in (
                ("values", s.value_bits),
                ("index", s.index_bits),
                ("other", s.other_bits),
                ("header, tables and flush", s.header_bits),
            )
        ),
    ]
    width = max((len(t.name) for t in b.tensors), default=6)
    lines.append(
        f"  {'tensor':<{width}} {'shape':<12} {'kind':<8} {'nonzero':>15} {'bits':>9} {'bytes':>9} {'bits/nonzero':>12}"
    )
    for t in b.tensors:
        shape = "x".join(map(str, t.shape)) or "scalar"
        each = f"{t.bits / t.nonzero:.2f}" if t.nonzero else "–"
        nonzero = f"{t.nonzero:,}/{t.numel:,}"
        lines.append(
            f"  {t.name:<{width}} {shape:<12} {t.kind:<8} {nonzero:>15} {t.bits:>9,} {t.bits / 8:>9,.1f} {each:>12}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cnncomp.breakdown", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help=f"a run dir (its {MODEL_FILE}) or a compressed file")
    args = p.parse_args(argv)
    for path in args.paths:
        try:
            print(render(breakdown(path)))
        except (FileNotFoundError, codec.CodecError) as err:
            print(f"cnncomp-breakdown: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
