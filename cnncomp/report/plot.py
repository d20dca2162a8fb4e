"""The plots of one model and dataset (matplotlib, imported when plotting): test accuracy against the
compression ratio (stored values), and the decoded file's test accuracy against the file's bytes."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cnncomp.atomic as atomic
from cnncomp.report.analysis import baseline, file_bytes, kernel_order, method_label, number, ratio

# the swept numeric axes along which the plot joins cells with a line: (what, how it reads, style)
LINE_AXES = (("keep", "keep", "-"), ("method.kl_scale", "λ (method.kl_scale)", "--"))
LAYER_MARKERS = {"linear": "o", "conv": "s", "all": "^"}
MORE_MARKERS = ("v", "P", "X", "<", ">", "h", "p")
DENSE_MARKER = "D"  # kernel=none, black


def _bytes_label(x: float) -> str:
    return f"{x / 2**20:g} MiB" if x >= 2**20 else f"{x / 1024:g} KiB" if x >= 1024 else f"{x:g} B"


@dataclass(frozen=True)
class XAxis:
    """What a plot puts on its log x axis: a record's value there, the record key of its Pareto
    front (`analysis.mark_front`), the axis and legend labels, and the tick labels (log base)."""

    value: Callable[[Mapping[str, Any]], float | None]
    front: str
    label: str
    legend: str
    tick: Callable[[float], str]
    base: int = 10
    ylabel: str = "test accuracy (%)"


COMPRESSION = XAxis(
    ratio, "_pareto", "compression ratio (dense / stored values incl. index cost, log scale)", "Pareto front (★)",
    lambda x: f"{x:g}×",
)  # fmt: skip
BYTES = XAxis(
    file_bytes, "_pareto_bytes", "compressed file, model.cnnc (bytes, log scale)", "Pareto front in bytes",
    _bytes_label, base=2, ylabel="test accuracy of the decoded file (%)",
)  # fmt: skip


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


def front_line(done: Sequence[Mapping[str, Any]], xaxis: XAxis = COMPRESSION) -> list[Mapping[str, Any]]:
    """The Pareto-optimal cells along `axis`: in order of compression, accuracy falling as the ratio
    rises; in order of bytes, accuracy rising with them."""
    return sorted((r for r in done if r.get(xaxis.front)), key=lambda r: (xaxis.value(r), -r["test_acc"]))


def plot_group(rows: Sequence[Mapping[str, Any]], title: str, path: Path, xaxis: XAxis = COMPRESSION) -> bool:
    """Accuracy against `xaxis` (log x: the compression ratio, or the file's bytes, whose records hold
    the decoded file's accuracy): a colour per method (`method_label`), a marker per layer set, lines
    only along a swept numeric axis (keep, λ), the dense baseline dashed and the Pareto front as a
    highlighted band through ringed points in order along x. False when nothing is plotted (no
    completed cell with a value on `xaxis`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from matplotlib.lines import Line2D

    done = [r for r in rows if r.get("status") == "completed" and number(r.get("test_acc"))]
    done = [r for r in done if number(xaxis.value(r))]
    if not done:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    methods = sorted({method_label(r) for r in done}, key=kernel_order)
    palette = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    colour = {m: "black" if m == "none" else next(palette) for m in methods}
    layer_sets = sorted({str(r.get("layers")) for r in done if r.get("kernel") != "none"})
    extra = iter(MORE_MARKERS * 4)
    marker = {lay: LAYER_MARKERS.get(lay) or next(extra) for lay in layer_sets}

    def xy(rs):
        return [xaxis.value(r) for r in rs], [100 * r["test_acc"] for r in rs]

    front = front_line(done, xaxis)
    if front:  # under everything: a wide pale band, straight segments in order of compression
        ax.plot(*xy(front), color="gold", linewidth=7, alpha=0.45, solid_capstyle="round", zorder=1)
    style = {axis: ls for axis, _, ls in LINE_AXES}
    for method, axis, rs in plot_lines(done):
        ax.plot(*xy(rs), color=colour[method], linestyle=style[axis], linewidth=1.2, zorder=2)
    for r in done:
        dense = r.get("kernel") == "none"
        ax.scatter(
            xaxis.value(r),
            100 * r["test_acc"],
            marker=DENSE_MARKER if dense else marker[str(r.get("layers"))],
            s=30,
            color=colour[method_label(r)],
            zorder=3,
        )
    if front:
        ax.scatter(*xy(front), s=150, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
    base = baseline(rows)
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
        labels.append(xaxis.legend)
    ax.set_xscale("log", base=xaxis.base)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: xaxis.tick(x)))
    # minor ticks (base 10): only the 2× and 5× of each decade are labelled, so labels do not run together
    minor = (lambda x, _: xaxis.tick(x) if f"{x:.1e}"[0] in "25" else "") if xaxis.base == 10 else (lambda x, _: "")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(minor))
    ax.set_xlabel(xaxis.label)
    ax.set_ylabel(xaxis.ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic.write_bytes(path, buf.getvalue())
    return True
