"""Sweeps on a real single-node SLURM cluster (launch/start_local_slurm.sh) through submitit.

Marker `slurm`. The session fixture `slurm_env` (conftest.py) starts the cluster and stops it at
the end; where it cannot start (no root, no apt) the tests skip, except under CI, where that is a
failure.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slurm

# short cells: 1 CPU each so that the 2-core node runs two at a time
LAUNCHER = [
    "hydra/launcher=submitit_slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]
SMOKE = ["dataset=synthetic", "dataset.num_train=256", "dataset.num_test=64", "trainer.batch_size=32"]


def sweep(env, root: Path, sweep_dir: Path, args: list[str], wait: bool = True):
    cmd = [sys.executable, "-m", "cnncomp.train", "--multirun", f"hydra.sweep.dir={sweep_dir}", *LAUNCHER, *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the sweep timed out\n{cluster_report(env, sweep_dir)}") from e


def cluster_report(env, sweep_dir: Path) -> str:
    """What SLURM says of its node and jobs, and the tail of every job log of the sweep: why a
    job pends or hangs, for a failure message."""
    parts = []
    for cmd in (["sinfo", "-N", "-o", "%N %T %C %E"], ["squeue", "-o", "%i %T %r %M"], ["sacct", "-X", "-n"]):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        parts.append(f"$ {' '.join(cmd)}\n{(out.stdout + out.stderr)[-1500:]}")
    for log in sorted((sweep_dir / ".submitit").rglob("*_log.*")):
        parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}")
    return "\n".join(parts)


def wait_for(pred, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def job_id(cell: Path) -> str | None:
    """The SLURM job id of a cell, from the hydra.yaml Hydra writes before the task starts."""
    path = cell / ".hydra" / "hydra.yaml"
    if not path.exists():
        return None
    try:
        return str(yaml.safe_load(path.read_text())["hydra"]["job"]["id"])
    except (TypeError, KeyError, yaml.YAMLError):  # still being written
        return None


def state(env, jid: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", jid, "-o", "%T"], env=env, capture_output=True, text=True)
    return out.stdout.strip()


def test_grid_completes_on_slurm(slurm_env, tmp_path, root):
    """lenet x {dct, dst} x {linear, conv} through hydra/launcher=submitit_slurm: every cell completes."""
    out = sweep(
        slurm_env,
        root,
        tmp_path,
        ["model=lenet", "kernel=dct,dst", "layers=linear,conv", "trainer.max_epochs=1", *SMOKE],
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert summary["cells"] == 4 and summary["counts"] == {"completed": 4}
    cells = sorted(p.name for p in tmp_path.iterdir() if (p / "result.json").exists())
    assert cells == [
        "kernel=dct,layers=conv",
        "kernel=dct,layers=linear",
        "kernel=dst,layers=conv",
        "kernel=dst,layers=linear",
    ]
    for cell in cells:
        record = json.loads((tmp_path / cell / "result.json").read_text())
        assert record["status"] == "completed" and record["epochs_completed"] == 1
    # the jobs ran as one SLURM array under the sweep's .submitit folder
    ids = {job_id(tmp_path / c).split("_")[0] for c in cells}
    assert len(ids) == 1


def preempt_once(env, root: Path, sweep_dir: Path, args: list[str]) -> tuple[Path, str]:
    """Sweep one cell and preempt its job once it has a checkpoint (epoch 1 done, epochs still to
    go); once the sweep has ended (exit 0), returns the cell's job dir and its job id."""
    import submitit

    driver = sweep(env, root, sweep_dir, args, wait=False)
    try:
        cell = wait_for(lambda: next(sweep_dir.glob("*/last.pt"), None), 120, "the cell's last.pt").parent
        jid = job_id(cell)
        sig = submitit.JobEnvironment.USR_SIG  # submitit's preemption signal (USR2)
        subprocess.run(["scancel", f"--signal={sig}", jid], env=env, check=True)
        # SLURM holds a requeued job ~2 minutes before it may start again; let it start now
        wait_for(lambda: state(env, jid) == "PENDING", 60, "the requeued job")
        subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], env=env, check=True)
        stdout, _ = driver.communicate(timeout=240)
    except (AssertionError, subprocess.TimeoutExpired) as e:
        raise AssertionError(f"{e}\n{cluster_report(env, sweep_dir)}") from e
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stdout[-3000:]
    return cell, jid


def test_preempted_job_requeues_and_resumes(slurm_env, tmp_path, root):
    """Preemption signal mid-training -> checkpoint, requeue, resume from last.pt, same epochs."""
    epochs = 4
    args = ["model=lenet", "kernel=dct", "layers=all", f"trainer.max_epochs={epochs}", *SMOKE]
    args += ["dataset.num_train=4000", "trainer.val_fraction=0.1"]
    cell, jid = preempt_once(slurm_env, root, tmp_path, args)
    assert json.loads((tmp_path / "sweep_summary.json").read_text())["counts"] == {"completed": 1}
    record = json.loads((cell / "result.json").read_text())
    assert record["status"] == "completed" and record["epochs_completed"] == epochs
    log = (cell / "train.log").read_text()
    assert "resumed from" in log and "after epoch" in log, log[-2000:]
    rows = (cell / "metrics.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, epochs + 1))
    assert job_id(cell) == jid  # the same job, requeued


def test_cancelled_cell_is_reported_failed_and_rerun(slurm_env, tmp_path, root):
    """scancel -> the cell is reported failed, exit 1; the same command again reruns only that cell."""
    # long enough (~15 s a cell) that SLURM's SIGKILL, KillWait (2 s) after scancel's SIGTERM (which
    # submitit ignores), lands before the cell could finish
    args = ["model=lenet", "kernel=dct,dst", "layers=all", "trainer.max_epochs=25", *SMOKE]
    args += ["dataset.num_train=4000"]
    driver = sweep(slurm_env, root, tmp_path, args, wait=False)
    kept, cancelled = tmp_path / "kernel=dct", tmp_path / "kernel=dst"
    try:
        wait_for(lambda: job_id(cancelled), 120, "the second cell to start")
        subprocess.run(["scancel", job_id(cancelled)], env=slurm_env, check=True)
        stdout, _ = driver.communicate(timeout=240)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, stdout[-3000:]
    summary = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert summary["counts"] == {"completed": 1, "failed": 1}, summary
    failed = [r for r in summary["rows"] if r["outcome"] == "failed"]
    assert failed[0]["overrides"][:3] == ["model=lenet", "kernel=dst", "layers=all"]
    assert "FAILED #1" in stdout

    done_before = json.loads((kept / "result.json").read_text())["ended_at"]
    again = sweep(slurm_env, root, tmp_path, args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    summary = json.loads((tmp_path / "sweep_summary.json").read_text())
    outcomes = {Path(r["run_dir"]).name: r["outcome"] for r in summary["rows"]}
    assert outcomes == {"kernel=dct": "skipped", "kernel=dst": "completed"}
    assert json.loads((kept / "result.json").read_text())["ended_at"] == done_before
