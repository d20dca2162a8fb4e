"""What every section shares: the `Timer`, the `Row` (a figure and its baseline), the markdown
table and the machine facts printed with it."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from cnncomp.training.record import device_name


@dataclass
class Row:
    """One figure and its baseline; ratio = value / baseline."""

    section: str
    name: str
    unit: str
    value: float
    baseline_name: str
    baseline: float
    better: str  # "higher" or "lower": which direction of value is an improvement
    ratio: float = field(init=False)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ratio = self.value / self.baseline


@dataclass
class Timer:
    """Warm-up calls, then the median seconds of `repeats` timed calls (device synchronized)."""

    device: torch.device
    warmup: int
    repeats: int

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _once(self, fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def __call__(self, fn: Callable[[], Any]) -> float:
        return self.pair(fn)[0]

    def pair(self, *fns: Callable[[], Any]) -> list[float]:
        """Median seconds of each function, timed in alternation (fn, baseline, fn, baseline, …) so
        that a change of load on a shared machine hits both alike; the order rotates every repeat
        so that no function always runs right after the same other one."""
        for _ in range(self.warmup):
            for fn in fns:
                fn()
        self.sync()
        times: list[list[float]] = [[] for _ in fns]
        for r in range(self.repeats):
            for i in [(r + j) % len(fns) for j in range(len(fns))]:
                times[i].append(self._once(fns[i]))
        return [statistics.median(t) for t in times]


def machine(device: torch.device) -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "device": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": load,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def markdown(rows: list[Row]) -> str:
    lines = [
        "| section | figure | value | baseline | baseline value | ratio | better |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.section} | {r.name} | {_fmt(r.value)} {r.unit} | {r.baseline_name} | "
            f"{_fmt(r.baseline)} {r.unit} | {r.ratio:.3f} | {r.better} |"
        )
    return "\n".join(lines)
