#!/usr/bin/env python3
"""Time the eval stage on the challenge model: sliding-window val_bpb of a random-weight model, 1 or N ranks.

    python3 bench/time_eval.py --out /tmp/te --nproc 1 [--val-tokens 4000000] [--device cuda]
                               [--tokenizer .ref/data/tokenizers/fineweb_8192_bpe.model] [--set key=yaml ...]

Random weights and random sp8192 ids: the scores mean nothing, the time is the eval stage's own
(pgolf.launch.run_eval: in-process for 1 rank, torchrun for more). Prints eval seconds, scored tokens
per second and the projection to the challenge's 40,540,160 validation tokens on that many ranks, which
must stay under the 600 s eval budget. Writes OUT/eval.json. The eval section is challenge.yaml's
(`eval.compile: true`; `--eval-set compile=false` times the eager forward). `--set` overrides train keys (a tiny model
for a CPU smoke run: `--device cpu --set num_layers=2 loop_layers=[1] model_dim=32 num_heads=2 num_kv_heads=1
--eval-set seq_len=128 stride=64`).
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from run_pgolf_bench import apply_sets  # bench/ is on sys.path: python puts the script's folder there

from pgolf.config import load_config

ROOT = Path(__file__).resolve().parents[1]

CHALLENGE_VAL_TOKENS = 40_540_160


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--val-tokens", type=int, default=4_000_000)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokenizer", default=str(ROOT / ".ref" / "data" / "tokenizers" / "fineweb_8192_bpe.model"))
    ap.add_argument("--config", default=str(ROOT / "config" / "challenge.yaml"))
    ap.add_argument("--set", nargs="*", default=[], help="train overrides key=yaml_value")
    ap.add_argument("--eval-set", nargs="*", default=[], help="eval overrides key=yaml_value")
    a = ap.parse_args()
    from pgolf.launch import run_eval
    from pgolf.model import GPT, ModelConfig
    from pgolf.shard_format import write_shard
    import sentencepiece as spm

    out = Path(a.out)
    (out / "val").mkdir(parents=True, exist_ok=True)
    cfg = load_config(a.config)  # the schema's defaults filled in
    apply_sets(cfg["train"], a.set)
    apply_sets(cfg["eval"], a.eval_set)
    vocab = spm.SentencePieceProcessor(model_file=a.tokenizer).get_piece_size()
    torch.manual_seed(0)
    config = ModelConfig.from_train_cfg(cfg["train"], vocab)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    torch.save({"model_config": config.to_dict(), "state_dict": model.state_dict()}, out / "model.pt")
    ids = np.random.default_rng(0).integers(4, vocab, a.val_tokens + 1).astype(np.uint16)
    write_shard(out / "val" / "fineweb_val_000000.bin", ids)
    run_eval("prequant", out / "model.pt", out / "val", a.tokenizer, cfg["eval"], a.device, out / "eval.json",
             out / "eval.log", nproc=a.nproc, threads=a.nproc)
    r = json.loads((out / "eval.json").read_text())
    rate = r["scored_tokens"] / r["eval_seconds"]
    print(f"eval {a.nproc} rank(s) on {r['device']}: {r['scored_tokens']:,} tokens (seq {r['seq_len']}, stride "
          f"{r['stride']}) in {r['eval_seconds']:.1f} s = {rate:,.0f} tokens/s; the challenge's "
          f"{CHALLENGE_VAL_TOKENS:,} tokens: {CHALLENGE_VAL_TOKENS / rate:.0f} s on {r['world_size']} rank(s)",
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
