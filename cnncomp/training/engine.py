"""The training step, evaluation, optimizer and schedule: plain PyTorch, no framework."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "none")
PRECISIONS = ("32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def resolve_device(name: str) -> torch.device:
    """trainer.device: auto (CUDA when available), cpu or cuda."""
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; allowed: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but no CUDA device is available; use trainer.device=cpu or auto")
    return torch.device(name)


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum or AdamW; no weight decay on biases, normalization parameters and
    the parameters a module names in its `no_weight_decay()` (timm's convention; e.g. sparse VD's
    log σ²). Decay on transform coefficients equals decay on the weight: the bases are orthonormal.

    fused=None (default) uses the fused single-kernel update where this torch has one for the
    parameters' device (CUDA; CPU too since torch 2.4: 3x faster than the per-tensor loop for
    LeNet-5 here) and the multi-tensor `foreach` update otherwise; False forces `foreach`.
    """
    decay, no_decay = [], []
    for module in model.modules():
        exempt = ("bias", *module.no_weight_decay()) if hasattr(module, "no_weight_decay") else ("bias",)
        for name_, p in module.named_parameters(recurse=False):
            (no_decay if isinstance(module, NORM_LAYERS) or name_ in exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        cls, kwargs = torch.optim.SGD, {"lr": lr, "momentum": momentum, "nesterov": True}
    elif name == "adamw":
        cls, kwargs = torch.optim.AdamW, {"lr": lr}
    else:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    if fused is not False:
        try:
            return cls(groups, **kwargs, fused=True)
        except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device/dtype/torch
            if fused:
                raise
    return cls(groups, **kwargs, foreach=True)


def build_schedule(
    optimizer: torch.optim.Optimizer, *, name: str, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step learning-rate schedule over `total_steps` (None for a constant rate)."""
    if name == "onecycle":
        lrs = [g["lr"] for g in optimizer.param_groups]
        # OneCycleLR divides by pct_start * total_steps - 1, which is 0 for 4 steps at 0.25
        pct_start = 0.3 if total_steps == 4 else 0.25
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lrs, total_steps=total_steps, pct_start=pct_start)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "none":
        return None
    raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _batches(loader: Iterable, limit: int | None, channels_last: bool = False) -> Iterable:
    for i, (x, y) in enumerate(loader):
        if limit is not None and i >= limit:
            return
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # (N, C, H, W) stored as NHWC
        yield x, y


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
    channels_last: bool = False,
    penalty: Callable[[], torch.Tensor] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    distill: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """One pass over `loader`; loss and accuracy accumulate on the device (one sync per epoch: the
    step itself never waits for the device). `model` may be a `torch.compile`d module;
    channels_last passes 4-d inputs in NHWC memory order (use with a channels_last model).
    `penalty()` is added to each step's loss (e.g. sparse VD's KL/N), and so is `distill(x, logits)`
    (a teacher's term, `cnncomp.training.distill`); the reported loss excludes both.
    `reduce` sums the (loss·n, correct, n) totals over data-parallel ranks (e.g.
    `distributed.all_reduce_sum`); "images" is then the images of all ranks."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for x, y in _batches(loader, limit, channels_last):
        with _autocast(device, precision):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            objective = loss if distill is None else loss + distill(x, logits)
        optimizer.zero_grad(set_to_none=True)
        (objective if penalty is None else objective + penalty()).backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        loss_sum += loss.detach() * y.numel()
        correct += (logits.argmax(1) == y).sum()
        seen += y.numel()
        if progress is not None:
            progress.update(1)
    loss_sum, correct, seen = _totals(loss_sum, correct, seen, reduce)
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1), "images": seen}


def _totals(
    loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, reduce: Callable[[torch.Tensor], torch.Tensor] | None
) -> tuple[float, int, int]:
    """(loss·n, correct, n) as Python numbers, summed by `reduce` first when given (one transfer)."""
    n = torch.tensor(float(seen), dtype=torch.float64, device=loss_sum.device)
    totals = torch.stack([loss_sum.double(), correct.double(), n])
    if reduce is not None:
        totals = reduce(totals)
    loss, right, n = totals.tolist()
    return loss, round(right), round(n)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    precision: str = "32",
    limit: int | None = None,
    channels_last: bool = False,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy; compressed weights are rebuilt once, not once per batch. `reduce`
    sums the totals over data-parallel ranks, as in `train_epoch`."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    with parametrize.cached():
        for x, y in _batches(loader, limit, channels_last):
            with _autocast(device, precision):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            seen += y.numel()
    loss_sum, correct, seen = _totals(loss_sum, correct, seen, reduce)
    if seen == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    return {"loss": loss_sum / seen, "acc": correct / seen}
