import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cnncomp.report import (
    CSV_FIELDS,
    analyze,
    front_line,
    main,
    pareto_front,
    plot_group,
    plot_lines,
    render_csv,
    write_report,
)
from cnncomp.sweep import sweep_cells

PNG = b"\x89PNG\r\n\x1a\n"


def test_pareto_front_of_known_points():
    pts = [(1.0, 0.90), (3.0, 0.91), (1.1, 0.85), (4.0, 0.80), (3.0, 0.88), (4.0, 0.80), (0.5, 0.95), (2.0, 0.95)]
    # (2, .95) dominates (1, .90), (1.1, .85) and (0.5, .95); (3, .91) dominates (3, .88); the two
    # equal (4, .80) points both stay
    assert pareto_front(pts) == [7, 1, 3, 5]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.5)]) == [0]


def test_sweep_cells_expand_like_hydra_with_params_first_and_the_command_line_winning():
    cells = sweep_cells(
        ["dataset=synthetic", "kernel=none,dct"], {"kernel": "dst,dft,wavelet", "layers": "linear,conv"}
    )
    assert cells == [
        ["kernel=none", "layers=linear", "dataset=synthetic"],
        ["kernel=none", "layers=conv", "dataset=synthetic"],
        ["kernel=dct", "layers=linear", "dataset=synthetic"],
        ["kernel=dct", "layers=conv", "dataset=synthetic"],
    ]


# ---------------------------------------------------------------------------------------------
# a crafted sweep: known accuracies, one failed cell, one missing, one duplicate


def record(kernel, layers, acc, ratio, status="completed", error=None, ended="2026-01-01T00:00:00", model="lenet"):
    return {
        "status": status,
        "error": error,
        "overrides": [f"model={model}", f"kernel={kernel}", f"layers={layers}", "trainer.max_epochs=2"],
        "model": model,
        "dataset": "synthetic",
        "kernel": kernel,
        "layers": layers,
        "keep": 1.0 if kernel == "none" else 0.25,
        "selection": None if kernel == "none" else "block",
        "test_acc": acc if status == "completed" else None,
        "dense_params": 1000,
        "stored_params": round(1000 / ratio),
        "compression_ratio": ratio,
        "model_bytes": 4000 / ratio,
        "file_bytes": 1000 / ratio,
        "file_ratio": 4 * ratio,
        "images_per_s": 1234.5,
        "ended_at": ended,
        "config": {"not": "in the csv"},
    }


def write_sweep(root: Path, records: dict[str, dict], task: list[str], params: dict | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    multirun = {"hydra": {"overrides": {"task": task}, "sweeper": {"params": params}}, "model": {"name": "lenet"}}
    (root / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    for name, r in records.items():
        (root / name).mkdir()
        (root / name / "result.json").write_text(json.dumps(r))


@pytest.fixture
def crafted(tmp_path):
    sweep = tmp_path / "sweep"
    records = {
        "none-linear": record("none", "linear", 0.90, 1.0),
        "dct-linear": record("dct", "linear", 0.91, 3.0),
        "dct-conv": record("dct", "conv", 0.85, 1.1),
        "dct-all": record("dct", "all", 0.80, 4.0),
        "dst-linear": record("dst", "linear", 0.88, 3.0),
        "dst-conv": record("dst", "conv", None, 1.1, status="failed", error="RuntimeError: boom"),
        "wavelet-all": record("wavelet", "all", 0.80, 4.0),
        "wavelet-conv": record("wavelet", "conv", None, 1.1, status="diverged", error="non-finite loss in epoch 1"),
    }
    write_sweep(
        sweep,
        records,
        ["model=lenet", "trainer.max_epochs=2", "layers=linear,conv,all"],
        {"kernel": "none,dct,dst,wavelet"},
    )
    # a record being written: only the temp file of the atomic write exists so far
    (sweep / "none-conv").mkdir()
    (sweep / "none-conv" / ".result.json.abc123.tmp").write_text('{"status": "compl')
    (sweep / "none-conv" / ".hydra").mkdir()
    (sweep / "none-conv" / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["kernel=none", "layers=conv", "model=lenet", "trainer.max_epochs=2"])
    )
    return sweep


def test_report_of_a_crafted_sweep(crafted):
    report = write_report([crafted])
    by = {(r["kernel"], r["layers"]): r for r in report.records}
    assert len(by) == 8
    # 4 kernels x 3 layers = 12 expected; 8 have records
    missing = {" ".join(sorted(c)) for c in report.missing}
    assert missing == {
        " ".join(sorted(["model=lenet", "trainer.max_epochs=2", f"kernel={k}", f"layers={l}"]))
        for k, l in [("none", "conv"), ("none", "all"), ("dst", "all"), ("wavelet", "linear")]
    }
    assert [sorted(c) for c in report.started] == [
        ["kernel=none", "layers=conv", "model=lenet", "trainer.max_epochs=2"]
    ]
    assert {(r["kernel"], r["layers"]) for r in report.failed} == {("dst", "conv"), ("wavelet", "conv")}
    # Δ against the dense baseline (0.90)
    assert by[("dct", "linear")]["_delta"] == pytest.approx(0.01)
    assert by[("dct", "all")]["_delta"] == pytest.approx(-0.10)
    assert by[("none", "linear")]["_delta"] == pytest.approx(0.0)
    assert by[("dst", "conv")]["_delta"] is None
    front = {k for k, r in by.items() if r.get("_pareto")}
    assert front == {("dct", "linear"), ("dct", "all"), ("wavelet", "all")}
    assert report.common == {"model": "lenet", "trainer.max_epochs": "2"} and report.varying == []

    md = (crafted / "report.md").read_text()
    assert "**6 completed, 2 failed/diverged/interrupted, 4 missing** (1 of them started)" in md
    sizes = "333 | – | 3.00× | 3.00× | 0.3 KiB | 12.0× | 1,234"
    assert f"| dct | linear | 0.25 | completed | 91.00 | +1.00 | {sizes} | ★ |" in md
    assert f"| dst | linear | 0.25 | completed | 88.00 | -2.00 | {sizes} |  |" in md
    assert "RuntimeError: boom" in md and "non-finite loss in epoch 1" in md
    assert "`kernel=none model=lenet trainer.max_epochs=2 layers=conv` (started, no result yet)" in md
    assert "`kernel=dst model=lenet trainer.max_epochs=2 layers=all`" in md
    png = crafted / "accuracy_vs_compression_lenet_synthetic.png"
    assert png.read_bytes()[:8] == PNG and "(accuracy_vs_compression_lenet_synthetic.png)" in md

    rows = list(csv.DictReader((crafted / "results.csv").open()))
    assert len(rows) == 8 and list(rows[0]) == CSV_FIELDS
    row = next(r for r in rows if r["kernel"] == "dct" and r["layers"] == "linear")
    assert float(row["test_acc"]) == 0.91 and float(row["delta_test_acc"]) == pytest.approx(0.01)
    assert row["pareto"] == "True" and float(row["baseline_test_acc"]) == 0.90
    failed = next(r for r in rows if r["kernel"] == "dst" and r["layers"] == "conv")
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: boom" and failed["test_acc"] == ""


def test_several_dirs_take_the_newest_completed_record_of_a_cell(crafted, tmp_path):
    rerun = tmp_path / "rerun"
    # the failed cell rerun in another sweep dir, and an older failed copy of a completed cell
    write_sweep(
        rerun,
        {
            "dst-conv": record("dst", "conv", 0.87, 1.1, ended="2026-02-01T00:00:00"),
            "dct-linear": record("dct", "linear", None, 3.0, status="failed", error="old", ended="2025-01-01T00:00:00"),
        },
        ["model=lenet", "trainer.max_epochs=2", "kernel=dst,dct", "layers=conv,linear"],
    )
    out = tmp_path / "out"
    report = write_report([crafted, rerun], out=out)
    by = {(r["kernel"], r["layers"]): r for r in report.records}
    assert report.duplicates == 2
    assert by[("dst", "conv")]["status"] == "completed" and by[("dst", "conv")]["test_acc"] == 0.87
    assert by[("dct", "linear")]["status"] == "completed" and by[("dct", "linear")]["test_acc"] == 0.91
    assert {(r["kernel"], r["layers"]) for r in report.failed} == {("wavelet", "conv")}
    assert (out / "report.md").exists() and not (crafted / "report.md").exists()


def test_baseline_is_per_model_and_other_overrides(tmp_path):
    sweep = tmp_path / "s"
    recs = {}
    for model, base in (("lenet", 0.9), ("alexnet", 0.5)):
        for seed, shift in ((0, 0.0), (1, 0.02)):
            for kernel, acc in (("none", base + shift), ("dct", base - 0.1)):
                r = record(kernel, "all", acc, 1.0 if kernel == "none" else 4.0, model=model)
                r["overrides"] = r["overrides"] + [f"trainer.seed={seed}"]
                recs[f"{model}-{kernel}-{seed}"] = r
    write_sweep(
        sweep,
        recs,
        ["model=lenet,alexnet", "kernel=none,dct", "layers=all", "trainer.max_epochs=2", "trainer.seed=0,1"],
    )
    report = analyze([sweep])
    assert not report.missing and report.varying == ["trainer.seed"]
    assert list(report.groups) == [("alexnet", "synthetic"), ("lenet", "synthetic")]
    delta = {(r["model"], r["kernel"], r["_other"]): r["_delta"] for r in report.records}
    assert delta[("lenet", "dct", "trainer.seed=0")] == pytest.approx(-0.1)
    assert delta[("lenet", "dct", "trainer.seed=1")] == pytest.approx(-0.12)
    assert delta[("alexnet", "dct", "trainer.seed=1")] == pytest.approx(-0.12)


def test_baseline_is_the_dense_run_closest_in_overrides_not_every_dense_run(tmp_path):
    """Single runs of the comparison protocol: the pretraining run, the dense run fine-tuned from it
    and a compressed run fine-tuned from it; the compressed run's baseline is the fine-tuned dense
    run's accuracy (0.915), not the mean with the pretraining run's (0.916)."""
    pre, runs = (
        "model.pretrained=/p/model.pt",
        {
            "pretrained": ("none", 0.9162, ["experiment=compare_pretrain", "trainer.lr=0.01"]),
            "dense": ("none", 0.9150, ["experiment=compare", "trainer.lr=0.01"]),
            "epr": ("identity", 0.9000, ["experiment=compare", "method.rate_weight=6", "trainer.distill=1.0"]),
        },
    )
    for name, (kernel, acc, overrides) in runs.items():
        r = record(kernel, "all", acc, 1.0 if kernel == "none" else 400.0)
        r["overrides"] = ["model=lenet", f"kernel={kernel}", *overrides] + ([pre] if name != "pretrained" else [])
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps(r))
    report = analyze([tmp_path / name for name in runs])
    by = {r["test_acc"]: r for r in report.records}
    assert by[0.9000]["_baseline"] == pytest.approx(0.9150) and by[0.9000]["_delta"] == pytest.approx(-0.015)
    assert by[0.9150]["_baseline"] == pytest.approx(0.9150) and by[0.9162]["_baseline"] == pytest.approx(0.9162)


def test_report_of_a_real_sweep(tmp_path, root):
    """A real multirun through the train CLI (grid_smoke with kernel=none,dct), then the report;
    every CSV value equals the record's, and a removed record shows up as a missing cell."""
    sweep = tmp_path / "sweep"
    args = [
        "experiment=grid_smoke",
        "kernel=none,dct",
        "dataset.num_train=96",
        "dataset.num_test=32",
        "trainer.batch_size=16",
        f"hydra.sweep.dir={sweep}",
    ]
    old_umask = os.umask(0o027)  # the sweep and the report under umask 027: every file 0640
    try:
        run = subprocess.run(
            [sys.executable, "-m", "cnncomp.train", "--multirun", *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert main([str(sweep)]) == 0
    finally:
        os.umask(old_umask)
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.rglob("result.json")}
    assert len(results) == 4 and all(r["status"] == "completed" for r in results.values())
    modes = {str(p.relative_to(sweep)): p.stat().st_mode & 0o777 for p in sweep.rglob("*") if p.is_file()}
    for name in ["sweep_summary.json", "report.md", "results.csv", "accuracy_vs_compression_lenet_synthetic.png"]:
        assert name in modes, name
    for job in results:
        for name in ["result.json", "metrics.csv", "model.pt", "best.pt", "last.pt"]:
            assert f"{job}/{name}" in modes, f"{job}/{name}"
    assert modes == {name: 0o640 for name in modes}

    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert len(rows) == 4
    for row in rows:
        r = results[Path(row["run_dir"]).name]
        for key in CSV_FIELDS:
            if key in ("baseline_test_acc", "delta_test_acc", "pareto", "pareto_bytes", "run_dir"):
                continue
            want = " ".join(r[key]) if key == "overrides" else r.get(key)
            assert row[key] == ("" if want is None else str(want)), key
    base = [r for r in results.values() if r["kernel"] == "none"]
    mean = sum(r["test_acc"] for r in base) / 2
    for row in rows:
        assert float(row["delta_test_acc"]) == pytest.approx(results[Path(row["run_dir"]).name]["test_acc"] - mean)
    md = (sweep / "report.md").read_text()
    assert "## lenet on synthetic" in md and "**4 completed, 0 failed/diverged/interrupted, 0 missing**" in md
    assert md.count("| completed |") == 4
    assert (sweep / "accuracy_vs_compression_lenet_synthetic.png").read_bytes()[:8] == PNG

    # the sweep "still running": one cell has not written its record yet
    victim = next(p for p in sweep.rglob("result.json") if "kernel=dct,layers=conv" in str(p))
    victim.unlink()
    report = write_report([sweep])
    assert [sorted(c) for c in report.missing] == [sorted(results[victim.parent.name]["overrides"])]
    assert report.started == report.missing  # its job dir holds .hydra/overrides.yaml


def test_cli_on_a_missing_dir_exits_1_and_creates_nothing(tmp_path):
    missing = tmp_path / "nope"
    run = subprocess.run(
        [sys.executable, "-m", "cnncomp.report", str(missing)], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [f"cnncomp-report: {missing}: no such directory"]
    assert not missing.exists() and list(tmp_path.iterdir()) == []


def test_cli_on_a_dir_without_records_exits_1_and_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"cnncomp-report: {empty}: no run record (result.json) under it"
    ]
    assert list(empty.iterdir()) == []
    # a sweep that has started but written no record yet: still nothing to report, nothing written
    (empty / "0" / ".hydra").mkdir(parents=True)
    (empty / "0" / ".hydra" / "overrides.yaml").write_text("- kernel=dct\n")
    before = sorted(empty.rglob("*"))
    assert main([str(empty), "--out", str(tmp_path / "out")]) == 1
    assert sorted(empty.rglob("*")) == before and not (tmp_path / "out").exists()


def test_cli_with_one_bad_dir_of_several_writes_nothing(crafted, tmp_path, capsys):
    before = sorted(crafted.rglob("*"))
    assert main([str(crafted), str(tmp_path / "nope")]) == 1
    assert f"{tmp_path / 'nope'}: no such directory" in capsys.readouterr().err
    assert sorted(crafted.rglob("*")) == before
    assert main([str(crafted), "--out", str(tmp_path / "out")]) == 0  # records found: --out is made
    assert (tmp_path / "out" / "report.md").exists() and (tmp_path / "out" / "results.csv").exists()


def test_method_labels_and_the_ratio_with_index_cost():
    from cnncomp.report import method_label, ratio

    assert method_label({"kernel": "dct", "selection": "block"}) == "dct"
    assert method_label({"kernel": "dct", "selection": "learned"}) == "dct/learned"
    assert method_label({"kernel": "identity", "selection": "magnitude"}) == "identity/magnitude"
    assert method_label({"kernel": "none", "selection": None}) == "none"
    assert ratio({"compression_ratio": 4.0, "compression_ratio_with_index": 2.5}) == 2.5
    assert ratio({"compression_ratio": 4.0}) == 4.0  # records written before the index cost existed


def test_plot_lines_run_only_along_keep_or_lambda_and_the_front_is_monotone(tmp_path):
    """Lines join cells of one method and layer set along keep (or λ = method.kl_scale), never cells
    of different layer sets; the front runs in order of compression with falling accuracy."""

    def cell(kernel, layers, keep, acc, r, extra=(), selection="block"):
        rec = record(kernel, layers, acc, r)
        rec["overrides"] += [f"kernel.keep={keep}", *extra] + (
            [f"kernel.selection={selection}"] if selection != "block" else []
        )
        rec.update(keep=keep, selection=None if kernel == "none" else selection)
        return rec

    records = {
        "dense": cell("none", "all", 1.0, 0.92, 1.0),
        "dct-linear-0.1": cell("dct", "linear", 0.1, 0.86, 8.0),
        "dct-linear-0.5": cell("dct", "linear", 0.5, 0.91, 1.9),
        "dct-linear-0.25": cell("dct", "linear", 0.25, 0.90, 3.5),
        "dct-conv-0.25": cell("dct", "conv", 0.25, 0.915, 1.05),
        "dct-all-0.25": cell("dct", "all", 0.25, 0.87, 4.0),
        "dst-linear-0.25": cell("dst", "linear", 0.25, 0.89, 3.5),
        "vd-1": cell("dct", "all", 1.0, 0.905, 12.0, ["method.kl_scale=1"], "learned"),
        "vd-4": cell("dct", "all", 1.0, 0.89, 27.0, ["method.kl_scale=4"], "learned"),
        "vd-2": cell("dct", "all", 1.0, 0.90, 18.0, ["method.kl_scale=2"], "learned"),
    }
    write_sweep(tmp_path / "sweep", records, ["model=lenet"])
    report = analyze([tmp_path / "sweep"])
    (rows,) = report.groups.values()
    done = [r for r in rows if r["status"] == "completed"]
    lines = {
        (m, axis, tuple((r["layers"], r["keep"], r["_others"].get("method.kl_scale")) for r in rs))
        for m, axis, rs in plot_lines(done)
    }
    assert lines == {
        ("dct", "keep", (("linear", 0.1, None), ("linear", 0.25, None), ("linear", 0.5, None))),
        ("dct/learned", "method.kl_scale", (("all", 1.0, "1"), ("all", 1.0, "2"), ("all", 1.0, "4"))),
    }
    front = [(r["compression_ratio"], round(100 * r["test_acc"], 1)) for r in front_line(done)]
    # dominated: dct-linear at keep 0.25 and 0.1, dct-all, dst-linear
    assert front == [(1.0, 92.0), (1.05, 91.5), (1.9, 91.0), (12.0, 90.5), (18.0, 90.0), (27.0, 89.0)]
    assert plot_group(rows, "lenet", tmp_path / "plot.png") and (tmp_path / "plot.png").read_bytes()[:8] == PNG


def test_csv_columns_are_the_run_records_scalar_fields_plus_the_reports_own():
    """results.csv takes its columns from RunRecord: every field but the nested config and
    layers_summary, identity and accuracy first, provenance last; a field added to the record
    shows up without editing the report."""
    from dataclasses import dataclass

    from cnncomp.report.tables import COMPUTED, JOINED_FIELDS, csv_fields, record_columns
    from cnncomp.training.record import FIELDS, RunRecord

    columns, joined = record_columns()
    assert columns == [f for f in FIELDS if f not in ("config", "layers_summary")]
    assert joined == JOINED_FIELDS == ["overrides"]
    assert sorted(CSV_FIELDS) == sorted(columns + list(COMPUTED))
    assert CSV_FIELDS[:12] == [
        "status",
        "model",
        "dataset",
        "kernel",
        "layers",
        "keep",
        "selection",
        "method",
        "test_acc",
        "baseline_test_acc",
        "delta_test_acc",
        "pareto",
    ]
    assert CSV_FIELDS[-6:] == ["config_hash", "started_at", "ended_at", "error", "overrides", "run_dir"]

    @dataclass
    class Extended(RunRecord):
        flops_saved: float | None = None
        notes: dict | None = None  # nested: no column

    assert csv_fields(Extended) == CSV_FIELDS[:-6] + ["flops_saved"] + CSV_FIELDS[-6:]


def test_records_are_read_through_the_run_record_schema(tmp_path, caplog):
    from cnncomp.report import load_results
    from cnncomp.training.record import FIELDS

    r = record("dct", "linear", 0.91, 3.0)
    r["from_a_future_version"] = 1
    write_sweep(tmp_path / "s", {"a": r, "b": record("none", "linear", 0.9, 1.0)}, ["model=lenet"])
    (tmp_path / "s" / "c").mkdir()
    (tmp_path / "s" / "c" / "result.json").write_text("[1, 2]")
    records = load_results([tmp_path / "s"])
    assert len(records) == 2 and "skipping" in caplog.text and "c/result.json" in caplog.text
    for rec in records:
        assert set(rec) == set(FIELDS) | {"_path"}  # unknown keys dropped, absent fields None
    assert records[0]["test_acc"] == 0.91 and records[0]["config_hash"] is None and records[0]["world_size"] is None
    rows = list(csv.DictReader(io.StringIO(render_csv(analyze([tmp_path / "s"])))))
    assert "from_a_future_version" not in rows[0] and rows[0]["world_size"] == ""
