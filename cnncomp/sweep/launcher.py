"""What the launchers in `hydra_plugins.cnncomp_launchers` share with the sweep callback.

The JobReturns of the current multirun, by job number, are filled by the launchers of this
process (submitit jobs run elsewhere) and by `SweepCallback.on_job_end` (the basic launcher runs
jobs here); the callback's end-of-sweep summary reads them.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

_RETURNS: dict[int, JobReturn] = {}


def record_return(num: int, job_return: JobReturn) -> None:
    """Remember what a cell returned (called in the sweep driver's process)."""
    _RETURNS[int(num)] = job_return


def recorded_returns() -> dict[int, JobReturn]:
    """A copy of the JobReturns recorded so far in this multirun."""
    return dict(_RETURNS)


def clear_returns() -> None:
    """Forget the JobReturns of an earlier multirun (a new one starts)."""
    _RETURNS.clear()


def failed_return(overrides: list[str], error: str) -> JobReturn:
    """A JobReturn for a cell whose job died without a result (so the sweep goes on).

    Its status is COMPLETED so that Hydra's sweeper does not abort the remaining batches; the
    record inside says `failed`, and the summary counts it as failed.
    """
    record = {"status": "failed", "error": error, "overrides": list(overrides), "lost": True}
    return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=record)


def importable_task(fn: Any) -> Any:
    """The task function as one a job process can import: `python -m cnncomp.train` defines it in
    `__main__`, which cloudpickle would pickle by value (with torch modules in its globals)."""
    if getattr(fn, "__module__", None) != "__main__":
        return fn
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None or not spec.name or spec.name == "__main__":
        return fn
    import importlib

    found = getattr(importlib.import_module(spec.name), fn.__name__, None)
    found = getattr(found, "__wrapped__", found)  # @hydra.main's wrapper -> the task function
    return found if callable(found) else fn
