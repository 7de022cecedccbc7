#!/usr/bin/env python3
"""Time pgolf's GPTQ Hessian collection (pgolf.hessians.collect_hessians) at the record's config, as
train.py runs it after training: the challenge model (config/challenge.yaml `train:`), embedding in
bf16, bf16 autocast, eval mode, not compiled (train.py calls model.hidden_states eagerly), depth
recurrence on, one calibration batch = one training micro-batch of 48 x 2048 tokens (world 1 with 8
accumulation steps and world 8 with 1 both give 48 sequences per micro-batch per rank).

  python3 bench/time_hessians.py [--batches 64,16,8] [--json OUTDIR/hessians.json]

Random sp8192 ids made on the GPU (the weights and tokens do not change the time). One warm-up
collection (1 batch) first; each timing includes the GPU -> CPU copy of the Hessians, as in train.py.
Also times the same forward passes without hooks, so the hook (X·Xᵀ) cost shows separately.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from pgolf.config import load_config
from pgolf.fastpath import autocast_ctx, configure_cuda
from pgolf.hessians import NUM_TOKENS_KEY, collect_hessians
from pgolf.model import GPT, ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "config/challenge.yaml"))
    ap.add_argument("--batches", default="64,16,8", help="comma-separated batch counts to time")
    ap.add_argument("--seqs", type=int, default=48, help="sequences per micro-batch (48 = the record's)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    cfg = load_config(args.config)["train"]  # the schema's defaults filled in
    dev = torch.device("cuda")
    attention = configure_cuda(dev, cfg["attention_backend"])
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_train_cfg(cfg, args.vocab)).to(dev)
    if cfg["embed_bf16"]:
        model.tok_emb.weight.data = model.tok_emb.weight.data.to(torch.bfloat16)
    model.looping = bool(model.config.loops)
    seq_len = cfg["seq_len"]
    gen = torch.Generator(device=dev).manual_seed(1)

    def next_inputs() -> torch.Tensor:
        return torch.randint(0, args.vocab, (args.seqs, seq_len), device=dev, generator=gen)

    def timed(fn) -> float:
        torch.cuda.synchronize(dev)
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize(dev)
        return time.perf_counter() - t

    print(f"device {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, attention {attention}, "
          f"micro-batch {args.seqs} x {seq_len}, looping {model.looping}", flush=True)
    with autocast_ctx(dev):
        warm = timed(lambda: collect_hessians(model, next_inputs, 1))
        print(f"warm-up: 1 batch {warm:.2f}s", flush=True)
        rows = []
        for n in [int(b) for b in args.batches.split(",")]:
            out = {}
            secs = timed(lambda: out.update(collect_hessians(model, next_inputs, n)))
            model.eval()
            with torch.no_grad():
                fwd = timed(lambda: [model.hidden_states(next_inputs()) for _ in range(n)])
            model.train()
            rows.append({"batches": n, "hessian_seconds": secs, "per_batch_ms": 1000 * secs / n,
                         "forward_only_seconds": fwd, "tokens": out[NUM_TOKENS_KEY],
                         "matrices": len(out) - 1})
            print(f"{n} batches: collect {secs:.2f}s, forward only {fwd:.2f}s", flush=True)
    print(f"\npeak memory allocated {torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB")
    print("| batches | collect_hessians s | ms/batch | forward only s | tokens |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['batches']} | {r['hessian_seconds']:.2f} | {r['per_batch_ms']:.0f} | "
              f"{r['forward_only_seconds']:.2f} | {r['tokens']} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(dev), "attention": attention,
                                               "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
