"""launch/gpu_check.sh, the prepared one-shot GPU check: its syntax, and its shell logic with a stub
python that records every call (the GPU command lines, the summary, per-step time limits, a failing
or hanging step not stopping the others, the shared time budget). The real CPU smoke run
(`--cpu-smoke`) took 58 to 71 s here, not reliably under the 60 s a test may take, so it is not
run as a test."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch" / "gpu_check.sh"

# a python that does nothing but log its arguments; the report fails, the ResNet-18 bench and
# (when asked) the tests hang
STUB = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
case "$*" in
  *bench-resnet18.json*) sleep 30 ;;
  *"-m pytest"*) sleep "${STUB_TEST_SLEEP:-0}" ;;
  *"-m cnncomp.report"*) exit 3 ;;
esac
exit 0
"""


NO_INSTALL = {"GPU_CHECK_NO_INSTALL": "1"}  # a stub that fails its import check must not pip install into the checkout


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    assert os.access(SCRIPT, os.X_OK)


def _run(tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, dict[str, tuple[int, int]], list[str]]:
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "check"
    full = {**os.environ, **NO_INSTALL, "PYTHON": str(stub), "CALLS": str(tmp_path / "calls"), **env}
    done = subprocess.run(["bash", str(SCRIPT), str(out)], env=full, capture_output=True, text=True, timeout=60)
    rows = [line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()]
    assert rows[0] == ["step", "exit", "seconds", "limit_s"]
    summary = {name: (int(rc), int(limit)) for name, rc, _, limit in rows[1:]}
    return done, summary, (tmp_path / "calls").read_text().splitlines()


STEPS = ["setup", "nvidia_smi", "versions", "cuda_tests", "bench_resnet18", "bench_alexnet_fc", "study", "report"]


def test_every_step_runs_and_is_recorded_whatever_the_others_do(tmp_path):
    done, summary, calls = _run(tmp_path, T_BENCH="2", STUDY_ARGS="trainer.max_epochs=2 model=lenet")
    assert list(summary) == STEPS
    assert done.returncode == 1, done.stdout  # a step failed
    assert summary["bench_resnet18"] == (124, 2)  # time-boxed: killed at its limit, the rest ran
    assert summary["report"][0] == 3
    for name in ("setup", "versions", "cuda_tests", "bench_alexnet_fc", "study"):
        assert summary[name][0] == 0, name
    out = tmp_path / "check"
    assert all((out / f"{name}.log").exists() for name in STEPS)
    # the GPU command lines (the stub python saw them)
    tests, r18, fc, study, report = calls[-5:]
    assert tests.startswith("-m pytest -m cuda tests/cuda") and f"--junitxml={out}/cuda-tests.xml" in tests
    gpu = "--device cuda --input 3x32x32 --batch 512 --precision bf16 --channels-last"
    assert r18.startswith(f"-m cnncomp.bench {gpu} --model resnet18") and f"--out {out}/bench-resnet18.json" in r18
    assert fc.startswith(f"-m cnncomp.bench {gpu} --model alexnet --layers linear --sections step,infer")
    assert study == f"-m cnncomp.train --multirun experiment=cifar10_study hydra.sweep.dir={out}/study " + (
        "model=alexnet kernel=none,dct kernel.keep=0.1 layers=all method.init=variance,gain "
        "trainer.precision=bf16 trainer.channels_last=true trainer.max_epochs=2 model=lenet"
    )
    assert report == f"-m cnncomp.report {out}/study"


def test_steps_share_one_time_budget(tmp_path):
    """GPU_CHECK_BUDGET caps everything after setup: a step that uses it up leaves the later steps
    unrun (exit 124, limit 0 to 4 s) instead of running past the end."""
    done, summary, calls = _run(tmp_path, GPU_CHECK_BUDGET="6", STUB_TEST_SLEEP="30")
    assert done.returncode == 1
    assert summary["cuda_tests"][0] == 124 and summary["cuda_tests"][1] <= 6
    for name in ("bench_resnet18", "bench_alexnet_fc", "study", "report"):
        rc, limit = summary[name]
        assert rc == 124 and limit < 5, name
        assert (tmp_path / "check" / f"{name}.log").read_text().startswith("not run")
    assert not any("-m cnncomp.bench" in c or "-m cnncomp.report" in c for c in calls)


@pytest.mark.parametrize("flag", ["--cpu-smoke", "GPU_CHECK_DRY=1"])
def test_the_smoke_mode_runs_the_steps_on_the_cpu(tmp_path, flag):
    stub = tmp_path / "python"
    stub.write_text(STUB.replace("sleep 30", "true"))
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, **NO_INSTALL, "PYTHON": str(stub), "CALLS": str(tmp_path / "calls")}
    args = ["bash", str(SCRIPT), str(tmp_path / "check")]
    if flag == "--cpu-smoke":
        args.insert(2, flag)
    else:
        env["GPU_CHECK_DRY"] = "1"
    subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    calls = (tmp_path / "calls").read_text()
    assert "--device cuda" not in calls and "--device cpu --quick" in calls
    assert "-m pytest -m cuda tests/cuda" in calls and "trainer.device=cpu" in calls
    nvidia = (tmp_path / "check" / "summary.tsv").read_text().splitlines()[2].split("\t")
    assert nvidia[:2] == ["nvidia_smi", "0"]  # no GPU is no failure of the smoke run
