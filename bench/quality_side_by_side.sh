#!/usr/bin/env bash
# The quality comparison on a GPU: the record's script and pgolf's stages on the same real
# sp8192 tokens (bench/make_text_shards.py → .ref/data_text), same reduced batch, steps and seeds, then
# pre-/post-quantization val_bpb per seed and a Welch test (bench/quality_summary.py).
#   [PARALLEL=1 [STAGGER=1]] [EAGER=1] [TTT=1 [TTT_SET=...]] bash bench/quality_side_by_side.sh OUTDIR [SEEDS="1 2 3"] [STEPS=400] [BATCH_TOKENS=16384] [SIDES="ref pgolf", or ref0611] [EMA=0.99]
# Needs .ref/ (bench/prepare_reference.sh) and .ref/data_text (bench/make_text_shards.py).
# 16,384 tokens per step = 8 micro-batches of 1 × 2048; 400 steps ≈ one epoch of the 6.9M training
# tokens. Both runs take the wall clock out of the schedule and calibrate GPTQ on 64 micro-batches.
# Both use EMA decay 0.99 instead of the record's 0.997: both EMAs start from the random initial
# weights, and after 400 steps 0.997 would still hold 30% of them (0.99: 2%). Per-seed logs land in
# OUTDIR as they finish, so a run cut by a time limit keeps them.
# SLIDING=0: pgolf skips its two stride-64 scores (bench/quality.py --no-sliding).
# TTT=1: pgolf also scores its blob with challenge.yaml's ttt ablation (bench/quality.py --ttt),
# TTT_SET="key=value ..." overriding its eval keys (--ttt-set).
# Side ref0611: the 1.0611 record's script (.ref0611/ from prepare_reference.sh with REF_RECORD=1.0611,
# shards from bench/make_caseops_shards.py) with bench/ref0611.env, the same steps, batch, seed and EMA;
# its log, its artifacts (OUTDIR/ref0611_sN/) and its scores with the TTT gain (OUTDIR/ref0611_sN.json).
# Run again on the same OUTDIR (e.g. after a time limit), both sides resume: pgolf's quality.py keeps what
# it trained and scored; a record seed already quantized is only scored with TTT (run_0611), which draws
# its LoRA initialisation at another point of the random stream than the full run would (same
# distribution, not the same numbers). A rerun starts every seed at once (STAGGER sees the first run's
# logs): run it on the machine that kept Inductor's cache in /tmp.
set -uo pipefail
OUTDIR="${1:?usage: quality_side_by_side.sh OUTDIR [SEEDS] [STEPS] [BATCH_TOKENS] [SIDES] [EMA]}"
SEEDS="${2:-1 2 3}"; STEPS="${3:-400}"; BATCH="${4:-16384}"; SIDES="${5:-ref pgolf}"; EMA="${6:-0.99}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$ROOT"
mkdir -p "$OUTDIR"; OUTDIR="$(cd "$OUTDIR" && pwd)"
CASEOPS=.ref0611/data_caseops
if [[ " $SIDES " == *" ref0611 "* ]]; then
  [[ -f $CASEOPS/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved/fineweb_val_bytes_000000.bin ]] \
    || { echo "no $CASEOPS: run bench/make_caseops_shards.py first" >&2; exit 1; }
fi
if [[ " $SIDES " == *" ref "* || " $SIDES " == *" pgolf "* ]]; then
  [[ -f .ref/data_text/datasets/fineweb10B_sp8192/fineweb_val_000000.bin ]] \
    || { echo "no .ref/data_text: run bench/make_text_shards.py first" >&2; exit 1; }
fi
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
# PARALLEL=1 runs every (seed, side) at once on the one GPU: the runs are small (1 x 2048 micro-batches)
# and launch-bound, so they share it well, and no time is measured here. Each reference run then gets its
# own copy of the record's code, because the record writes final_model.pt into its working directory.
# Each process gets 2 CPU threads: six processes with torch's default 16 OpenMP threads each on 16 cores
# stalled before their first step (eager, 470 s without a log line), which likely also explains an earlier
# compiled run whose six processes were "still compiling" after 590 s. Compiled, two at once (one seed) took
# 528 s for pgolf with Inductor's compile workers capped at 8.
if [[ "${PARALLEL:-0}" == 1 ]]; then
  export TORCHINDUCTOR_COMPILE_THREADS="${TORCHINDUCTOR_COMPILE_THREADS:-8}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
fi
# EAGER=1 turns torch.compile off on both sides (TORCHDYNAMO_DISABLE=1): the record compiles its model
# three times (training, quantized eval, sliding eval), which alone takes most of 10 minutes; eager
# runs share the GPU well, so three seeds of a side fit in 10 minutes. Not the same numbers as compiled:
# eager rounds every intermediate to bf16, and the record's bf16 softcap costs it ~0.035 bpb eager
# (docs/records/2026-11-23_quality_eager), so EAGER=1 favours pgolf (which upcasts before the softcap).
[[ "${EAGER:-0}" == 1 ]] && export TORCHDYNAMO_DISABLE=1
# RUN_TIMEOUT=S stops each run after S seconds, so the summary still runs inside an outer time limit.
LIMIT=(); [[ -n "${RUN_TIMEOUT:-}" ]] && LIMIT=(timeout "$RUN_TIMEOUT")
run_0611() {  # seed: the 1.0611 record's script, run from .ref0611 with its artifacts in OUTDIR/ref0611_sN
  local seed="$1" art="$OUTDIR/ref0611_s$1" log="$OUTDIR/ref0611_s$1.log" trained="$OUTDIR/ref0611_s$1.train.log"
  # Run again on the same OUTDIR, a seed with its TTT score is left alone, and one trained and quantized
  # (its artifact kept) is only scored with TTT: the record's TTT_EVAL_ONLY=1, its training log kept beside.
  if grep -qs '^quantized_ttt_phased ' "$log"; then echo "ref0611 seed $seed: scored already"; return 0; fi
  local ttt_only=0
  if [[ -f $art/final_model.int6.ptz ]] && grep -qs '^diagnostic quantized ' "$trained" "$log"; then
    [[ -f $trained ]] || mv "$log" "$trained"; ttt_only=1
  else
    rm -f "$trained"
  fi
  mkdir -p "$art" && rm -f "$art/quality0611_s$seed.txt"  # the record appends to its log file
  (set -a; . bench/ref0611.env; set +a
   cd .ref0611 && PYTHONUNBUFFERED=1 SEED="$seed" RUN_ID="quality0611_s$seed" ARTIFACT_DIR="$art" \
     DATA_PATH="$ROOT/$CASEOPS/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved" \
     TOKENIZER_PATH="$ROOT/$CASEOPS/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model" \
     ITERATIONS="$STEPS" TRAIN_BATCH_TOKENS="$BATCH" EMA_DECAY="$EMA" REF_STOP_AFTER_TRAIN=0 TTT_EVAL_ONLY="$ttt_only" \
     "${LIMIT[@]}" python3 run_reference.py) > "$log" 2>&1
  local rc=$?
  python3 bench/ref0611_scores.py $([[ -f $trained ]] && echo "$trained") "$log" --seed "$seed" \
    --json "$OUTDIR/ref0611_s$seed.json" >/dev/null
  return $rc
}
run_one() {
  local seed="$1" side="$2" start; start=$(date +%s)
  if [[ "$side" == ref ]]; then
    local dir=.ref
    if [[ "${PARALLEL:-0}" == 1 ]]; then
      dir="/tmp/ref_s$seed"; mkdir -p "$dir"; cp .ref/*.py "$dir/"; ln -sfn "$ROOT/.ref/data_text" "$dir/data_text"
    fi
    (cd "$dir" && rm -f "logs/quality_s$seed.txt" && PYTHONUNBUFFERED=1 DATA_DIR=./data_text/ SEED="$seed" \
      RUN_ID="quality_s$seed" ITERATIONS="$STEPS" TRAIN_BATCH_TOKENS="$BATCH" MAX_WALLCLOCK_SECONDS=0 \
      WARMUP_STEPS=5 TRAIN_LOG_EVERY=50 EMA_DECAY="$EMA" VAL_LOSS_EVERY=0 SLIDING_WINDOW_ENABLED=1 COMPRESSOR=lzma \
      REF_STOP_AFTER_TRAIN=0 "${LIMIT[@]}" python3 run_reference.py) > "$OUTDIR/ref_s$seed.log" 2>&1
  elif [[ "$side" == ref0611 ]]; then
    run_0611 "$seed"
  else
    "${LIMIT[@]}" python3 bench/quality.py --out "$OUTDIR/pgolf_s$seed" --seed "$seed" --steps "$STEPS" --batch-tokens "$BATCH" \
      --set ema_decay="$EMA" $([[ ${SLIDING:-1} == 0 ]] && echo --no-sliding) ${TTT:+--ttt --ttt-set ${TTT_SET:-}} > "$OUTDIR/pgolf_s$seed.log" 2>&1
  fi
  echo "$side seed $seed: exit $? in $(( $(date +%s) - start )) s"
}
# STAGGER=1 (with PARALLEL=1) starts the first seed alone and the other seeds once its training graphs are
# compiled: they then load Inductor's cached graphs and kernels (same code, same shapes) instead of
# compiling the same model three times at once on 16 cores.
compiled() {  # side seed -> true once that run logged its first step after compiling
  if [[ "$1" == ref* ]]; then grep -qsE '^1/[0-9]+ train_loss' "$OUTDIR/$1_s$2.log" "$OUTDIR/$1_s$2.train.log"
  else grep -q 'compile warm-up' "$OUTDIR/pgolf_s$2/train_stdout.log" 2>/dev/null; fi
}
SEED_LIST=($SEEDS)
for seed in "${SEED_LIST[@]}"; do
  for side in $SIDES; do
    if [[ "${PARALLEL:-0}" == 1 ]]; then run_one "$seed" "$side" & else run_one "$seed" "$side"; fi
  done
  if [[ "${PARALLEL:-0}${STAGGER:-0}" == 11 && "$seed" == "${SEED_LIST[0]}" ]]; then
    for side in $SIDES; do
      until compiled "$side" "$seed" || [[ -z "$(jobs -rp)" ]]; do sleep 5; done
    done
    echo "seed $seed compiled after $SECONDS s: starting the other seeds"
  fi
done
wait
python3 bench/quality_summary.py "$OUTDIR"
