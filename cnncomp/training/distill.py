"""Knowledge distillation from the dense model a run starts from (Hinton et al. 2015): each step
adds weight · T² · KL(teacher ‖ student) of the outputs softened by temperature T, which pulls a
compressed network toward what the dense one predicts (its "dark knowledge") at no extra epochs."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnncomp.models import build_model
from cnncomp.training.model import load_pretrained


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), the batch mean; T² keeps the
    gradient's scale independent of T (Hinton et al.)."""
    t = temperature
    student, teacher = F.log_softmax(student_logits.float() / t, 1), F.log_softmax(teacher_logits.float() / t, 1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * (t * t)


class Distillation:
    """The distillation term of a training step: `self(x, logits)` runs the frozen teacher on `x`."""

    def __init__(self, teacher: nn.Module, *, weight: float, temperature: float) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight, self.temperature = weight, temperature

    def __call__(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return self.weight * distill_loss(logits, teacher_logits, self.temperature)


def build_distillation(
    config: dict[str, Any], model_args: dict[str, Any], device: torch.device, *, channels_last: bool = False
) -> Distillation | None:
    """trainer.distill > 0: the dense model.pretrained model as the teacher; None otherwise."""
    t = config["trainer"]
    if not t.get("distill"):
        return None
    teacher = build_model(**model_args)
    load_pretrained(teacher, config["model"]["pretrained"])
    teacher.to(device)
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    return Distillation(teacher, weight=t["distill"], temperature=t["distill_temperature"])
