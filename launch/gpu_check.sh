#!/usr/bin/env bash
# The prepared one-shot GPU check (issue #16): one command on a machine with a CUDA GPU runs the
# CUDA tests, the CUDA benchmarks and the CIFAR-10 study, and writes everything into one folder.
#
#   bash launch/gpu_check.sh [DIR]       # DIR: default $OUT when set, else outputs/gpu_check/<timestamp>
#   bash launch/gpu_check.sh --cpu-smoke [DIR]   # or GPU_CHECK_DRY=1: every step on the CPU, tiny sizes
#
# Steps, in order, each time-boxed (`timeout`) and each run whatever the others did; DIR/summary.tsv
# holds one row per step (name, exit code, seconds, time limit; 124 = ran out of time), each step's
# output is DIR/<step>.log, and the script exits 1 when a step failed:
#   setup          the python to use: $PYTHON, ./.venv/bin/python, python3 (the first that imports
#                  cnncomp, hydra and pytest with the repo on PYTHONPATH); if none does, a venv
#                  ./.venv (--system-site-packages: a preinstalled torch is reused) with pip install -e '.[dev]'
#   nvidia_smi     nvidia-smi -L
#   versions       python, torch, CUDA, cuDNN, NCCL versions and the visible devices (versions.txt)
#   cuda_tests     pytest -m cuda tests/cuda (junit xml: cuda-tests.xml)
#   bench_resnet18 python -m cnncomp.bench --device cuda, ResNet-18 3x32x32, batch 512, bf16,
#                  channels_last (bench-resnet18.json; the tables in the log)
#   bench_alexnet_fc  AlexNet 3x32x32, only the Linear layers compressed, sections step,infer
#                  (bench-alexnet-fc.json)
#   study          python -m cnncomp.train --multirun experiment=cifar10_study hydra.sweep.dir=DIR/study, on
#                  the GPU its AlexNet cells: kernel=none,dct keep 0.1, method.init=variance,gain, bf16 (4 x ~45 s);
#                  $STUDY_ARGS (extra overrides, word-split: e.g. STUDY_ARGS="dataset.path=/data/cifar10-jpeg.tar.gz")
#   report         python -m cnncomp.report DIR/study (report.md, results.csv, plots in DIR/study)
#
# Time: the steps after setup share GPU_CHECK_BUDGET seconds (default 480, 8 minutes on one
# H100/H200); each has its own cap (T_TESTS, T_BENCH, T_BENCH_FC, T_STUDY, T_REPORT, below) and
# never runs past the budget's end. Setup has its own cap T_SETUP (a pip install can take minutes).
# Other knobs: PYTEST_ARGS (extra pytest arguments), STUDY_EXPERIMENT (default cifar10_study),
# GPU_CHECK_NO_INSTALL=1 (fail the setup step rather than create ./.venv).
#
# --cpu-smoke checks this script's plumbing on a machine without a GPU: the CUDA tests CPU against
# CPU (CNNCOMP_TEST_DEVICE=cpu, only those matching GPU_CHECK_DRY_TESTS, default "loader"), the
# benchmarks with --device cpu --quick on LeNet-5, the study on synthetic data for one short epoch
# (experiment=grid_smoke when the cifar10_study preset is not there). Its figures mean nothing.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2

DRY=${GPU_CHECK_DRY:-0}
if [ "${1:-}" = "--cpu-smoke" ]; then
    DRY=1
    shift
fi
DIR=${1:-${OUT:-$ROOT/outputs/gpu_check/$(date +%Y%m%d-%H%M%S)}}
mkdir -p "$DIR" || exit 2
DIR=$(cd "$DIR" && pwd)
SUMMARY=$DIR/summary.tsv
printf 'step\texit\tseconds\tlimit_s\n' >"$SUMMARY"
: >"$DIR/commands.txt"

BUDGET=${GPU_CHECK_BUDGET:-480}
T_SETUP=${T_SETUP:-300}
T_TESTS=${T_TESTS:-150}
T_BENCH=${T_BENCH:-75}
T_BENCH_FC=${T_BENCH_FC:-40}
T_STUDY=${T_STUDY:-200}
T_REPORT=${T_REPORT:-25}
STUDY_EXPERIMENT=${STUDY_EXPERIMENT:-cifar10_study}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
FAILED=0
DEADLINE=""

log() { echo "[gpu_check] $*"; }

# step NAME CAP CMD...: run CMD with output in DIR/NAME.log, at most CAP seconds (and never past
# DEADLINE once it is set); record its exit code. A step never stops the script.
step() {
    local name=$1 cap=$2 limit rc start
    shift 2
    limit=$cap
    local left=$cap
    if [ -n "$DEADLINE" ]; then
        left=$((DEADLINE - $(date +%s)))
        [ "$left" -lt "$limit" ] && limit=$left
    fi
    printf '%s:' "$name" >>"$DIR/commands.txt"
    printf ' %q' "$@" >>"$DIR/commands.txt"
    echo >>"$DIR/commands.txt"
    start=$(date +%s)
    if [ "$left" -lt 5 ]; then
        echo "not run: the time budget is spent" >"$DIR/$name.log"
        rc=124
    else
        log "$name (at most ${limit}s) ..."
        if declare -F "$1" >/dev/null; then  # a function of this script: timeout runs programs only
            timeout --kill-after=15 "$limit" bash -c '"$@"' bash "$@" >"$DIR/$name.log" 2>&1 </dev/null
        else
            timeout --kill-after=15 "$limit" "$@" >"$DIR/$name.log" 2>&1 </dev/null
        fi
        rc=$?
    fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - start))" "$limit" >>"$SUMMARY"
    log "$name: exit $rc in $(($(date +%s) - start))s (log: $DIR/$name.log)"
    [ "$rc" -ne 0 ] && FAILED=1
    return 0
}

# The python that has the package's dependencies (the repo itself is on PYTHONPATH), else a venv.
CHECK_IMPORTS="import cnncomp.train, cnncomp.bench, cnncomp.report, hydra, pytest, torch"
setup_python() {
    local py
    for py in "${PYTHON:-}" "$ROOT/.venv/bin/python" python3 python; do
        [ -n "$py" ] && command -v "$py" >/dev/null 2>&1 || continue
        if "$py" -c "$CHECK_IMPORTS" 2>/dev/null; then
            echo "using $(command -v "$py")"
            echo "$py" >"$DIR/.python"
            return 0
        fi
        echo "$py: cannot import the package's dependencies"
    done
    if [ "${GPU_CHECK_NO_INSTALL:-0}" = 1 ]; then
        echo "GPU_CHECK_NO_INSTALL=1: not creating a venv"
        return 1
    fi
    local base
    base=$(command -v python3 || command -v python) || { echo "no python on PATH"; return 1; }
    echo "creating $ROOT/.venv from $base and installing the package (pip install -e '.[dev]')"
    "$base" -m venv --system-site-packages "$ROOT/.venv" || return 1
    "$ROOT/.venv/bin/python" -m pip install -q -e "$ROOT[dev]" || return 1
    "$ROOT/.venv/bin/python" -c "$CHECK_IMPORTS" || return 1
    echo "$ROOT/.venv/bin/python" >"$DIR/.python"
}

versions() {
    "$PY" - <<'EOF'
import platform, sys
import torch
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name} {p.total_memory / 2**30:.0f} GiB sm_{p.major}{p.minor}")
if torch.cuda.is_available() and torch.distributed.is_nccl_available():
    print("nccl", ".".join(map(str, torch.cuda.nccl.version())))
EOF
}

study() {
    local experiment=$STUDY_EXPERIMENT extra=()
    if [ "$DRY" = 1 ]; then
        if [ ! -f "$ROOT/conf/experiment/$experiment.yaml" ]; then
            echo "note: conf/experiment/$experiment.yaml is not here; the smoke runs experiment=grid_smoke"
            experiment=grid_smoke
        fi
        extra=(model=lenet dataset=synthetic dataset.num_train=128 dataset.num_test=32 trainer.device=cpu
               trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.limit_eval_batches=1)
    else
        # the AlexNet question of the study (README "Why a low-pass AlexNet starts too loud"): dense (twice:
        # init does not apply to it, so the two must agree) against a keep-0.1 DCT block under either init
        extra=(model=alexnet kernel=none,dct kernel.keep=0.1 layers=all method.init=variance,gain
               trainer.precision=bf16 trainer.channels_last=true)
    fi
    # STUDY_ARGS: the caller's extra overrides, split on whitespace on purpose
    # shellcheck disable=SC2086
    "$PY" -m cnncomp.train --multirun "experiment=$experiment" "hydra.sweep.dir=$DIR/study" "${extra[@]}" ${STUDY_ARGS:-}
}

export -f setup_python versions study
export ROOT DIR DRY STUDY_EXPERIMENT CHECK_IMPORTS

log "writing into $DIR$([ "$DRY" = 1 ] && echo ' (CPU smoke run)')"
step setup "$T_SETUP" setup_python
PY=$(cat "$DIR/.python" 2>/dev/null || echo python3)
export PY
rm -f "$DIR/.python"
DEADLINE=$(($(date +%s) + BUDGET))

if [ "$DRY" = 1 ]; then  # no GPU expected: its absence is no failure of the smoke run
    step nvidia_smi 20 bash -c 'nvidia-smi -L 2>/dev/null || echo "no nvidia-smi (CPU smoke run)"'
else
    step nvidia_smi 20 nvidia-smi -L
fi
step versions 30 versions
cp "$DIR/versions.log" "$DIR/versions.txt" 2>/dev/null

if [ "$DRY" = 1 ]; then
    # shellcheck disable=SC2086
    step cuda_tests "$T_TESTS" env CNNCOMP_TEST_DEVICE=cpu "$PY" -m pytest -m cuda tests/cuda -q -rA \
        -p no:cacheprovider -k "${GPU_CHECK_DRY_TESTS:-loader}" --junitxml="$DIR/cuda-tests.xml" ${PYTEST_ARGS:-}
    BENCH=(--device cpu --quick --model lenet --input 1x28x28 --sections step,infer --kernels dct --keeps 1,0.25)
    step bench_resnet18 "$T_BENCH" "$PY" -m cnncomp.bench "${BENCH[@]}" --out "$DIR/bench-resnet18.json"
    step bench_alexnet_fc "$T_BENCH_FC" "$PY" -m cnncomp.bench "${BENCH[@]}" --layers linear --out "$DIR/bench-alexnet-fc.json"
else
    # shellcheck disable=SC2086
    step cuda_tests "$T_TESTS" "$PY" -m pytest -m cuda tests/cuda -q -rA -p no:cacheprovider \
        --junitxml="$DIR/cuda-tests.xml" ${PYTEST_ARGS:-}
    GPU=(--device cuda --input 3x32x32 --batch 512 --precision bf16 --channels-last)
    step bench_resnet18 "$T_BENCH" "$PY" -m cnncomp.bench "${GPU[@]}" --model resnet18 --workers 4 --repeats 3 \
        --out "$DIR/bench-resnet18.json"
    step bench_alexnet_fc "$T_BENCH_FC" "$PY" -m cnncomp.bench "${GPU[@]}" --model alexnet --layers linear \
        --sections step,infer --keeps 1,0.25,0.1 --out "$DIR/bench-alexnet-fc.json"
fi
step study "$T_STUDY" study
step report "$T_REPORT" "$PY" -m cnncomp.report "$DIR/study"

log "summary ($SUMMARY):"
column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
exit "$FAILED"
