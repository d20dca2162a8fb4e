"""The sweep report: `python -m cnncomp.report SWEEP_DIR [SWEEP_DIR ...]`.

Reads only the `result.json` run records under the sweep dirs (and each sweep's `multirun.yaml`
for the cells it should hold), so it works on a sweep that is still running. Writes `report.md`
(one table per model and dataset: kernel × layers × keep against test accuracy, Δ vs the dense
baseline, stored parameters, compression ratio, size on disk, images/s), `results.csv` (one flat
row per cell, its columns the scalar fields of `cnncomp.training.record.RunRecord` plus the
report's baseline, Δ and Pareto membership) and one accuracy-vs-compression PNG per model and
dataset with the Pareto front marked; lists the missing cells and the failed, diverged and
interrupted ones with their error.

Modules: `records` (finding and reading the records through `RunRecord`, the cells a sweep should
hold), `analysis` (one record per cell, groups, baselines, Δ, the Pareto front), `tables`
(report.md and results.csv), `plot` (the matplotlib plot), `cli` (`write_report` and `main`).
"""

from cnncomp.report.analysis import FAILED, PLACED, Report, analyze, method_label, pareto_front, ratio
from cnncomp.report.cli import main, write_report
from cnncomp.report.plot import front_line, plot_group, plot_lines
from cnncomp.report.records import RESULT, NoRecords, load_results, sweep_dir_cells
from cnncomp.report.tables import CSV_FIELDS, csv_row, render_csv, render_markdown

__all__ = [
    "CSV_FIELDS",
    "FAILED",
    "PLACED",
    "RESULT",
    "NoRecords",
    "Report",
    "analyze",
    "csv_row",
    "front_line",
    "load_results",
    "main",
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
