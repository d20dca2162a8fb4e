"""GPUs for the concurrent jobs of `hydra_plugins.cnncomp_launchers.LocalLauncher`."""

from __future__ import annotations

import os


def visible_gpus() -> list[int]:
    """GPU indices this process may hand out (CUDA_VISIBLE_DEVICES order), empty without CUDA."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [s for s in env.split(",") if s.strip()]
        if all(s.strip().isdigit() for s in ids):
            return [int(s) for s in ids]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:
        return []


class GpuPool:
    """Hands out GPUs to concurrent jobs: the least-loaded first, ties broken round-robin."""

    def __init__(self, gpus: list[int], per_job: int) -> None:
        self.gpus, self.per_job = list(gpus), per_job
        self.load = dict.fromkeys(self.gpus, 0)
        self._next = 0

    @property
    def slots(self) -> int:
        return max(1, len(self.gpus) // self.per_job) if self.gpus and self.per_job else 0

    def take(self) -> list[int]:
        if not self.gpus or not self.per_job:
            return []
        n = len(self.gpus)
        order = [self.gpus[(self._next + i) % n] for i in range(n)]
        chosen = sorted(order, key=lambda g: self.load[g])[: self.per_job]  # stable: round-robin ties
        self._next = (self.gpus.index(chosen[-1]) + 1) % n
        for g in chosen:
            self.load[g] += 1
        return chosen

    def give(self, gpus: list[int]) -> None:
        for g in gpus:
            self.load[g] -= 1
