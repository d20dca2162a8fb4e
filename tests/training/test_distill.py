"""Distillation from the dense teacher: the loss and its gradient against the closed form, a
frozen teacher, the config's checks, and a run's student pulled toward its teacher."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnncomp import load
from cnncomp.config import check_config
from cnncomp.errors import ConfigError
from cnncomp.models import build_model
from cnncomp.train import train
from cnncomp.training import engine
from cnncomp.training.distill import Distillation, distill_loss


def test_loss_and_gradient_match_the_closed_form():
    torch.manual_seed(0)
    student, teacher, t = torch.randn(6, 10, requires_grad=True), torch.randn(6, 10), 3.0
    loss = distill_loss(student, teacher, t)
    p_s, p_t = F.softmax(student / t, 1), F.softmax(teacher / t, 1)
    expected = t * t * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    # d/dz [T² KL(p_t ‖ softmax(z/T))] = T (softmax(z/T) − p_t), over the batch mean
    assert torch.allclose(student.grad, t * (p_s - p_t).detach() / 6, atol=1e-6)
    assert distill_loss(teacher, teacher, t).abs().item() < 1e-6


def test_the_teacher_is_frozen_and_its_weight_scales_the_term():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    x, logits = torch.randn(5, 4), torch.randn(5, 3, requires_grad=True)
    one = Distillation(teacher, weight=1.0, temperature=2.0)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    term = Distillation(teacher, weight=0.25, temperature=2.0)(x, logits)
    assert term.item() == pytest.approx(0.25 * one(x, logits).item(), rel=1e-6)  # eval: no dropout noise
    term.backward()
    assert logits.grad is not None and all(p.grad is None for p in teacher.parameters())


def _kl_to(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return distill_loss(student(x), teacher(x), 1.0).item()


def test_a_training_epoch_with_the_term_moves_the_student_toward_the_teacher():
    torch.manual_seed(0)
    x, y = torch.randn(256, 8), torch.randint(0, 4, (256,))
    teacher, init = nn.Linear(8, 4), nn.Linear(8, 4)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]
    gaps = {}
    for weight in (0.0, 4.0):
        student = nn.Linear(8, 4)
        student.load_state_dict(init.state_dict())
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        distill = Distillation(teacher, weight=weight, temperature=2.0) if weight else None
        for _ in range(5):
            engine.train_epoch(student, batches, optimizer, None, device=torch.device("cpu"), distill=distill)
        gaps[weight] = _kl_to(teacher, student, x)
    assert gaps[4.0] < 0.5 * gaps[0.0], gaps


def test_distill_needs_a_pretrained_teacher_and_a_valid_weight(make_cfg, quick):
    with pytest.raises(ConfigError, match="trainer.distill=1.0 needs a teacher: give model.pretrained"):
        check_config(make_cfg([*quick, "trainer.distill=1.0"]))
    with pytest.raises(ConfigError, match="trainer.distill must be >= 0, got -1"):
        check_config(make_cfg([*quick, "trainer.distill=-1"]))
    with pytest.raises(ConfigError, match="trainer.distill_temperature must be > 0, got 0"):
        check_config(make_cfg([*quick, "trainer.distill_temperature=0"]))


def test_a_distilled_run_ends_closer_to_its_teacher(tmp_path, make_cfg, quick):
    dense = train(make_cfg([*quick, "kernel=none", "trainer.max_epochs=3"]), run_dir=tmp_path / "dense")
    assert dense["status"] == "completed"
    teacher_path = tmp_path / "dense" / "model.pt"
    base = [*quick, "kernel=dct", "kernel.keep=0.3", "method.init=project", f"model.pretrained={teacher_path}"]
    base += ["trainer.max_epochs=2", "trainer.deterministic=true", "codec=none"]
    students = {}
    for weight in (0.0, 10.0):
        r = train(make_cfg([*base, f"trainer.distill={weight}"]), run_dir=tmp_path / f"w{weight}")
        assert r["status"] == "completed", r["error"]
        students[weight] = r
    teacher = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
    teacher.eval()
    x = torch.randn(64, 1, 28, 28)
    gaps = {w: _kl_to(teacher, load(tmp_path / f"w{w}"), x) for w in students}
    assert gaps[10.0] < 0.5 * gaps[0.0], gaps
