"""The sweep report: `python -m cnncomp.report SWEEP_DIR [SWEEP_DIR ...]`.

Reads only the `result.json` run records under the sweep dirs (and each sweep's `multirun.yaml`
for the cells it should hold), so it works on a sweep that is still running. Writes `report.md`
(one table per model and dataset: kernel × layers × keep against test accuracy, Δ vs the dense
baseline, stored parameters, compression ratio, size on disk, images/s), `results.csv` (one flat
row per cell, its columns the scalar fields of `cnncomp.training.record.RunRecord` plus the
report's baseline, Δ and Pareto memberships) and per model and dataset an accuracy-vs-compression
and an accuracy-vs-file-bytes PNG, each with its Pareto front marked (in bytes: fewer bytes of
model.cnnc and a higher accuracy of the decoded file, also as a table); lists the missing cells and
the failed, diverged and interrupted ones with their error.

Modules: `records` (finding and reading the records through `RunRecord`, the cells a sweep should
hold), `analysis` (one record per cell, groups, baselines, Δ, the Pareto fronts), `tables`
(report.md and results.csv), `plot` (the matplotlib plot), `cli` (`write_report` and `main`).
"""

from cnncomp.report.analysis import FAILED, PLACED, Report, analyze, mark_front, method_label, pareto_front, ratio
from cnncomp.report.cli import main, write_report
from cnncomp.report.plot import BYTES, COMPRESSION, XAxis, front_line, plot_group, plot_lines
from cnncomp.report.records import RESULT, NoRecords, load_results, sweep_dir_cells
from cnncomp.report.tables import CSV_FIELDS, csv_row, render_csv, render_markdown

__all__ = [
    "BYTES",
    "COMPRESSION",
    "CSV_FIELDS",
    "FAILED",
    "PLACED",
    "RESULT",
    "NoRecords",
    "Report",
    "XAxis",
    "analyze",
    "csv_row",
    "front_line",
    "load_results",
    "main",
    "mark_front",
    "method_label",
    "pareto_front",
    "plot_group",
    "plot_lines",
    "ratio",
    "render_csv",
    "render_markdown",
    "sweep_dir_cells",
    "write_report",
]
