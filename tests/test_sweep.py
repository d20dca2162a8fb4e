"""Multirun sweeps through the real app (`python -m cnncomp.train --multirun`) and real launchers.

Job dirs named from the varying overrides, reruns that skip finished cells, sweeps that never share
a dir, the end-of-sweep summary and exit code, Ctrl-C stopping a whole sweep, basic vs
submitit_local giving the same results.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# the smoke grid, deterministic so that two launchers must give identical numbers
GRID = ["experiment=grid_smoke", "trainer.deterministic=true"]
CELLS = ["kernel=dct,layers=conv", "kernel=dct,layers=linear", "kernel=dst,layers=conv", "kernel=dst,layers=linear"]


def multirun(args: list[str], cwd: Path, wait: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cnncomp.train", "--multirun", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def records(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/result.json")}


def summary(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep_summary.json").read_text())


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory, root) -> Path:
    """The smoke grid through the basic launcher, once for the module."""
    sweep_dir = tmp_path_factory.mktemp("basic")
    out = multirun([*GRID, f"hydra.sweep.dir={sweep_dir}"], root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return sweep_dir


def test_grid_preset_names_job_dirs_from_varying_overrides(basic_sweep):
    got = records(basic_sweep)
    assert sorted(got) == CELLS  # only kernel and layers vary; experiment=... is the same everywhere
    assert all(r["status"] == "completed" and r["model"] == "lenet" for r in got.values())
    assert {(r["kernel"], r["layers"]) for r in got.values()} == {
        (k, lay) for k in ("dct", "dst") for lay in ("linear", "conv")
    }
    s = summary(basic_sweep)
    assert s["cells"] == 4 and s["counts"] == {"completed": 4}


def test_rerun_of_finished_sweep_skips_every_cell(basic_sweep, root):
    before = {cell: r["ended_at"] for cell, r in records(basic_sweep).items()}
    out = multirun([*GRID, f"hydra.sweep.dir={basic_sweep}"], root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert summary(basic_sweep)["counts"] == {"skipped": 4}
    assert "4 cells: 0 completed, 4 skipped" in out.stdout
    assert {cell: r["ended_at"] for cell, r in records(basic_sweep).items()} == before


def test_submitit_local_gives_the_same_results_as_basic(basic_sweep, tmp_path, root):
    out = multirun(
        [*GRID, "hydra/launcher=submitit_local", "hydra.launcher.max_parallel=2", f"hydra.sweep.dir={tmp_path}"], root
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "at most 2 at a time" in out.stdout + out.stderr
    local, basic = records(tmp_path), records(basic_sweep)
    assert sorted(local) == sorted(basic) == CELLS
    for cell in CELLS:
        assert local[cell]["config_hash"] == basic[cell]["config_hash"]
        assert local[cell]["test_acc"] == basic[cell]["test_acc"]
        assert local[cell]["stored_params"] == basic[cell]["stored_params"]
    # every cell ran as its own submitit job
    assert len(list((tmp_path / ".submitit").glob("*/*_result.pkl"))) == 4


def test_two_sweeps_started_together_do_not_collide(tmp_path):
    # the same auto-named (${now:...}) sweep dir for both: the second must get its own
    args = ["model=lenet", "kernel=dct,dst", "dataset=synthetic", "dataset.num_train=64", "dataset.num_test=32"]
    args += ["trainer.max_epochs=1", "hydra.sweep.dir=sweeps/${now:%Y-%m-%d}"]
    procs = [multirun(args, cwd=tmp_path, wait=False) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    dirs = sorted(p for p in (tmp_path / "sweeps").iterdir())
    assert len(dirs) == 2 and dirs[1].name == dirs[0].name + "-1"
    for d in dirs:
        assert sorted(records(d)) == ["kernel=dct", "kernel=dst"]
        assert summary(d)["counts"] == {"completed": 2}


def test_failing_cell_is_summarized_and_exits_nonzero(tmp_path, root):
    args = ["model=lenet", "kernel=dct", "trainer.lr=-1,0.05", "dataset=synthetic", "dataset.num_train=64"]
    args += ["dataset.num_test=32", "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}"]
    out = multirun(args, root)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 cells: 1 completed, 0 skipped (done before), 1 failed" in out.stdout
    assert "FAILED #0" in out.stdout and "trainer.lr must be > 0" in out.stdout
    s = summary(tmp_path)
    rows = {Path(r["run_dir"]).name: r for r in s["rows"]}
    assert rows["trainer.lr=-1"]["outcome"] == "failed" and rows["trainer.lr=0.05"]["outcome"] == "completed"
    # the same command again: the failed cell is rerun (and fails again), the completed one skipped
    again = multirun(args, root)
    assert again.returncode == 1
    assert "2 cells: 0 completed, 1 skipped (done before), 1 failed" in again.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_whole_local_sweep_and_the_rerun_resumes_it(sig, tmp_path, root):
    """Ctrl-C (or SIGTERM) in the first of two cells: that cell checkpoints, the second never
    starts, the summary says so and the exit code is 130; the same command resumes from last.pt."""
    args = ["model=lenet", "kernel=dct,dst", "dataset=synthetic", "dataset.num_train=2000"]
    args += ["dataset.num_test=32", "trainer.max_epochs=10", f"hydra.sweep.dir={tmp_path}"]
    driver = multirun(args, root, wait=False)
    first = tmp_path / "kernel=dct"
    deadline = time.time() + 120
    while not (first / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    driver.send_signal(sig)
    stdout, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, stdout[-3000:]
    assert json.loads((first / "result.json").read_text())["status"] == "interrupted"
    assert not (tmp_path / "kernel=dst").exists()
    rows = summary(tmp_path)["rows"]
    assert [r["outcome"] for r in rows] == ["failed", "failed"]
    assert f"interrupted by {sig.name}" in rows[0]["error"]
    assert rows[1]["error"] == "not started: the sweep was interrupted"

    again = multirun(args, root)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "2 cells: 2 completed" in again.stdout
    assert "resumed from" in (first / "train.log").read_text()
