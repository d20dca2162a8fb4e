"""Export a run's model: `python -m cnncomp.export RUN_DIR --format {file,folded,onnx} [--out PATH]`.

Every format starts from the model decoded from the run's compressed file (model.cnnc), so what is
exported is what the record's test accuracy was measured on: `file` copies that file, `folded` writes
the plain dense state_dict of `fold(model)` (nn.Linear / nn.Conv2d again), `onnx` an ONNX graph of the
folded model with a dynamic batch axis (needs the `onnx` extra: onnx, onnxscript).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

import cnncomp.atomic as atomic
from cnncomp.compression import codec, fold
from cnncomp.training.model import MODEL_FILE, load

FORMATS = {"file": ".cnnc", "folded": ".pt", "onnx": ".onnx"}


def export(run_dir: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Write the run's model in format `fmt`; returns the path written (default: RUN_DIR/model.<ext>
    beside the run's files, `model_folded.pt` for `folded`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    source = run_dir / MODEL_FILE if run_dir.is_dir() else run_dir
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no compressed model file (a completed cnncomp run writes {MODEL_FILE})")
    default = source.with_name("model_folded.pt" if fmt == "folded" else f"model{FORMATS[fmt]}")
    out = Path(out) if out is not None else default
    if fmt == "file":
        if out.resolve() != source.resolve():
            atomic.write_bytes(out, source.read_bytes())
        return out
    model = load(source)
    dense = fold(model).eval()
    if fmt == "folded":
        atomic.torch_save(out, dense.state_dict())
        return out
    meta, _ = codec.read_file(source)
    args = meta["model_args"]
    example = torch.randn(2, args["in_channels"], args["image_size"], args["image_size"])
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        program = torch.onnx.export(
            dense,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    buffer = io.BytesIO()
    program.save(buffer)
    atomic.write_bytes(out, buffer.getvalue())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cnncomp.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run's job dir (or its model.cnnc)")
    p.add_argument("--format", default="folded", choices=sorted(FORMATS))
    p.add_argument("--out", help="where to write (default: beside the run's files)")
    args = p.parse_args(argv)
    try:
        path = export(args.run_dir, args.format, args.out)
    except (FileNotFoundError, ValueError) as err:  # a CodecError is a ValueError
        print(f"cnncomp.export: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
