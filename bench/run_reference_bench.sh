#!/usr/bin/env bash
# Run the record's train_gpt.py (prepared in .ref/ by bench/prepare_reference.sh) for a
# timing benchmark on the GPU, and summarise its step times.
#   usage: bash bench/run_reference_bench.sh OUTDIR [ITERATIONS=60] [NPROC=1]
# NPROC=1 runs `python3 run_reference.py` (world 1, 8 grad-accumulation steps, the record's
# 786,432 tokens per step); NPROC>1 uses torchrun (accumulation 8/NPROC).
# Env overrides: SEED (1337), RUN_ID (ref_bench), WARMUP_STEPS (5), TRAIN_LOG_EVERY (5),
# MAX_WALLCLOCK_SECONDS (0: schedules by step), REF_DATA_DIR (./data/ under .ref),
# REF_TRAIN_TOKENS (20M random tokens when no train shard exists), REF_STOP_AFTER_TRAIN (1),
# REF_SDPA_BACKEND (cudnn), REF_SDPA_GQA (auto), and any of the record's own variables.
set -euo pipefail
OUTDIR="${1:?usage: run_reference_bench.sh OUTDIR [ITERATIONS] [NPROC]}"
ITERS="${2:-60}"
NPROC="${3:-1}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
cd "$ROOT"
if [[ ! -f .ref/train_gpt.py || ! -f .ref/flash_attn_interface.py ]]; then
  echo "run_reference_bench: .ref/ is not prepared: run bench/prepare_reference.sh first" >&2
  exit 1
fi
DATA="${REF_DATA_DIR:-./data/}"            # as seen from .ref/ (or absolute)
case "$DATA" in /*) DATA_HERE="$DATA" ;; *) DATA_HERE=".ref/${DATA#./}" ;; esac
SHARDS="${DATA_HERE%/}/datasets/fineweb10B_sp8192"
if ! compgen -G "$SHARDS/fineweb_train_*.bin" >/dev/null; then
  python3 bench/make_random_shards.py --out "$SHARDS" --train-tokens "${REF_TRAIN_TOKENS:-20000000}"
fi
cd .ref
export PYTHONUNBUFFERED=1 DATA_DIR="$DATA" ITERATIONS="$ITERS"
export SEED="${SEED:-1337}" RUN_ID="${RUN_ID:-ref_bench}"
export MAX_WALLCLOCK_SECONDS="${MAX_WALLCLOCK_SECONDS:-0}" WARMUP_STEPS="${WARMUP_STEPS:-5}"
export TRAIN_LOG_EVERY="${TRAIN_LOG_EVERY:-5}" VAL_LOSS_EVERY="${VAL_LOSS_EVERY:-0}"
export SLIDING_WINDOW_ENABLED="${SLIDING_WINDOW_ENABLED:-0}" REF_STOP_AFTER_TRAIN="${REF_STOP_AFTER_TRAIN:-1}"
rm -f "logs/$RUN_ID.txt"
set -o pipefail
if [[ "$NPROC" == "1" ]]; then
  python3 run_reference.py 2>&1 | tee "$OUTDIR/reference.log"
else
  torchrun --standalone --nproc_per_node="$NPROC" run_reference.py 2>&1 | tee "$OUTDIR/reference.log"
fi
cd "$ROOT"
python3 bench/parse_reference_log.py "$OUTDIR/reference.log" --json "$OUTDIR/reference.json"
