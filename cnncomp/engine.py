"""The training step, evaluation, optimizer and schedule: plain PyTorch, no framework."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "none")
PRECISIONS = ("32", "bf16")
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(
    model: nn.Module, *, name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum or AdamW; no weight decay on biases and normalization parameters.
    Decay on transform coefficients equals decay on the weight: the bases are orthonormal."""
    decay, no_decay = [], []
    for module in model.modules():
        for name_, p in module.named_parameters(recurse=False):
            (no_decay if isinstance(module, NORM_LAYERS) or name_ == "bias" else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def build_schedule(
    optimizer: torch.optim.Optimizer, *, name: str, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step learning-rate schedule over `total_steps` (None for a constant rate)."""
    if name == "onecycle":
        lrs = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lrs, total_steps=total_steps, pct_start=0.25)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "none":
        return None
    raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _batches(loader: Iterable, limit: int | None) -> Iterable:
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            return
        yield batch


def train_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None,
    *,
    device: torch.device,
    precision: str = "32",
    limit: int | None = None,
    progress=None,
) -> dict[str, float]:
    """One pass over `loader`; loss and accuracy accumulate on the device (one sync per epoch)."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for x, y in _batches(loader, limit):
        with _autocast(device, precision):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        loss_sum += loss.detach() * y.numel()
        correct += (logits.argmax(1) == y).sum()
        seen += y.numel()
        if progress is not None:
            progress.update(1)
    return {"loss": (loss_sum / max(seen, 1)).item(), "acc": correct.item() / max(seen, 1), "images": seen}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    precision: str = "32",
    limit: int | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy; compressed weights are rebuilt once, not once per batch."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    with parametrize.cached():
        for x, y in _batches(loader, limit):
            with _autocast(device, precision):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            seen += y.numel()
    if seen == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    return {"loss": (loss_sum / seen).item(), "acc": correct.item() / seen}
