"""The sweep report: `python -m cnncomp.report SWEEP_DIR [SWEEP_DIR ...]`.

Reads only the `result.json` run records under the sweep dirs (and each sweep's `multirun.yaml`
for the cells it should hold), so it works on a sweep that is still running. Writes `report.md`
(one table per model and dataset: kernel × layers × keep against test accuracy, Δ vs the dense
baseline, stored parameters, compression ratio, size on disk, images/s), `results.csv` (one flat
row per cell) and one accuracy-vs-compression PNG per model and dataset with the Pareto front
marked; lists the missing cells and the failed, diverged and interrupted ones with their error.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cnncomp import atomic
from cnncomp.sweep import cell_key, expected_cells, override_dict

log = logging.getLogger("cnncomp.report")

RESULT = "result.json"
FAILED = ("failed", "diverged", "interrupted")
# the overrides that place a cell in a table (model, dataset) or a row (kernel, layers, keep)
PLACED = ("model", "dataset", "kernel", "layers", "kernel.keep", "recipe")
CSV_FIELDS = [
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
    "test_loss",
    "val_acc",
    "val_loss",
    "best_epoch",
    "epochs_completed",
    "dense_params",
    "stored_params",
    "index_bits",
    "compression_ratio",
    "compression_ratio_with_index",
    "model_bytes",
    "dense_model_bytes",
    "macs",
    "train_time_s",
    "images_per_s",
    "device",
    "torch_version",
    "git_commit",
    "config_hash",
    "started_at",
    "ended_at",
    "error",
    "overrides",
    "run_dir",
]


# ---------------------------------------------------------------------------------------------
# the cells of a sweep


def sweep_dir_cells(sweep_dir: Path) -> list[list[str]]:
    """Cells that the sweeps under `sweep_dir` should produce: `cnncomp.sweep.expected_cells` of
    each saved `multirun.yaml` (its task overrides and sweeper params); [] where there is none."""
    cells: list[list[str]] = []
    for path in sorted(Path(sweep_dir).rglob("multirun.yaml")):
        expanded = expected_cells(OmegaConf.load(path))
        if expanded is None:  # another sweeper, or a glob() sweep, which needs the config repository
            log.warning("cannot expand the sweep of %s as the basic sweeper does", path)
        cells += expanded or []
    return cells


# ---------------------------------------------------------------------------------------------
# reading run records


def load_results(dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every run record under `dirs` (atomic writes leave only `.result.json.*.tmp` files beside a
    record being written, which the exact name skips). Unreadable files are skipped with a warning."""
    records = []
    for d in dirs:
        for path in sorted(Path(d).rglob(RESULT)):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                log.warning("skipping %s: %s", path, err)
                continue
            record["_path"] = str(path)
            records.append(record)
    return records


def _newest_best(records: list[dict]) -> dict:
    """Of several records of one cell: a completed one first, then the one that ended last."""
    return max(records, key=lambda r: (r.get("status") == "completed", r.get("ended_at") or ""))


def _started_cells(dirs: Iterable[Path]) -> set[frozenset[str]]:
    """Cells whose job has started (Hydra wrote `.hydra/overrides.yaml` into its job dir)."""
    started = set()
    for d in dirs:
        for path in Path(d).rglob("overrides.yaml"):
            if path.parent.name == ".hydra":
                try:
                    started.add(cell_key(OmegaConf.to_container(OmegaConf.load(path))))
                except Exception:  # a file being written
                    continue
    return started


# ---------------------------------------------------------------------------------------------
# analysis


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (compression ratio, accuracy) that no other point dominates (at least
    as compressed and as accurate, better in one), sorted by ratio. Equal points are all kept."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


@dataclass
class Report:
    """Records of a set of sweeps, placed in cells and grouped per (model, dataset)."""

    records: list[dict[str, Any]]  # one per cell (the best record of duplicates), in report order
    missing: list[list[str]]  # expected cells without a record
    started: list[list[str]]  # the missing cells whose job has started
    common: dict[str, str]  # overrides every record shares
    varying: list[str]  # override keys beyond PLACED that differ between records
    duplicates: int = 0
    groups: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("status") in FAILED]


def _kernel_order(kernel: str) -> tuple[int, str]:
    return (kernel != "none", kernel)


def method_label(r: Mapping[str, Any]) -> str:
    """The kernel, with what picked the stored values when that is not the default block: dct,
    dct/learned, identity/magnitude."""
    kernel, selection = str(r.get("kernel")), r.get("selection")
    return kernel if selection in (None, "block", kernel) else f"{kernel}/{selection}"


def ratio(r: Mapping[str, Any]) -> float | None:
    """Compression ratio with the index cost of masks included (older records: without)."""
    return r.get("compression_ratio_with_index", r.get("compression_ratio"))


def analyze(dirs: Sequence[str | Path]) -> Report:
    """Read and place every record: deduplicate, find missing cells, baselines, Δ and Pareto fronts."""
    dirs = [Path(d) for d in dirs]
    expected = [c for d in dirs for c in sweep_dir_cells(d)]
    by_cell: dict[Any, list[dict]] = {}
    for r in load_results(dirs):
        # a record of a single run (no overrides) is its own cell
        key = cell_key(r.get("overrides") or []) if r.get("overrides") else ("run", r["_path"])
        by_cell.setdefault(key, []).append(r)
    records = [_newest_best(rs) for rs in by_cell.values()]
    duplicates = sum(len(rs) - 1 for rs in by_cell.values())
    seen, missing = set(), []
    for cell in expected:
        key = cell_key(cell)
        if key not in by_cell and key not in seen:
            missing.append(cell)
        seen.add(key)
    started_keys = _started_cells(dirs) if missing else set()
    started = [c for c in missing if cell_key(c) in started_keys]

    overrides = [override_dict(r.get("overrides") or []) for r in records]
    keys = sorted({k for o in overrides for k in o})
    common = {k: overrides[0][k] for k in keys if overrides and all(o.get(k) == overrides[0].get(k) for o in overrides)}
    varying = [k for k in keys if k not in common and k not in PLACED]
    for r, o in zip(records, overrides, strict=True):
        r["_others"] = {k: o[k] for k in varying if k in o}
        r["_other"] = " ".join(f"{k}={v}" for k, v in r["_others"].items())

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((str(r.get("model")), str(r.get("dataset"))), []).append(r)
    for key in sorted(groups):
        rows = groups[key]
        rows.sort(key=lambda r: (_kernel_order(method_label(r)), str(r.get("layers")), r.get("keep") or 0, r["_other"]))
        _baselines(rows)
        done = [r for r in rows if r.get("status") == "completed" and _number(r.get("test_acc"))]
        front = pareto_front([(ratio(r), r["test_acc"]) for r in done])
        for i, r in enumerate(done):
            r["_pareto"] = i in front
    records = [r for key in sorted(groups) for r in groups[key]]
    return Report(records, missing, started, common, varying, duplicates, {k: groups[k] for k in sorted(groups)})


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _baselines(rows: list[dict]) -> None:
    """Each row's dense baseline: the mean test accuracy of the completed kernel=none cells of its
    model and dataset that share its other overrides (any kernel=none cell when none does)."""
    dense = [r for r in rows if r.get("kernel") == "none" and r.get("status") == "completed"]
    dense = [r for r in dense if _number(r.get("test_acc"))]
    for r in rows:
        same = [d for d in dense if d["_other"] == r["_other"]] or dense
        base = sum(d["test_acc"] for d in same) / len(same) if same else None
        r["_baseline"] = base
        r["_delta"] = r["test_acc"] - base if base is not None and _number(r.get("test_acc")) else None


# ---------------------------------------------------------------------------------------------
# writing


def _fmt_int(x: Any) -> str:
    return f"{x:,}" if _number(x) else "–"


def _fmt_bytes(x: Any) -> str:
    if not _number(x):
        return "–"
    return f"{x / 2**20:.2f} MiB" if x >= 2**20 else f"{x / 1024:.1f} KiB"


def _fmt(x: Any, spec: str, suffix: str = "") -> str:
    return f"{x:{spec}}{suffix}" if _number(x) else "–"


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(report: Report, dirs: Sequence[Path], plots: Mapping[tuple[str, str], str]) -> str:
    n = len(report.records)
    completed = sum(r.get("status") == "completed" for r in report.records)
    lines = [
        "# Sweep report",
        "",
        f"Sweeps: {', '.join(f'`{d}`' for d in dirs)}  ",
        f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} from {n} run records"
        + (f" ({report.duplicates} older duplicates ignored)" if report.duplicates else "")
        + ".",
        "",
        f"**{completed} completed, {len(report.failed)} failed/diverged/interrupted, "
        f"{len(report.missing)} missing** ({len(report.started)} of them started).",
        "",
    ]
    if report.common:
        lines += ["Common overrides: " + " ".join(f"`{k}={v}`" for k, v in report.common.items()), ""]
    lines += [
        "Accuracy is test accuracy of the best-validation epoch (sparse VD: the last, pruned); "
        "Δ is in percentage points against the "
        "dense baseline (kernel=none) of the same model and dataset. Ratio: dense / stored values; "
        "with index: the bits that say which coefficients a mask kept counted in too (32 per value), "
        "the ratio ★ (the Pareto front of accuracy against compression) and the plots use.",
        "",
    ]
    other = bool(report.varying)
    for (model, dataset), rows in report.groups.items():
        lines += [f"## {model} on {dataset}", ""]
        base = next((r["_baseline"] for r in rows if r.get("_baseline") is not None), None)
        if base is None:
            lines += ["No completed dense baseline (kernel=none) yet.", ""]
        head = ["method", "layers", "keep"] + (["other"] if other else []) + ["status", "test acc %", "Δ pp"]
        head += ["stored values", "index bits", "ratio", "with index", "size on disk", "images/s", "front"]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for r in rows:
            cells = [method_label(r), str(r.get("layers")), _fmt(r.get("keep"), "g")]
            cells += [_md_escape(r["_other"]) or "–"] if other else []
            cells += [
                str(r.get("status")),
                _fmt(100 * r["test_acc"] if _number(r.get("test_acc")) else None, ".2f"),
                _fmt(100 * r["_delta"] if r.get("_delta") is not None else None, "+.2f"),
                _fmt_int(r.get("stored_params")),
                _fmt_int(r.get("index_bits")),
                _fmt(r.get("compression_ratio"), ".2f", "×"),
                _fmt(ratio(r), ".2f", "×"),
                _fmt_bytes(r.get("model_bytes")),
                _fmt(r.get("images_per_s"), ",.0f"),
                "★" if r.get("_pareto") else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if (model, dataset) in plots:
            lines += [f"![{model} on {dataset}]({plots[(model, dataset)]})", ""]
    if report.failed:
        lines += ["## Failed cells", ""]
        for r in report.failed:
            where = Path(r["_path"]).parent
            lines.append(
                f"- **{r.get('status')}** `{' '.join(r.get('overrides') or [])}` ({where}): "
                f"{_md_escape(str(r.get('error') or 'no error message'))}"
            )
        lines.append("")
    if report.missing:
        lines += ["## Missing cells", "", "Expected from the sweep's overrides, without a result.json:", ""]
        started = {cell_key(c) for c in report.started}
        for cell in report.missing:
            lines.append(f"- `{' '.join(cell)}`" + (" (started, no result yet)" if cell_key(cell) in started else ""))
        lines.append("")
    return "\n".join(lines)


def csv_row(r: Mapping[str, Any]) -> dict[str, Any]:
    """One flat CSV row of a record: its scalar fields, the overrides joined by spaces, and the
    report's baseline, Δ and Pareto membership."""
    row = {k: r.get(k) for k in CSV_FIELDS}
    row["overrides"] = " ".join(r.get("overrides") or [])
    row["run_dir"] = str(Path(r["_path"]).parent) if "_path" in r else r.get("run_dir")
    row["baseline_test_acc"] = r.get("_baseline")
    row["delta_test_acc"] = r.get("_delta")
    row["pareto"] = r.get("_pareto", False)
    return row


def render_csv(report: Report) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in report.records:
        writer.writerow({k: "" if v is None else v for k, v in csv_row(r).items()})
    return buf.getvalue()


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


# the swept numeric axes along which the plot joins cells with a line: (what, how it reads, style)
LINE_AXES = (("keep", "keep", "-"), ("method.kl_scale", "λ (method.kl_scale)", "--"))
LAYER_MARKERS = {"linear": "o", "conv": "s", "all": "^"}
MORE_MARKERS = ("v", "P", "X", "<", ">", "h", "p")
DENSE_MARKER = "D"  # kernel=none, black


def _axis_value(r: Mapping[str, Any], axis: str) -> float | None:
    """A record's value on a swept numeric axis: its keep, or a varying override such as method.kl_scale."""
    value = r.get("keep") if axis == "keep" else (r.get("_others") or {}).get(axis)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def plot_lines(done: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, list[Mapping[str, Any]]]]:
    """The lines of the plot: (method, axis, records in order of the axis) for each set of completed
    cells that differ only in one swept numeric axis (LINE_AXES) and take at least two values on it:
    same method, layers and every other override. Cells of different layer sets are never joined."""
    lines = []
    for axis, _, _ in LINE_AXES:
        series: dict[tuple, list[Mapping[str, Any]]] = {}
        for r in done:
            value = _axis_value(r, axis)
            if value is None or r.get("kernel") == "none":
                continue
            others = tuple(sorted((k, v) for k, v in (r.get("_others") or {}).items() if k != axis))
            keep = None if axis == "keep" else r.get("keep")
            series.setdefault((method_label(r), str(r.get("layers")), keep, others), []).append(r)
        for (method, *_), rs in series.items():
            if len({_axis_value(r, axis) for r in rs}) > 1:
                lines.append((method, axis, sorted(rs, key=lambda r: (_axis_value(r, axis), ratio(r)))))
    return lines


def front_line(done: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The Pareto-optimal cells in order of compression: accuracy falls as the ratio rises."""
    return sorted((r for r in done if r.get("_pareto")), key=lambda r: (ratio(r), -r["test_acc"]))


def plot_group(rows: Sequence[Mapping[str, Any]], title: str, path: Path) -> bool:
    """Accuracy against compression ratio (log x): a colour per method (`method_label`), a marker per
    layer set, lines only along a swept numeric axis (keep, λ), the dense baseline dashed and the
    Pareto front as a highlighted band through ringed points in order of compression. False when
    nothing is plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from matplotlib.lines import Line2D

    done = [r for r in rows if r.get("status") == "completed" and _number(r.get("test_acc"))]
    done = [r for r in done if _number(ratio(r))]
    if not done:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    methods = sorted({method_label(r) for r in done}, key=_kernel_order)
    palette = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    colour = {m: "black" if m == "none" else next(palette) for m in methods}
    layer_sets = sorted({str(r.get("layers")) for r in done if r.get("kernel") != "none"})
    extra = iter(MORE_MARKERS * 4)
    marker = {lay: LAYER_MARKERS.get(lay) or next(extra) for lay in layer_sets}

    def xy(rs):
        return [ratio(r) for r in rs], [100 * r["test_acc"] for r in rs]

    front = front_line(done)
    if front:  # under everything: a wide pale band, straight segments in order of compression
        ax.plot(*xy(front), color="gold", linewidth=7, alpha=0.45, solid_capstyle="round", zorder=1)
    style = {axis: ls for axis, _, ls in LINE_AXES}
    for method, axis, rs in plot_lines(done):
        ax.plot(*xy(rs), color=colour[method], linestyle=style[axis], linewidth=1.2, zorder=2)
    for r in done:
        dense = r.get("kernel") == "none"
        ax.scatter(
            ratio(r),
            100 * r["test_acc"],
            marker=DENSE_MARKER if dense else marker[str(r.get("layers"))],
            s=30,
            color=colour[method_label(r)],
            zorder=3,
        )
    if front:
        ax.scatter(*xy(front), s=150, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
    base = next((r["_baseline"] for r in rows if r.get("_baseline") is not None), None)
    if base is not None:
        ax.axhline(100 * base, color="gray", linestyle="--", linewidth=1, zorder=0)

    handles = [
        Line2D(
            [],
            [],
            color=colour[m],
            marker=DENSE_MARKER if m == "none" else None,
            linestyle="none" if m == "none" else "-",
        )
        for m in methods
    ]
    labels = ["dense (none)" if m == "none" else m for m in methods]
    handles += [Line2D([], [], color="gray", marker=marker[lay], linestyle="none") for lay in layer_sets]
    labels += [f"layers={lay}" for lay in layer_sets]
    drawn = {axis for _, axis, _ in plot_lines(done)}
    for axis, name, ls in LINE_AXES:
        if axis in drawn:
            handles.append(Line2D([], [], color="gray", linestyle=ls))
            labels.append(f"along {name}")
    if base is not None:
        handles.append(Line2D([], [], color="gray", linestyle="--", linewidth=1))
        labels.append("dense baseline")
    if front:
        handles.append(
            Line2D([], [], color="gold", alpha=0.6, linewidth=6, marker="o", markersize=10, mfc="none", mec="black")
        )
        labels.append("Pareto front (★)")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g×"))
    # minor ticks: only the 2× and 5× of each decade are labelled, so labels do not run together
    ax.xaxis.set_minor_formatter(
        matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}×" if f"{x:.1e}"[0] in "25" else "")
    )
    ax.set_xlabel("compression ratio (dense / stored values incl. index cost, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic.write_bytes(path, buf.getvalue())
    return True


class NoRecords(FileNotFoundError):
    """A sweep dir that does not exist or holds no run record: nothing to report."""


def write_report(dirs: Sequence[str | Path], out: str | Path | None = None) -> Report:
    """Analyze the sweeps and write report.md, results.csv and the plots into `out` (default: the
    first sweep dir); returns the analysis. Raises `NoRecords`, writing nothing, when a dir does not
    exist or holds no run record."""
    dirs = [Path(d) for d in dirs]
    problems = []
    for d in dirs:
        if not d.exists():
            problems.append(f"{d}: no such directory")
        elif not d.is_dir():
            problems.append(f"{d}: not a directory")
        elif next(d.rglob(RESULT), None) is None:
            problems.append(f"{d}: no run record ({RESULT}) under it")
    if problems:
        raise NoRecords("; ".join(problems))
    report = analyze(dirs)
    if not report.records:
        raise NoRecords(f"{', '.join(map(str, dirs))}: no readable run record ({RESULT})")
    out = Path(out) if out is not None else dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    plots = {}
    for (model, dataset), rows in report.groups.items():
        name = f"accuracy_vs_compression_{_slug(model)}_{_slug(dataset)}.png"
        if plot_group(rows, f"{model} on {dataset}", out / name):
            plots[(model, dataset)] = name
    atomic.write_bytes(out / "report.md", render_markdown(report, dirs, plots).encode())
    atomic.write_bytes(out / "results.csv", render_csv(report).encode())
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnncomp-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", metavar="SWEEP_DIR", help="sweep dirs (searched recursively)")
    parser.add_argument("--out", help="where to write report.md, results.csv and the plots (default: the first dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        report = write_report(args.dirs, args.out)
    except NoRecords as err:
        print(f"cnncomp-report: {err}", file=sys.stderr)
        return 1
    out = Path(args.out or args.dirs[0])
    completed = sum(r.get("status") == "completed" for r in report.records)
    print(
        f"{len(report.records)} cells: {completed} completed, {len(report.failed)} failed/diverged/interrupted, "
        f"{len(report.missing)} missing -> {out / 'report.md'}, {out / 'results.csv'}, {len(report.groups)} plot(s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
