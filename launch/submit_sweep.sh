#!/usr/bin/env bash
# Submit the sweep driver itself as a SLURM batch job, so a long grid does not depend on a login
# shell: the driver (a light, CPU-only process) submits the cells as a job array through
# hydra/launcher=submitit_slurm (or a profile), waits for them, prints the summary and exits
# non-zero when a cell failed. The sweep dir is fixed up front, so resubmitting the same command
# resumes the sweep: completed cells are skipped, interrupted ones resume, failed ones rerun.
#
#   launch/submit_sweep.sh [-d SWEEP_DIR] [-t DRIVER_TIME] -- OVERRIDES...
#   launch/submit_sweep.sh -d outputs/sweeps/study -- experiment=grid_study hydra/launcher=slurm_gpu
#
# Driver resources come from CNNCOMP_DRIVER_{PARTITION,ACCOUNT,QOS} (else CNNCOMP_{PARTITION,...});
# its log is <SWEEP_DIR>/driver-<jobid>.log. Extra sbatch options: SBATCH_* environment variables.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${CNNCOMP_PYTHON:-$ROOT/.venv/bin/python}
SWEEP_DIR="" TIME=${CNNCOMP_DRIVER_TIME:-3-00:00:00}
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    -d|--sweep-dir) SWEEP_DIR=$2; shift 2 ;;
    -t|--time) TIME=$2; shift 2 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || usage 2
command -v sbatch >/dev/null || { echo "submit_sweep: sbatch not found (is SLURM set up? source \$SLURM_BASE/env.sh)" >&2; exit 1; }
[ -n "$SWEEP_DIR" ] || SWEEP_DIR=outputs/sweeps/$(date +%Y-%m-%d)/$(date +%H-%M-%S)-$$
case "$SWEEP_DIR" in /*) ;; *) SWEEP_DIR=$ROOT/$SWEEP_DIR ;; esac
mkdir -p "$SWEEP_DIR"

opts=(--job-name=cnncomp-sweep --time="$TIME" --cpus-per-task=1 --mem=4G
      --output="$SWEEP_DIR/driver-%j.log" --chdir="$ROOT" --parsable)
part=${CNNCOMP_DRIVER_PARTITION:-${CNNCOMP_PARTITION:-}}
acct=${CNNCOMP_DRIVER_ACCOUNT:-${CNNCOMP_ACCOUNT:-}}
qos=${CNNCOMP_DRIVER_QOS:-${CNNCOMP_QOS:-}}
[ -n "$part" ] && opts+=(--partition="$part")
[ -n "$acct" ] && opts+=(--account="$acct")
[ -n "$qos" ] && opts+=(--qos="$qos")

# the command, quoted for the batch script
cmd=$(printf '%q ' "$PY" -m cnncomp.train --multirun "hydra.sweep.dir=$SWEEP_DIR" "$@")
jobid=$(sbatch "${opts[@]}" <<EOS
#!/usr/bin/env bash
# cnncomp sweep driver: submits the cells and waits for them
export OMP_NUM_THREADS=\${OMP_NUM_THREADS:-1}
# the driver must not hold the node's GPUs or be requeued/killed with its cells
unset SLURM_CPU_BIND SLURM_MEM_PER_CPU SLURM_MEM_PER_NODE
exec $cmd
EOS
)
echo "submitted sweep driver job $jobid"
echo "  sweep dir: $SWEEP_DIR"
echo "  log:       $SWEEP_DIR/driver-$jobid.log"
echo "  resume:    $0 -d $SWEEP_DIR -- $*"
