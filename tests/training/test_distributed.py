"""Data-parallel training (cnncomp.distributed): 2-process DDP on the CPU (gloo) against a single
process with the same global batch and seed, the rank/environment helpers, bad devices/nodes values,
the multi-GPU SLURM profile, and a 2-task DDP job on the local SLURM cluster."""

import json
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from cnncomp.config import CONF_DIR, check_config
from cnncomp.errors import ConfigError
from cnncomp.train import train
from cnncomp.training import distributed

# 90 training images (100 less the 10 % validation split), global batch 18: five steps an epoch,
# 9 images per rank; two epochs. lr 0.02: at the default 0.05, dense LeNet's peak-LR steps amplify
# float rounding to ~1e-3 in 24 steps (200 images, batch 16), and so does one process averaging
# the gradients of the two half batches itself (measured: the same 9.1e-4 as DDP).
DDP_RUN = [  # after the `quick` overrides
    "codec=none",  # the decoded model is the trained one: weights 1e-5 apart must not land in other 8-bit bins
    "dataset.num_train=100",
    "trainer.batch_size=18",
    "trainer.max_epochs=2",
    "trainer.lr=0.02",
    "trainer.device=cpu",
    "trainer.deterministic=true",
]
WEIGHT_TOL = 1e-5  # max |w_ddp - w_single| over every stored tensor
METRIC_TOL = 1e-5


def _run(make_cfg, tmp_path: Path, name: str, overrides: list[str]) -> tuple[dict, Path]:
    run_dir = tmp_path / name
    result = train(make_cfg(overrides), run_dir=run_dir)
    return result, run_dir


@pytest.mark.parametrize("kernel", ["none", "dct"])
def test_two_cpu_processes_train_the_same_weights_as_one(tmp_path, kernel, make_cfg, quick):
    """trainer.devices=2 (gloo) == one process with the same global batch and seed; only rank 0 writes."""
    single, single_dir = _run(make_cfg, tmp_path, "single", [*quick, *DDP_RUN, f"kernel={kernel}"])
    ddp, ddp_dir = _run(make_cfg, tmp_path, "ddp", [*quick, *DDP_RUN, f"kernel={kernel}", "trainer.devices=2"])
    assert single["status"] == ddp["status"] == "completed", ddp["error"]
    assert (single["world_size"], ddp["world_size"]) == (1, 2)

    a = torch.load(single_dir / "last.pt", weights_only=True)["model"]
    b = torch.load(ddp_dir / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=WEIGHT_TOL), (key, (a[key] - b[key]).abs().max())

    # rank 1 writes nothing: the same files as the single process, one record
    assert sorted(p.name for p in ddp_dir.iterdir()) == sorted(p.name for p in single_dir.iterdir())
    assert len(list(tmp_path.rglob("result.json"))) == 2
    record = json.loads((ddp_dir / "result.json").read_text())
    assert record["world_size"] == 2 and record["status"] == "completed"
    for key in ("test_loss", "val_loss"):
        assert record[key] == pytest.approx(single[key], rel=METRIC_TOL), key
    for key in ("test_acc", "val_acc", "best_epoch", "epochs_completed", "stored_params"):
        assert record[key] == single[key], key
    # every rank saw its half: the images of both ranks are counted once each
    epochs = [r.split(",") for r in (ddp_dir / "metrics.csv").read_text().splitlines()[1:]]
    single_epochs = [r.split(",") for r in (single_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert len(epochs) == len(single_epochs) == 2
    for row, ref in zip(epochs, single_epochs, strict=True):
        assert [float(v) for v in row[1:5]] == pytest.approx([float(v) for v in ref[1:5]], rel=METRIC_TOL)


@pytest.mark.slow
def test_sigterm_then_rerun_resumes_a_ddp_run(tmp_path, quick):
    """SIGTERM to a `trainer.devices=2` run ends its ranks and records `interrupted`; the same command
    again resumes every rank from rank 0's last.pt and ends with the uninterrupted run's weights."""
    from test_train import cli, sigterm_after_first_epoch

    args = [*quick, *DDP_RUN, "dataset.num_train=4000", "trainer.batch_size=32", "trainer.max_epochs=3", "kernel=dct"]
    args += ["trainer.devices=2", "trainer.val_fraction=0.1"]
    full = cli([*args, f"hydra.run.dir={tmp_path / 'full'}"], cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    run = tmp_path / "killed"
    assert sigterm_after_first_epoch(args, run, tmp_path) == 130
    first = json.loads((run / "result.json").read_text())
    assert first["status"] == "interrupted" and first["world_size"] == 2
    done = torch.load(run / "last.pt", weights_only=True)["state"]["epoch"]
    assert 1 <= done < 3

    again = cli([*args, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    record = json.loads((run / "result.json").read_text())
    assert record["status"] == "completed" and record["epochs_completed"] == 3
    assert f"resumed from {run / 'last.pt'} after epoch {done}" in (run / "train.log").read_text()
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(run / "model.pt", weights_only=True)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=WEIGHT_TOL), key
    reference = json.loads((tmp_path / "full" / "result.json").read_text())
    assert record["test_loss"] == pytest.approx(reference["test_loss"], rel=METRIC_TOL)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.devices=0", "trainer.devices must be an integer >= 1, got 0"),
        ("trainer.devices=1.5", "trainer.devices must be an integer >= 1, got 1.5"),
        ("trainer.devices=true", "trainer.devices must be an integer >= 1, got True"),
        ("trainer.nodes=0", "trainer.nodes must be an integer >= 1, got 0"),
        ("trainer.nodes=two", "trainer.nodes must be an integer >= 1, got 'two'"),
    ],
)
def test_bad_devices_and_nodes_are_rejected(override, message, make_cfg, quick):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        check_config(distributed_config(make_cfg, quick, [override]))


def distributed_config(make_cfg, quick, overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(make_cfg([*quick, *overrides]), resolve=True)


def test_global_batch_must_split_evenly(make_cfg, quick):
    with pytest.raises(ConfigError, match=r"trainer\.batch_size=15 is the global batch .* = 2"):
        check_config(distributed_config(make_cfg, quick, ["trainer.batch_size=15", "trainer.devices=2"]))
    check_config(distributed_config(make_cfg, quick, ["trainer.batch_size=16", "trainer.devices=2", "trainer.nodes=2"]))


def test_nodes_without_a_launcher_fail_with_a_record(tmp_path, make_cfg, quick):
    result = train(make_cfg([*quick, "trainer.device=cpu", "trainer.nodes=2"]), run_dir=tmp_path)
    assert result["status"] == "failed"
    assert "trainer.nodes=2 needs a multi-node launcher" in result["error"]
    assert json.loads((tmp_path / "result.json").read_text())["error"] == result["error"]
    assert not (tmp_path / "last.pt").exists()


def test_launcher_world_size_must_match_the_config(tmp_path, monkeypatch, make_cfg, quick):
    """Under torchrun (RANK/WORLD_SIZE set), devices x nodes must be the launcher's process count."""
    monkeypatch.setattr(os, "environ", {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "4"})
    result = train(make_cfg([*quick, "trainer.device=cpu", "trainer.devices=2"]), run_dir=tmp_path)
    assert result["status"] == "failed"
    assert result["error"] == (
        "trainer.devices x trainer.nodes = 2 but the launcher started 4 processes (WORLD_SIZE); set them to match"
    )


def test_environment_from_torchrun_variables(monkeypatch):
    monkeypatch.setattr(os, "environ", {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert distributed.environment() == distributed.DistEnv(rank=3, local_rank=1, world_size=4)
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (3, 4, False)
    monkeypatch.setattr(os, "environ", {"RANK": "0", "WORLD_SIZE": "1"})
    assert distributed.environment() is None and distributed.is_main()
    monkeypatch.setattr(os, "environ", {})
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)


def test_environment_exported_from_a_multi_task_submitit_slurm_job(monkeypatch):
    """What submitit's TorchDistributedEnvironment derives from SLURM's task variables."""
    slurm = {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "812",
        "SLURM_NTASKS": "4",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
    }
    monkeypatch.setattr(os, "environ", dict(slurm))
    assert distributed.environment() == distributed.DistEnv(rank=3, local_rank=1, world_size=4)
    assert os.environ["MASTER_ADDR"] == "gpu07" and 20000 <= int(os.environ["MASTER_PORT"]) <= 60000
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # every task sees the node's GPUs; LOCAL_RANK picks
    one_node = {**slurm, "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0"}
    monkeypatch.setattr(os, "environ", {**one_node, "SLURM_PROCID": "1", "SLURM_JOB_NODELIST": "gpu07"})
    assert distributed.environment() == distributed.DistEnv(rank=1, local_rank=1, world_size=2)
    assert os.environ["MASTER_ADDR"] == "127.0.0.1"  # no name lookup within one node
    monkeypatch.setattr(os, "environ", {**slurm, "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1"})
    assert distributed.environment() is None and "RANK" not in os.environ


def test_helpers_are_identities_without_a_process_group():
    t = torch.tensor([1.5, 2.0, 3.0])
    assert distributed.all_reduce_sum(t) is t
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, torch.device("cpu")) is model
    distributed.barrier()


def _collectives(out: str) -> None:
    """One spawned rank: the helpers in a real 2-process gloo group; what it saw goes to out/<rank>.pt."""
    with distributed.process_group(torch.device("cpu")) as device:
        me = distributed.rank()
        bn = torch.nn.BatchNorm1d(3)
        bn.running_mean.fill_(me + 1.0)  # rank-local statistics, as after a DDP step
        distributed.broadcast_buffers(bn)
        sums = distributed.all_reduce_sum(torch.tensor([me + 0.5, 1.0], dtype=torch.float64))
        seen = distributed.broadcast_object({"from": me})
        distributed.barrier()
        torch.save({"mean": bn.running_mean, "sums": sums, "seen": seen, "device": str(device)}, f"{out}/{me}.pt")


def test_collectives_in_a_two_process_group(tmp_path):
    distributed.spawn(_collectives, 2, (str(tmp_path),))
    for r in (0, 1):
        got = torch.load(tmp_path / f"{r}.pt", weights_only=True)
        assert torch.equal(got["mean"], torch.ones(3))  # rank 0's statistics on both ranks
        assert got["sums"].tolist() == [2.0, 2.0]  # (0.5 + 1.5, 1 + 1)
        assert got["seen"] == {"from": 0} and got["device"] == "cpu"


def test_spawn_refuses_to_nest_and_bad_counts(monkeypatch):
    with pytest.raises(ValueError, match="nprocs must be >= 1, got 0"):
        distributed.spawn(print, 0)
    monkeypatch.setattr(os, "environ", {"RANK": "1", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="RANK=1"):
        distributed.spawn(print, 2)


def test_multigpu_profile_follows_devices_and_nodes():
    overrides = ["hydra/launcher=slurm_multigpu", "trainer.devices=4", "trainer.nodes=2"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        launcher = compose(config_name="config", overrides=overrides, return_hydra_config=True).hydra.launcher
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher.mem_per_gpu == "32G" and launcher.mem_gb is None and launcher.cpus_per_task == 8
    assert launcher.max_num_timeout == 5 and launcher.signal_delay_s == 120  # requeue as slurm_gpu
    assert launcher.setup == ["export SLURM_KILL_BAD_EXIT=1"]


# as slurm_multigpu: a rank that fails ends the job instead of leaving the other in a collective
TWO_TASKS = ["hydra.launcher.tasks_per_node=2", 'hydra.launcher.setup=["export SLURM_KILL_BAD_EXIT=1"]']


@pytest.mark.slurm
def test_two_task_ddp_job_on_slurm(slurm_env, tmp_path, root):
    """A 2-task DDP cell (gloo, 1 CPU a task) through submitit_slurm: one result.json, world_size 2."""
    from test_slurm import SMOKE, sweep

    args = [*SMOKE, "trainer.max_epochs=2", "trainer.device=cpu", "trainer.devices=2"]
    out = sweep(slurm_env, root, tmp_path, [*args, *TWO_TASKS])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    records = list(tmp_path.rglob("result.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert (record["status"], record["world_size"], record["epochs_completed"]) == ("completed", 2, 2)
    assert json.loads((tmp_path / "sweep_summary.json").read_text())["counts"] == {"completed": 1}
    # both tasks ran in one job; only rank 0 logged the epochs
    logs = list((tmp_path / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2, logs
    log = (records[0].parent / "train.log").read_text()
    assert log.count("epoch 2/2") == 1, log[-2000:]


@pytest.mark.slurm
def test_preempted_two_task_ddp_job_requeues_and_resumes(slurm_env, tmp_path, root):
    """USR2 to both tasks mid-training: rank 0 requeues the job, both ranks resume from its last.pt."""
    from test_slurm import SMOKE, job_id, preempt_once

    epochs = 4
    args = [*SMOKE, "dataset.num_train=4000", f"trainer.max_epochs={epochs}", "trainer.device=cpu"]
    args += ["trainer.devices=2", *TWO_TASKS]
    cell, jid = preempt_once(slurm_env, root, tmp_path, args)
    record = json.loads((cell / "result.json").read_text())
    assert (record["status"], record["world_size"], record["epochs_completed"]) == ("completed", 2, epochs)
    log = (cell / "train.log").read_text()
    assert log.count("resumed from") == 1, log[-2000:]
    rows = (cell / "metrics.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, epochs + 1))
    assert job_id(cell) == jid
