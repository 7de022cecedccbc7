#!/usr/bin/env bash
# pgolf's train stage and the record's script on one GPU machine, on the same random sp8192 tokens,
# world 1 x 8 accumulation (or NPROC ranks), then a short table. OUTDIR/topo.txt keeps `nvidia-smi topo -m`.
#   bash bench/side_by_side.sh OUTDIR [STEPS=64] [NPROC=1] [extra run_pgolf_bench.py args...]
set -uo pipefail
OUTDIR="${1:?usage: side_by_side.sh OUTDIR [STEPS] [NPROC] [args...]}"; STEPS="${2:-64}"; NPROC="${3:-1}"; shift $(( $# < 3 ? $# : 3 ))
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$ROOT"
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | head -2
# How the GPUs are linked (NVLink or PCIe) decides what communication costs: kept with the run's files.
nvidia-smi topo -m > "$OUTDIR/topo.txt" 2>&1 && head -n $(( NPROC + 1 )) "$OUTDIR/topo.txt"
SH=.ref/data/datasets/fineweb10B_sp8192
compgen -G "$SH/fineweb_train_*.bin" >/dev/null || python3 bench/make_random_shards.py --out "$SH" --train-tokens 20000000
timeout "${PGOLF_TIMEOUT:-300}" python3 bench/run_pgolf_bench.py --out "$OUTDIR/pgolf" --steps "$STEPS" --nproc "$NPROC" "$@" 2>&1 | grep -v "^train:" | tee "$OUTDIR/pgolf_stdout.log" | tail -n 80
if [[ "${SKIP_REF:-0}" != "1" ]]; then
  timeout "${REF_TIMEOUT:-280}" bash bench/run_reference_bench.sh "$OUTDIR/ref" "$STEPS" "$NPROC" > "$OUTDIR/ref_stdout.log" 2>&1
  # Cut by its time limit after some logged steps: the parser still reads the phases it saw.
  [[ -f "$OUTDIR/ref/reference.json" || ! -f "$OUTDIR/ref/reference.log" ]] \
    || python3 bench/parse_reference_log.py "$OUTDIR/ref/reference.log" --json "$OUTDIR/ref/reference.json" >> "$OUTDIR/ref_stdout.log" 2>&1
  tail -n 4 "$OUTDIR/ref_stdout.log"
fi
echo "=== summary ==="
grep -h "^pgolf \|^reference " "$OUTDIR/pgolf_stdout.log" "$OUTDIR/ref_stdout.log" 2>/dev/null
