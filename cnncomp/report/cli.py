"""Writing a report's files (`write_report`) and the command line `cnncomp-report` (`main`)."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import cnncomp.atomic as atomic
from cnncomp.report.analysis import Report, analyze
from cnncomp.report.plot import BYTES, COMPRESSION, plot_group
from cnncomp.report.records import RESULT, NoRecords, check_dirs
from cnncomp.report.tables import render_csv, render_markdown

DESCRIPTION = "The sweep report: `python -m cnncomp.report SWEEP_DIR [SWEEP_DIR ...]`."


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def write_report(dirs: Sequence[str | Path], out: str | Path | None = None) -> Report:
    """Analyze the sweeps and write report.md, results.csv and the plots into `out` (default: the
    first sweep dir); returns the analysis. Raises `NoRecords`, writing nothing, when a dir does not
    exist or holds no run record."""
    dirs = [Path(d) for d in dirs]
    check_dirs(dirs)
    report = analyze(dirs)
    if not report.records:
        raise NoRecords(f"{', '.join(map(str, dirs))}: no readable run record ({RESULT})")
    out = Path(out) if out is not None else dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[tuple[str, str], list[str]] = {}
    for (model, dataset), rows in report.groups.items():
        for what, xaxis in (("compression", COMPRESSION), ("bytes", BYTES)):
            name = f"accuracy_vs_{what}_{_slug(model)}_{_slug(dataset)}.png"
            if plot_group(rows, f"{model} on {dataset}", out / name, xaxis):
                plots.setdefault((model, dataset), []).append(name)
    atomic.write_bytes(out / "report.md", render_markdown(report, dirs, plots).encode())
    atomic.write_bytes(out / "results.csv", render_csv(report).encode())
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnncomp-report", description=DESCRIPTION)
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
        f"{len(report.missing)} missing -> {out / 'report.md'}, {out / 'results.csv'}, "
        f"plots of {len(report.groups)} model/dataset group(s)"
    )
    return 0
