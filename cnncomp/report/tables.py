"""The report's tables: `report.md` (counts, one table per model and dataset, the failed and the
missing cells) and `results.csv` (one flat row per cell, its columns derived from `RunRecord`)."""

from __future__ import annotations

import csv
import dataclasses
import io
import types
import typing
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cnncomp.report.analysis import Report, baseline, file_bytes, method_label, number, ratio
from cnncomp.sweep import cell_key
from cnncomp.training.record import RunRecord

# ---------------------------------------------------------------------------------------------
# results.csv: the record's scalar fields (nested ones left out, lists of strings joined by
# spaces), ordered with the cell's identity and headline accuracy first, the report's own columns
# after it, provenance last, and every other field in the record's order between them

LEAD = ("status", "model", "dataset", "kernel", "layers", "keep", "selection", "method", "test_acc")
COMPUTED = ("baseline_test_acc", "delta_test_acc", "pareto", "pareto_bytes")
TAIL = ("config_hash", "started_at", "ended_at", "error", "overrides", "run_dir")


def _shape(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """The container of a type hint (`X | None` read as X) and its arguments: (list, (str,)) for list[str]."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else hint
    return typing.get_origin(hint) or hint, typing.get_args(hint)


def record_columns(record: type = RunRecord) -> tuple[list[str], list[str]]:
    """The fields of a run record dataclass that make CSV columns, in its order (for `RunRecord`:
    `FIELDS` without config and layers_summary), and those of them that are lists of strings."""
    hints = typing.get_type_hints(record)
    columns, joined = [], []
    for f in dataclasses.fields(record):
        container, args = _shape(hints[f.name])
        if container is list and args == (str,):
            joined.append(f.name)
        elif container in (dict, list):  # config, layers_summary: nested, not a CSV value
            continue
        columns.append(f.name)
    return columns, joined


def csv_fields(record: type = RunRecord) -> list[str]:
    """The header of results.csv: LEAD, COMPUTED, the record's other columns in its order, TAIL."""
    columns, _ = record_columns(record)
    unknown = sorted(set(LEAD + TAIL) - set(columns))
    if unknown:
        raise TypeError(f"not scalar fields of {record.__name__}: {', '.join(unknown)}")
    return [*LEAD, *COMPUTED, *(c for c in columns if c not in LEAD and c not in TAIL), *TAIL]


CSV_FIELDS = csv_fields()
JOINED_FIELDS = record_columns()[1]


def csv_row(r: Mapping[str, Any]) -> dict[str, Any]:
    """One flat CSV row of a record: its scalar fields, the overrides joined by spaces, and the
    report's baseline, Δ and Pareto memberships (pareto_bytes: empty for a record without file bytes)."""
    row = {k: r.get(k) for k in CSV_FIELDS}
    for k in JOINED_FIELDS:
        row[k] = " ".join(r.get(k) or [])
    row["run_dir"] = str(Path(r["_path"]).parent) if "_path" in r else r.get("run_dir")
    row["baseline_test_acc"] = r.get("_baseline")
    row["delta_test_acc"] = r.get("_delta")
    row["pareto"] = r.get("_pareto", False)
    row["pareto_bytes"] = r.get("_pareto_bytes")
    return row


def render_csv(report: Report) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in report.records:
        writer.writerow({k: "" if v is None else v for k, v in csv_row(r).items()})
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# report.md


def _fmt_int(x: Any) -> str:
    return f"{x:,}" if number(x) else "–"


def _fmt_bytes(x: Any) -> str:
    if not number(x):
        return "–"
    return f"{x / 2**20:.2f} MiB" if x >= 2**20 else f"{x / 1024:.1f} KiB"


def _fmt(x: Any, spec: str, suffix: str = "") -> str:
    return f"{x:{spec}}{suffix}" if number(x) else "–"


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def _head(report: Report, dirs: Sequence[Path]) -> list[str]:
    """The title, the counts, the common overrides and what the columns mean."""
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
    return lines + [
        "Accuracy is test accuracy of the best-validation epoch (sparse VD: the last, pruned); "
        "Δ is in percentage points against the "
        "dense baseline (kernel=none) of the same model and dataset. Ratio: dense / stored values; "
        "with index: the bits that say which coefficients a mask kept counted in too (32 per value), "
        "the ratio ★ (the Pareto front of accuracy against compression) and the plots use. "
        "File: the compressed file model.cnnc (the codec's bytes; its test accuracy is the decoded file's), "
        "× bytes: the dense model's fp32 bytes over it; bytes ★: the Pareto front of accuracy against the "
        "file's bytes (fewer bytes, higher accuracy).",
        "",
    ]


def _table(rows: Sequence[Mapping[str, Any]], other: bool) -> list[str]:
    """The table of one model and dataset, with an `other` column when other overrides vary."""
    lines = [] if baseline(rows) is not None else ["No completed dense baseline (kernel=none) yet.", ""]
    head = ["method", "layers", "keep"] + (["other"] if other else []) + ["status", "test acc %", "Δ pp"]
    head += ["stored values", "index bits", "ratio", "with index", "file", "× bytes", "images/s", "front", "bytes ★"]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [method_label(r), str(r.get("layers")), _fmt(r.get("keep"), "g")]
        cells += [_md_escape(r["_other"]) or "–"] if other else []
        cells += [
            str(r.get("status")),
            _fmt(100 * r["test_acc"] if number(r.get("test_acc")) else None, ".2f"),
            _fmt(100 * r["_delta"] if r.get("_delta") is not None else None, "+.2f"),
            _fmt_int(r.get("stored_params")),
            _fmt_int(r.get("index_bits")),
            _fmt(r.get("compression_ratio"), ".2f", "×"),
            _fmt(ratio(r), ".2f", "×"),
            _fmt_bytes(r.get("file_bytes")),
            _fmt(r.get("file_ratio"), ".1f", "×"),
            _fmt(r.get("images_per_s"), ",.0f"),
            "★" if r.get("_pareto") else "",
            "★" if r.get("_pareto_bytes") else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _bytes_front(rows: Sequence[Mapping[str, Any]], other: bool) -> list[str]:
    """The Pareto front in bytes of one model and dataset, fewest bytes first, and a note on the
    completed cells left out for want of a file (records from before the codec)."""
    done = [r for r in rows if r.get("status") == "completed" and number(r.get("test_acc"))]
    left_out = sum(file_bytes(r) is None for r in done)
    note = (
        [f"{left_out} completed cell(s) without `file_bytes` (records from before the codec wrote model.cnnc) "
         "left out of the front in bytes and its plot.", ""]
        if left_out else []
    )  # fmt: skip
    front = sorted((r for r in done if r.get("_pareto_bytes")), key=lambda r: (file_bytes(r), -r["test_acc"]))
    if not front:
        return note
    head = ["method", "layers", "keep"] + (["other"] if other else [])
    head += ["file bytes", "× bytes", "bits / value", "test acc %", "Δ pp"]
    lines = ["Pareto front in bytes (the decoded file's accuracy against its size, fewest bytes first):", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in front:
        cells = [method_label(r), str(r.get("layers")), _fmt(r.get("keep"), "g")]
        cells += [_md_escape(r["_other"]) or "–"] if other else []
        cells += [
            _fmt_int(file_bytes(r)),
            _fmt(r.get("file_ratio"), ".1f", "×"),
            _fmt(r.get("bits_per_value"), ".2f"),
            _fmt(100 * r["test_acc"], ".2f"),
            _fmt(100 * r["_delta"] if r.get("_delta") is not None else None, "+.2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""] + note


def _failed_and_missing(report: Report) -> list[str]:
    """The failed / diverged / interrupted cells with their error, then the missing cells."""
    lines = []
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
    return lines


def render_markdown(report: Report, dirs: Sequence[Path], plots: Mapping[tuple[str, str], Sequence[str]]) -> str:
    """report.md: the head, per model and dataset its table, its Pareto front in bytes and its plots,
    then the failed and missing cells."""
    lines = _head(report, dirs)
    for (model, dataset), rows in report.groups.items():
        lines += [f"## {model} on {dataset}", ""] + _table(rows, bool(report.varying))
        lines += _bytes_front(rows, bool(report.varying))
        for name in plots.get((model, dataset), ()):
            lines += [f"![{model} on {dataset}: accuracy vs {name.split('_')[2]}]({name})", ""]
    return "\n".join(lines + _failed_and_missing(report))
