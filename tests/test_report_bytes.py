"""The report's Pareto front in bytes: the decoded file's accuracy against the compressed file's size
(fewer bytes and higher accuracy), its table in report.md, its column in results.csv and its plot."""

import csv
import json
from pathlib import Path

import yaml

from cnncomp.report import analyze, front_line, pareto_front, plot_group, write_report
from cnncomp.report.plot import BYTES

PNG = b"\x89PNG\r\n\x1a\n"


def record(name, acc, file_bytes, ratio=2.0, kernel="dct", status="completed", model="lenet"):
    """A completed cell `name` (its kernel.keep override tells the cells apart)."""
    return {
        "status": status,
        "error": None if status == "completed" else "RuntimeError: boom",
        "overrides": [f"model={model}", f"kernel={kernel}", f"+tag={name}"],
        "model": model,
        "dataset": "synthetic",
        "kernel": kernel,
        "layers": "all",
        "keep": 1.0 if kernel == "none" else 0.25,
        "selection": None if kernel == "none" else "block",
        "test_acc": acc if status == "completed" else None,
        "dense_params": 10_000,
        "stored_params": round(10_000 / ratio),
        "compression_ratio": ratio,
        "file_bytes": file_bytes,
        "file_ratio": None if file_bytes is None else 40_000 / file_bytes,
        "bits_per_value": None if file_bytes is None else 5.0,
    }


# (bytes, accuracy); the front by hand: fewer bytes and higher accuracy
CELLS = {
    "dense": (60_000, 0.92, "none"),  # front: nothing smaller is as accurate
    "b": (20_000, 0.91, "dct"),  # front
    "c": (20_000, 0.90, "dct"),  # dominated by b (same bytes, less accurate)
    "d": (8_000, 0.89, "dct"),  # front
    "e": (9_000, 0.88, "dct"),  # dominated by d (more bytes, less accurate)
    "f": (5_000, 0.80, "dct"),  # front, tied with g: both stay
    "g": (5_000, 0.80, "dst"),  # front
    "h": (30_000, 0.905, "dst"),  # dominated by b
    "i": (70_000, 0.93, "dst"),  # front: the most accurate
}
FRONT = {"dense", "b", "d", "f", "g", "i"}


def write_sweep(root: Path, records: dict) -> Path:
    root.mkdir(parents=True)
    multirun = {"hydra": {"overrides": {"task": ["model=lenet"]}, "sweeper": {"params": None}}}
    (root / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    for name, r in records.items():
        (root / name).mkdir()
        (root / name / "result.json").write_text(json.dumps(r))
    return root


def crafted(tmp_path, extra=None):
    records = {n: record(n, acc, b, kernel=k) for n, (b, acc, k) in CELLS.items()}
    return write_sweep(tmp_path / "sweep", {**records, **(extra or {})})


def tag(r) -> str:
    return next(o.split("=")[1] for o in r["overrides"] if o.startswith("+tag="))


def test_the_front_in_bytes_is_exactly_the_non_dominated_cells(tmp_path):
    pts = [(-b, acc) for b, acc, _ in CELLS.values()]  # the shared front: larger is better, so -bytes
    assert {list(CELLS)[i] for i in pareto_front(pts)} == FRONT
    report = analyze([crafted(tmp_path)])
    (rows,) = report.groups.values()
    assert {tag(r) for r in rows if r["_pareto_bytes"]} == FRONT
    assert {tag(r) for r in rows if r["_pareto_bytes"] is False} == set(CELLS) - FRONT
    # along bytes the front's accuracy rises with the bytes
    line = [(r["file_bytes"], r["test_acc"]) for r in front_line(rows, BYTES)]
    assert line == [(5_000, 0.80), (5_000, 0.80), (8_000, 0.89), (20_000, 0.91), (60_000, 0.92), (70_000, 0.93)]
    # the front on stored values is its own: every cell has ratio 2, so only the most accurate is on it
    assert {tag(r) for r in rows if r["_pareto"]} == {"i"}


def test_records_without_file_bytes_are_left_out_with_a_note(tmp_path):
    older = record("old", 0.99, None)  # from before the codec: would dominate every cell
    failed = record("failed", None, None, status="failed")
    sweep = crafted(tmp_path, {"old": older, "failed": failed})
    report = write_report([sweep])
    by = {tag(r): r for r in report.records}
    assert "_pareto_bytes" not in by["old"] and "_pareto_bytes" not in by["failed"]
    assert {t for t, r in by.items() if r.get("_pareto_bytes")} == FRONT
    assert by["old"]["_pareto"]  # still on the front of stored values
    md = (sweep / "report.md").read_text()
    assert "1 completed cell(s) without `file_bytes`" in md and "left out of the front in bytes" in md
    rows = {r["overrides"].split("+tag=")[1]: r for r in csv.DictReader((sweep / "results.csv").open())}
    assert rows["old"]["pareto_bytes"] == "" and rows["b"]["pareto_bytes"] == "True"
    assert rows["c"]["pareto_bytes"] == "False"

    # a sweep of older records only: no front in bytes, no bytes plot, the report still written
    only_old = write_sweep(tmp_path / "old", {"a": record("a", 0.9, None), "b": record("b", 0.8, None, ratio=4)})
    write_report([only_old])
    md = (only_old / "report.md").read_text()
    assert "2 completed cell(s) without `file_bytes`" in md and "Pareto front in bytes" not in md
    assert (only_old / "accuracy_vs_compression_lenet_synthetic.png").exists()
    assert not (only_old / "accuracy_vs_bytes_lenet_synthetic.png").exists()


def test_report_md_holds_the_front_table_and_the_bytes_plot(tmp_path):
    sweep = crafted(tmp_path)
    write_report([sweep])
    md = (sweep / "report.md").read_text()
    table = md[md.index("Pareto front in bytes") :]
    table = table[: table.index("\n\n", table.index("|"))]
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0] == "| method | layers | keep | other | file bytes | × bytes | bits / value | test acc % | Δ pp |"
    # fewest bytes first; f and g tie, then d, b, the dense model, i
    assert [line.split(" | ")[4] for line in lines[1:]] == ["5,000", "5,000", "8,000", "20,000", "60,000", "70,000"]
    assert "| dct | all | 0.25 | +tag=b | 20,000 | 2.0× | 5.00 | 91.00 | -1.00 |" in lines
    assert md.count(" ★ |") >= len(FRONT)  # the bytes ★ column of the main table
    png = sweep / "accuracy_vs_bytes_lenet_synthetic.png"
    data = png.read_bytes()
    assert len(data) > 0 and data[:8] == PNG and "(accuracy_vs_bytes_lenet_synthetic.png)" in md
    assert (sweep / "accuracy_vs_compression_lenet_synthetic.png").read_bytes()[:8] == PNG
    (rows,) = analyze([sweep]).groups.values()
    assert plot_group(rows, "lenet", tmp_path / "direct.png", BYTES)
    assert (tmp_path / "direct.png").stat().st_size > 0
