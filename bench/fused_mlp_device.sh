#!/usr/bin/env bash
# One device call for train.fused_mlp: GPU correctness + micro-benchmark (fused_mlp_check.py), then pgolf's
# train stage with fused_mlp=on and =off (variants.sh, record config, world 1 x 8 accumulation), then a
# table against run D's reference numbers (docs/benchmarks.md; the reference is NOT rerun here).
#   bash bench/fused_mlp_device.sh OUTDIR [STEPS=32]
set -uo pipefail
OUT="$1"; STEPS="${2:-32}"; W=/tmp/fused_mlp_bench
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$ROOT"
mkdir -p "$OUT" "$W"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | head -1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout "${CHECK_TIMEOUT:-90}" python3 bench/fused_mlp_check.py --json "$OUT/check.json" > "$OUT/check.log" 2>&1
echo "check exit $?"; grep -v "^$" "$OUT/check.log" | tail -n 25
VARIANT_TIMEOUT="${VARIANT_TIMEOUT:-180}" bash bench/variants.sh "$W" "$STEPS" "on||--set fused_mlp=\"on\"" "off||--set fused_mlp=\"off\""
for v in on off; do
  cp "$W/$v.log" "$OUT/$v.log" 2>/dev/null; cp "$W/$v/pgolf.json" "$OUT/${v}_pgolf.json" 2>/dev/null
  grep -h "^step " "$W/$v/pgolf.log" 2>/dev/null | awk '{print $2, $4}' > "$W/$v.loss"
done
echo "=== losses (step on, step off)"; paste "$W/on.loss" "$W/off.loss"
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1]); ref = {"pre_loop": 817.5, "looped": 1134.9}  # run D reference ms/step (not rerun)
runs = {v: json.loads((out / f"{v}_pgolf.json").read_text()) if (out / f"{v}_pgolf.json").exists() else None for v in ("on", "off")}
print("=== table (786,432 tokens/step; reference = run D, docs/benchmarks.md, not rerun)")
print(f"{'phase':9s} {'off ms':>8s} {'on ms':>8s} {'on/off':>7s} {'on tok/s':>9s} {'on/refD':>8s} {'off/refD':>8s}")
for ph in ("pre_loop", "looped"):
    g = lambda v: runs[v]["phases"][ph]["ms_per_step"] if runs[v] and ph in runs[v]["phases"] else float("nan")
    on, off = g("on"), g("off")
    print(f"{ph:9s} {off:8.1f} {on:8.1f} {off / on:7.3f} {786432 / on * 1e3 / 1e3:8.0f}K {ref[ph] / on:8.3f} {ref[ph] / off:8.3f}")
for v, r in runs.items():
    if r:
        print(f"{v}: peak {r['peak_mem_allocated_gib']:.1f} GiB, compile {r['compile_seconds']:.0f} s, final loss {r['final_train_loss']:.4f}")
PY
