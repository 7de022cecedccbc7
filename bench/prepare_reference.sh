#!/usr/bin/env bash
# Put a record's training script, an FA3 shim and a launcher into a git-ignored folder of this
# checkout, where the bench scripts look for them. Needs no GPU; nothing it writes is committed.
#
# Which record (REF_RECORD):
#   1.0856 (default)  2026-04-05_SP8192_GPTQ-Embeddings_SDClip_Loop45x2 → .ref/
#   1.0611            2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611 → .ref0611/
#                     (also its lossless_caps.py, prepare_caseops_data.py and CaseOps tokenizer)
# Source of the reference (first that applies):
#   REF_SRC=/path/to/train_gpt.py        a local copy of the record's train_gpt.py (1.0856 only)
#   REF_MIRROR=<git dir>                 a clone or mirror of openai/parameter-golf
#   REF_COMMIT=<rev>                     revision in the mirror (default HEAD)
# Other knobs:
#   REF_TOKENIZER=<.model>               the published sp8192 tokenizer, fineweb_8192_bpe.model (1.0856: required)
#   REF_VERIFY=0                         skip the blob-hash check of train_gpt.py
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MIRROR="${REF_MIRROR:-}"
COMMIT="${REF_COMMIT:-HEAD}"
case "${REF_RECORD:-1.0856}" in
  1.0856)
    DEST="$ROOT/.ref"
    RECORD="records/track_10min_16mb/2026-04-05_SP8192_GPTQ-Embeddings_SDClip_Loop45x2"
    # git blob id of that record's train_gpt.py (15,516 bytes, the packed script that was run)
    EXPECTED_BLOB="3bd17c944f812fc0eadf471c0aa642d54e67179e"
    EXTRA_FILES="train_gpt_human.py:train_gpt_human.py"   # readable twin, for reading only
    LOG_SEEDS="1 42 1234 1337 2025"
    TOKENIZER="${REF_TOKENIZER:?set REF_TOKENIZER to the published sp8192 tokenizer (fineweb_8192_bpe.model)}"
    ;;
  1.0611)
    DEST="$ROOT/.ref0611"
    RECORD="records/track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611"
    # git blob id of that record's train_gpt.py (158,429 bytes, plain source)
    EXPECTED_BLOB="9979400ef9f10da2fa908d9e7ce3556b82165b2a"
    CASEOPS_MODEL="fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
    EXTRA_FILES="lossless_caps.py:lossless_caps.py prepare_caseops_data.py:prepare_caseops_data.py"
    EXTRA_FILES+=" tokenizers/$CASEOPS_MODEL:data/tokenizers/$CASEOPS_MODEL"
    LOG_SEEDS="0 42 1234"
    TOKENIZER=""
    if [[ -n "${REF_SRC:-}" ]]; then
      echo "prepare_reference: REF_RECORD=1.0611 needs REF_MIRROR (it copies several of the record's files)" >&2
      exit 1
    fi
    ;;
  *) echo "prepare_reference: REF_RECORD='$REF_RECORD': expected 1.0856 or 1.0611" >&2; exit 1 ;;
esac

cd "$ROOT"
if git rev-parse --git-dir >/dev/null 2>&1; then
  mkdir -p "$DEST"
  if ! git check-ignore -q "$DEST/train_gpt.py"; then
    echo "prepare_reference: $DEST is not git-ignored; add '/$(basename "$DEST")/' to .gitignore first" >&2
    exit 1
  fi
fi
mkdir -p "$DEST/data/tokenizers"
[[ -n "$TOKENIZER" ]] && mkdir -p "$DEST/data/datasets/fineweb10B_sp8192"

# 1. the record's scripts
if [[ -n "${REF_SRC:-}" ]]; then
  cp "$REF_SRC" "$DEST/train_gpt.py"
  echo "prepare_reference: train_gpt.py from $REF_SRC"
else
  if ! git --git-dir="$MIRROR" rev-parse --verify -q "$COMMIT^{commit}" >/dev/null 2>&1 \
     && ! git -C "$MIRROR" rev-parse --verify -q "$COMMIT^{commit}" >/dev/null 2>&1; then
    echo "prepare_reference: no openai/parameter-golf clone at REF_MIRROR='$MIRROR'" >&2
    echo "  git clone https://github.com/openai/parameter-golf and set REF_MIRROR to it," >&2
    echo "  or set REF_SRC to a copy of $RECORD/train_gpt.py" >&2
    exit 1
  fi
  show() { git -C "$MIRROR" show "$COMMIT:$RECORD/$1"; }
  show train_gpt.py > "$DEST/train_gpt.py"
  for pair in $EXTRA_FILES; do show "${pair%%:*}" > "$DEST/${pair#*:}"; done
  show README.md > "$DEST/record_README.md"
  show submission.json > "$DEST/record_submission.json"
  for s in $LOG_SEEDS; do show "train_seed$s.log" > "$DEST/record_train_seed$s.log"; done
  echo "prepare_reference: scripts from $MIRROR @ $(git -C "$MIRROR" rev-parse "$COMMIT")"
fi
if [[ "${REF_VERIFY:-1}" == "1" ]]; then
  got="$(git hash-object "$DEST/train_gpt.py")"
  if [[ "$got" != "$EXPECTED_BLOB" ]]; then
    echo "prepare_reference: train_gpt.py blob $got != expected $EXPECTED_BLOB (REF_VERIFY=0 to accept)" >&2
    exit 1
  fi
fi

# The 1.0856 record ships its code lzma+base85-packed (to count fewer code bytes); unpack a copy
# for reading and profiling.  The packed file is what runs.
[[ -n "$TOKENIZER" ]] && python3 - "$DEST/train_gpt.py" "$DEST/train_gpt_unpacked.py" <<'PY'
import base64, lzma, re, sys
src = open(sys.argv[1], encoding="utf-8").read()
m = re.search(r'b85decode\("(.*?)"\)', src, re.S)
if m is None:
    open(sys.argv[2], "w", encoding="utf-8").write(src)   # already plain source
else:
    raw = base64.b85decode(m.group(1))
    code = lzma.decompress(raw, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    open(sys.argv[2], "w", encoding="utf-8").write(code.decode("utf-8"))
PY

# 2. our shim for flash_attn_interface and the launcher
cp "$ROOT/bench/ref_shim/flash_attn_interface.py" "$DEST/flash_attn_interface.py"
cp "$ROOT/bench/ref_shim/run_reference.py" "$DEST/run_reference.py"

if [[ -z "$TOKENIZER" ]]; then  # 1.0611: plain source, its own tokenizer came with it
  du -sh "$DEST" | sed 's/^/prepare_reference: .ref0611 size /'
  echo "prepare_reference: next, the CaseOps shards: python3 bench/make_caseops_shards.py --samples DIR"
  exit 0
fi

# 3. tokenizer where the record looks for it: DATA_DIR/tokenizers/fineweb_8192_bpe.model
if [[ ! -f "$TOKENIZER" ]]; then
  echo "prepare_reference: tokenizer $TOKENIZER not found (set REF_TOKENIZER)" >&2
  exit 1
fi
install -m 0644 "$TOKENIZER" "$DEST/data/tokenizers/fineweb_8192_bpe.model"

du -sh "$DEST" | sed 's/^/prepare_reference: .ref size /'
echo "prepare_reference: random shards are made where the benchmark runs: python3 bench/make_random_shards.py --out .ref/data/datasets/fineweb10B_sp8192"
