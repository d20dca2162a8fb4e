"""The training app on the device: `trainer.compile=true` on a compressed ResNet-18 (no graph
break, the eager loss), `trainer.deterministic=true` (identical weights twice), and one
data-parallel run over every GPU of the machine (NCCL; gloo CPU processes with
CNNCOMP_TEST_DEVICE=cpu)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch

from cnncomp.train import _deterministic, train

pytestmark = pytest.mark.cuda

SMALL = [  # synthetic data; codec=none: the weights compared are the trained ones, not 8-bit bins
    "dataset=synthetic",
    "dataset.num_train=64",
    "dataset.num_test=32",
    "trainer.val_fraction=0",
    "trainer.batch_size=16",
    "codec=none",
]
RESNET = ["model=resnet18", "dataset.in_channels=3", "dataset.image_size=32"]


def _run(make_cfg, run_dir: Path, overrides: list[str]) -> dict:
    result = train(make_cfg(overrides), run_dir=run_dir)
    assert result["status"] == "completed", result.get("error")
    return result


def _train_losses(run_dir: Path) -> list[float]:
    with (run_dir / "metrics.csv").open() as f:
        return [float(row["train_loss"]) for row in csv.DictReader(f)]


def test_compile_has_no_graph_break_and_the_eager_loss(tmp_path, make_cfg, device, tol):
    """Three steps of a DCT-compressed ResNet-18 (every layer, keep 0.25) through train(), compiled
    and eager: dynamo compiles the training forward as one graph (no break, so no Python between
    the layers of a step), reused for every step, and the epoch's loss is the eager one."""
    from torch._dynamo.utils import counters

    run = [*SMALL, *RESNET, "kernel=dct", "layers=all", "trainer.max_epochs=1", "trainer.limit_train_batches=3"]
    run += [f"trainer.device={device.type}", "trainer.limit_eval_batches=1"]
    eager = _run(make_cfg, tmp_path / "eager", run)
    torch._dynamo.reset()
    counters.clear()
    compiled = _run(make_cfg, tmp_path / "compiled", [*run, "trainer.compile=true"])
    breaks = dict(counters["graph_break"])
    assert breaks == {}, f"graph breaks: {breaks}"
    # one forward graph for the three equal-shape steps (a recompile per step would show here)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["recompiles"], dict(counters["recompiles"])
    a, b = _train_losses(tmp_path / "eager"), _train_losses(tmp_path / "compiled")
    assert len(a) == len(b) == 1
    assert abs(b[0] - a[0]) <= tol.loss_compile * abs(a[0]), (a, b)
    assert compiled["status"] == eager["status"] == "completed"


def test_deterministic_mode_sets_the_cublas_workspace(monkeypatch):
    """trainer.deterministic=true on CUDA needs CUBLAS_WORKSPACE_CONFIG (torch raises in every
    cuBLAS call without it); the run sets it when the user did not (and keeps theirs)."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with _deterministic(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with _deterministic(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


@pytest.mark.parametrize(
    "model",
    [pytest.param(["model=lenet", "kernel=dct"], id="lenet-dct"),
     pytest.param([*RESNET, "kernel=dct", "method.selection=magnitude"], id="resnet18-dct-magnitude")],
)  # fmt: skip
def test_deterministic_runs_give_identical_weights(tmp_path, make_cfg, device, model):
    """Two runs of one config with trainer.deterministic=true on the device: bit-identical model.pt
    and metrics (two epochs, augmentation on: the device's random crop/flip path too)."""
    run = [*SMALL, *model, "trainer.max_epochs=2", "trainer.deterministic=true", "dataset.augment=true"]
    run += [f"trainer.device={device.type}", "trainer.limit_train_batches=3"]
    first, second = (_run(make_cfg, tmp_path / name, run) for name in ("first", "second"))
    assert first["device"].startswith(device.type)
    a = torch.load(tmp_path / "first" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "second" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert _train_losses(tmp_path / "first") == _train_losses(tmp_path / "second")
    for key in ("test_loss", "test_acc", "stored_params"):
        assert first[key] == second[key], key
    losses = _train_losses(tmp_path / "first")
    assert len(losses) == 2 and losses[0] != losses[1]  # not vacuous: the weights moved between the epochs


def test_data_parallel_run_over_every_gpu(tmp_path, make_cfg, device, record_property):
    """trainer.devices = every GPU of the machine (at least one; NCCL from two on) through train();
    with CNNCOMP_TEST_DEVICE=cpu two gloo processes. It completes, only rank 0 writes, and the
    record says how many processes trained on which device."""
    world = max(1, torch.cuda.device_count()) if device.type == "cuda" else 2
    record_property("world_size", world)  # with one GPU the run is a single process: no NCCL group
    run = [*SMALL, "model=lenet", "kernel=dct", "trainer.max_epochs=2", f"trainer.devices={world}"]
    run += [f"trainer.device={device.type}", f"trainer.batch_size={8 * world}", "trainer.val_fraction=0.25"]
    result = _run(make_cfg, tmp_path / "ddp", run)
    record = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert record["status"] == "completed" and record["world_size"] == world == result["world_size"]
    assert record["device"].startswith(f"{device.type}:"), record["device"]
    assert record["epochs_completed"] == 2
    assert len(list(tmp_path.rglob("result.json"))) == 1  # rank 0's record only
    losses = _train_losses(tmp_path / "ddp")
    assert len(losses) == 2 and all(0 < v < 10 for v in losses)
    assert 0 <= record["test_acc"] <= 1 and math.isfinite(record["test_loss"])
