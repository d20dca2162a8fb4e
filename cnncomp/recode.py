"""Re-encode a finished run at other codec settings and test each decoded file:
`python -m cnncomp.recode RUN_DIR [--codec uniform:8,6,4 kmeans:5] [--layer-bits fc1=4] [--dense DENSE_DIR]`.

The codec quantizes after training, so one trained model (the run's fp32 model.pt) gives the whole
bytes-vs-accuracy curve without training again: each setting is written to a file, read back and
evaluated on the run's test split, as the training app measures its own model.cnnc.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from cnncomp.compression import codec
from cnncomp.compression.spec import OTHERS
from cnncomp.data import DataNotFoundError, DataSpec, build_data
from cnncomp.training import engine
from cnncomp.training.model import MODEL_FILE, file_meta, load

DEFAULT_CODECS = ["none", "uniform:8,6,5,4", "kmeans:5,4"]


def parse_codecs(
    items: Sequence[str], other: str = "float16", layer_bits: dict[str, int] | None = None
) -> list[codec.CodecSpec]:
    """`uniform:8,6` -> two uniform specs keeping the other tensors as `other` and the layers in
    `layer_bits` at their own bits; `none` -> the lossless one (fp32 values and others)."""
    specs = []
    for item in items:
        name, _, bits = item.partition(":")
        if name == "none":
            specs.append(codec.CodecSpec("none", other="float32"))
        else:
            specs += [codec.CodecSpec(name, int(b), other, layer_bits) for b in bits.split(",") if b] or [
                codec.CodecSpec(name, other=other, layer_bits=layer_bits)
            ]
    return specs


def parse_layer_bits(items: Sequence[str]) -> dict[str, int]:
    """["classifier.0=4", …] -> {"classifier.0": 4, …}."""
    pairs = {}
    for item in items:
        layer, sep, bits = item.rpartition("=")
        if not sep or not layer or not bits.isdigit():
            raise ValueError(f"--layer-bits takes LAYER=BITS (e.g. classifier.0=4), got {item!r}")
        pairs[layer] = int(bits)
    return pairs


def codec_label(spec: codec.CodecSpec) -> str:
    if spec.quantizer == "none":
        return "none"
    own = "".join(f", {layer} {bits}" for layer, bits in spec.layer_bits)
    return f"{spec.quantizer} {spec.bits}{own}"


def recode(run_dir: Path, specs: Sequence[codec.CodecSpec]) -> list[dict]:
    """One row per spec: the file's bytes and bits, the decoded model's test accuracy."""
    record = json.loads((run_dir / "result.json").read_text())
    model = load(run_dir)  # the run's finished structure (e.g. pruned)
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)  # its fp32 values
    meta, _ = codec.read_file(run_dir / MODEL_FILE)
    meta = file_meta(meta["config"], meta["model_args"])  # the header a run writes now, whatever its file's
    config = record["config"]
    data = build_data(DataSpec.from_config(config["dataset"], config["trainer"]))
    rows = []
    for spec in specs:
        with tempfile.TemporaryDirectory() as tmp:
            stats = codec.write_file(Path(tmp) / MODEL_FILE, state, meta, spec)
            _, decoded = codec.read_file(Path(tmp) / MODEL_FILE)
        model.load_state_dict(decoded)
        test = engine.evaluate(model, data.test, device=torch.device("cpu"))
        rows.append(
            {
                "codec": codec_label(spec),
                "file_bytes": stats.total_bytes,
                "file_ratio": 4 * record["dense_params"] / stats.total_bytes,
                "bits_per_value": stats.bits_per_value,
                "file_index_bits": stats.index_bits,
                "test_acc": test["acc"],
            }
        )
    return rows


def format_rows(rows: Sequence[dict], dense_acc: float | None) -> str:
    lines = ["| codec | bytes | × fewer than fp32 dense | bits/value | index bits | test acc % | Δ vs dense pp |"]
    lines.append("|---|---|---|---|---|---|---|")
    for r in rows:
        delta = "–" if dense_acc is None else f"{100 * (r['test_acc'] - dense_acc):+.2f}"
        lines.append(
            f"| {r['codec']} | {r['file_bytes']:,} | {r['file_ratio']:.1f} | {r['bits_per_value']:.2f} | "
            f"{r['file_index_bits']:,} | {100 * r['test_acc']:.2f} | {delta} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cnncomp.recode", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a completed run's job dir (model.pt, model.cnnc, result.json)")
    p.add_argument("--codec", nargs="+", default=DEFAULT_CODECS, help="QUANTIZER[:BITS,...] (default: %(default)s)")
    p.add_argument("--dense", type=Path, help="a dense run's job dir: Δ against its test accuracy")
    p.add_argument(
        "--other",
        choices=OTHERS,
        help="how biases and other float tensors are kept (default: as the run kept them)",
    )
    p.add_argument(
        "--layer-bits",
        nargs="*",
        metavar="LAYER=BITS",
        help="layers at their own bits, e.g. classifier.0=4; none given: every layer at the codec's bits "
        "(default: as the run set them)",
    )
    args = p.parse_args(argv)
    try:
        run_codec = json.loads((args.run_dir / "result.json").read_text())["config"]["codec"]
        other = args.other or run_codec["other"]
        layer_bits = run_codec.get("layer_bits") if args.layer_bits is None else parse_layer_bits(args.layer_bits)
        specs = parse_codecs(args.codec, other, layer_bits)
        dense_acc = json.loads((args.dense / "result.json").read_text())["test_acc"] if args.dense else None
        rows = recode(args.run_dir, specs)
    except (FileNotFoundError, ValueError, DataNotFoundError) as err:  # CodecError is a ValueError
        print(f"cnncomp.recode: {err}", file=sys.stderr)
        return 1
    print(format_rows(rows, dense_acc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
