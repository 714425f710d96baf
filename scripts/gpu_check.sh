#!/usr/bin/env bash
# seqep on a CUDA GPU in one command: what only a GPU can check or measure (docs/benchmarks.md, "GPU").
#   train  precision=tf32 and bf16-mixed train the default model (3 epochs each); per epoch: unsettled shares,
#          mean free steps, the EP-vs-BPTT probe's cos_min and float32-vs-float64 cos_min
#   gdu    task=gdu in tf32, bf16-mixed and fp32: EP's gradient against float64 EP and against BPTT
#   tta    time to validation accuracy 0.72 on the default data, 3 seeds (issue 13's ways a-e; TTA_VARIANTS=null:
#          every way of seqep/tasks/bench/tta.py)
#   bench  the per-step bench: SNLI/IMDB/default shapes, precision rows, the old code's step, memory against T
# Usage (from anywhere; paths are relative to the repository root):
#   bash scripts/gpu_check.sh                       everything, in that order (~5 min on an H200)
#   PARTS="tta bench" BUDGET=560 bash scripts/gpu_check.sh   some parts, all done within 560 s
#   QUICK=1 DEVICE=cpu bash scripts/gpu_check.sh    a one-epoch dry run of every command on the CPU
# Settings: DEVICE (cuda), PY (.venv/bin/python if there, else python3), OUT (outputs/gpu_check: runs.tar.gz with
# every log, bench.json and metrics file), RUNS (outputs/gpu_check_runs: the run directories).
set -uo pipefail
cd "$(dirname "$0")/.."  # the repository root: run.py and conf/ are here
PY=${PY:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
DEV=${DEVICE:-cuda}
DEST=${OUT:-outputs/gpu_check}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HYDRA_FULL_ERROR=1
ROOT=${RUNS:-outputs/gpu_check_runs}  # every run directory and command log
COMMON=(device=$DEV logger=none paths.output_root=$ROOT)
if [[ -n "${QUICK:-}" ]]; then
  EPOCHS=1; TTA=(bench.tta_seeds=[0] bench.tta_max_epochs=1); BENCH=(bench.shapes=[default] bench.memory_T=[20]
  bench.repeats=1 bench.precision_shapes=[default] bench.workers=[1])
else
  EPOCHS=3; TTA=(); BENCH=()
fi
mkdir -p "$ROOT/logs"
BUDGET=${BUDGET:-3600}  # seconds for the whole script: a command gets what is left of it, less 20 s for packing
run() {  # run <seconds> <label> <args...>: one seqep command, its wall time, never longer than <seconds>
  local limit=$1 label=$2; shift 2
  local left=$((BUDGET - SECONDS - 20))
  (( left < limit )) && limit=$left
  (( limit < 15 )) && { echo "=== $label: skipped (${BUDGET} s budget spent)"; return 1; }
  echo "=== $label: python run.py $*"
  local t0=$SECONDS
  timeout "$limit" "$PY" run.py "$@" 2>&1 | tee "$ROOT/logs/$label.log" | grep -v "^\s*$" | tail -n 12
  local rc=${PIPESTATUS[0]}
  echo "=== $label: rc $rc, $((SECONDS - t0)) s"
  return "$rc"
}
epochs() {  # the settling and probe columns of the newest training run's epochs
  "$PY" - "$ROOT" <<'PY'
import json, sys
from pathlib import Path
run = max((p for p in Path(sys.argv[1]).glob("*/*_ep_*") if (p / "metrics.jsonl").exists()),
          key=lambda p: p.stat().st_mtime)
keys = ["relax/free/frac_unsettled", "relax/plus/frac_unsettled", "relax/free/mean_steps", "ep/probe/cos_min",
        "ep/probe/f64/cos_min", "val/acc", "time/epoch_s"]
for line in (run / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    if row.get("kind") == "epoch":
        print(run.name, "epoch", row["epoch"], " ".join(f"{k.split('/', 1)[1]}={row[k]:.4g}" for k in keys if k in row))
PY
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>/dev/null
"$PY" -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
# most wanted first: precision=tf32 has never run on CUDA before; then the issue-13 time to accuracy
PARTS=" ${PARTS:-train gdu tta bench} "
want() { [[ $PARTS == *" $1 "* ]]; }
want train && run 120 train_tf32 "${COMMON[@]}" precision=tf32 trainer.epochs=$EPOCHS && epochs | tee "$ROOT/logs/epochs_tf32.txt"
want tta && run 330 tta "${COMMON[@]}" task=bench bench.shapes=[] bench.memory_T=[] bench.workers=[] bench.tta_target=0.72 \
  bench.tta_variants=${TTA_VARIANTS:-[autograd,closed,mixed,settle,settle+mixed]} "${TTA[@]}"
want gdu && for p in tf32 bf16-mixed fp32; do
  run 60 "gdu_$p" "${COMMON[@]}" task=gdu precision=$p
done
want train && run 120 train_bf16-mixed "${COMMON[@]}" precision=bf16-mixed trainer.epochs=$EPOCHS && epochs | tee "$ROOT/logs/epochs_bf16.txt"
want bench && run 240 bench "${COMMON[@]}" task=bench "${BENCH[@]}"
echo "=== summary"
cat "$ROOT"/logs/epochs_*.txt 2>/dev/null
grep -hE "against itself in float64|^│ (autograd|closed|mixed|settle)|^speed-up|^precision .*/fp32|^seqep bench" \
  "$ROOT"/logs/*.log 2>/dev/null | cut -c1-170
# every command's log, the bench's own files (bench.json, bench.md) and every run's metrics, in one file
tar czf "$DEST/runs.tar.gz" --exclude='*.pt' --exclude='*.png' "$ROOT" && ls -la "$DEST"
