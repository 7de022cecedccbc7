#!/usr/bin/env bash
# pgolf-only speed variants in one device call: each line of VARIANTS is "name|ENV=..|extra args".
#   bash bench/variants.sh OUTDIR STEPS "name1|ENV1=1|" "name2|ENV2=1 ENV3=x|--set key=value" ...
set -uo pipefail
OUT="$1"; STEPS="$2"; shift 2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$ROOT"
SH=.ref/data/datasets/fineweb10B_sp8192
compgen -G "$SH/fineweb_train_*.bin" >/dev/null || python3 bench/make_random_shards.py --out "$SH" --train-tokens 20000000
for v in "$@"; do
  IFS='|' read -r name envs args <<< "$v"
  echo "=== variant $name: $envs $args"
  env $envs timeout "${VARIANT_TIMEOUT:-280}" python3 bench/run_pgolf_bench.py --out "$OUT/$name" --steps "$STEPS" $args > "$OUT/$name.log" 2>&1
  grep "^pgolf \|compile warm-up" "$OUT/$name.log" | sed "s/^/[$name] /"
done
echo "=== summary"; for v in "$@"; do n="${v%%|*}"; grep -h "^pgolf " "$OUT/$n.log" | sed "s/^/[$n] /"; done
