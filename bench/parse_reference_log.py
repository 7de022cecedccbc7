#!/usr/bin/env python3
"""Step time, tokens/s, MFU and peak memory per phase (before / after depth recurrence)
from the stdout or logs/<RUN_ID>.txt of the record's train_gpt.py.

The record logs `step/iterations train_loss: L train_time: Mm tok/s: R` where R is the
cumulative rate since training started (compile warm-up and validation excluded), so
the cumulative training time at a logged step is step * train_batch_tokens / R; phase
step times are differences of that between two logged steps.  The loop phase starts
after the line `layer_loop:enabled step:K` (steps K+1.. run looped).

MFU counts 6 * (matrix params on the path) FLOPs per token plus causal attention
(6 * T * d_model per layer application), against a peak of 790 TFLOP/s (the bf16 matmul rate
measured on the H100s of docs/benchmarks.md).

  python3 bench/parse_reference_log.py ref.log [--skip 3] [--json out.json]
"""
import argparse
import json
import re
import sys

STEP_RE = re.compile(r"^(\d+)/(\d+) train_loss: (\S+) train_time: \S+ tok/s: (\d+)", re.M)
LOOP_RE = re.compile(r"layer_loop:enabled step:(\d+)")
HP_RE = re.compile(r"^\s+(\w+): (.+)$", re.M)
MEM_RE = re.compile(r"peak memory allocated: (\d+) MiB reserved: (\d+) MiB")


def flops_per_token(hp: dict, looped: bool) -> float:
    d = int(hp.get("model_dim", 512))
    heads = int(hp.get("num_heads", 8))
    kv = int(hp.get("num_kv_heads", 4))
    mlp = int(float(hp.get("mlp_mult", 4.0)) * d)
    vocab = int(hp.get("vocab_size", 8192))
    layers = int(hp.get("num_layers", 11))
    seq = int(hp.get("train_seq_len", 2048))
    kv_dim = kv * (d // heads)
    per_block = d * d + 2 * d * kv_dim + d * d + 2 * d * mlp
    apps = layers
    if looped:
        apps += int(hp.get("num_loops", 2)) * (int(hp.get("loop_end", 5)) - int(hp.get("loop_start", 4)) + 1)
    return 6.0 * (apps * per_block + vocab * d) + 6.0 * apps * seq * d


def phase(points, lo, hi, batch_tokens):
    """ms/step between the first logged step >= lo and the last <= hi."""
    sel = [(s, r) for s, r in points if lo <= s <= hi]
    if len(sel) < 2:
        return None
    (s0, r0), (s1, r1) = sel[0], sel[-1]
    t0, t1 = s0 * batch_tokens / r0, s1 * batch_tokens / r1
    ms = (t1 - t0) / (s1 - s0) * 1e3
    return {"from_step": s0, "to_step": s1, "ms_per_step": ms, "tokens_per_s": batch_tokens / ms * 1e3}


def parse(text: str, skip: int, batch_tokens=None, peak_tflops=790.0):
    hp = {k: v.strip() for k, v in HP_RE.findall(text.split("=" * 20)[1] if text.count("=" * 20) >= 1 else text)}
    if not hp:
        hp = {k: v.strip() for k, v in HP_RE.findall(text)}
    bt = batch_tokens or int(hp.get("train_batch_tokens", 786432))
    points = [(int(s), int(r)) for s, _, _, r in STEP_RE.findall(text)]
    if not points:
        raise SystemExit("no training step lines found")
    last = points[-1][0]
    m = LOOP_RE.search(text)
    loop_at = int(m.group(1)) if m else None
    out = {"train_batch_tokens": bt, "world_size": hp.get("world_size"), "grad_accum_steps": hp.get("grad_accum_steps"),
           "loop_enabled_at_step": loop_at, "last_step": last, "phases": {}}
    phases = {"pre_loop": (1 + skip, loop_at if loop_at is not None else last, False)}
    if loop_at is not None:
        phases["looped"] = (loop_at + 1 + skip, last, True)
    for name, (lo, hi, looped) in phases.items():
        p = phase(points, lo, hi, bt)
        if p is None:
            continue
        f = flops_per_token(hp, looped)
        p["model_flops_per_token"] = f
        ws = int(hp.get("world_size", 1))
        p["tokens_per_s_per_gpu"] = p["tokens_per_s"] / ws
        p["tflops_per_gpu"] = f * p["tokens_per_s_per_gpu"] / 1e12
        p["mfu"] = p["tflops_per_gpu"] / peak_tflops
        out["phases"][name] = p
    mm = MEM_RE.search(text)
    if mm:
        out["peak_mem_allocated_gib"] = int(mm.group(1)) / 1024
        out["peak_mem_reserved_gib"] = int(mm.group(2)) / 1024
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("--skip", type=int, default=3,
                    help="steps to skip at the start of each phase (first logged step >= phase start + skip is used)")
    ap.add_argument("--batch-tokens", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=790.0)
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args(argv)
    res = parse(open(a.log, encoding="utf-8", errors="replace").read(), a.skip, a.batch_tokens, a.peak_tflops)
    for name, p in res["phases"].items():
        print(f"reference {name:8s} steps {p['from_step']}..{p['to_step']}: {p['ms_per_step']:.1f} ms/step "
              f"{p['tokens_per_s'] / 1e3:.0f}K tok/s ({p['tokens_per_s_per_gpu'] / 1e3:.0f}K/GPU) "
              f"{p['tflops_per_gpu']:.0f} TFLOP/s/GPU MFU {100 * p['mfu']:.1f}%")
    if "peak_mem_allocated_gib" in res:
        print(f"reference peak memory allocated {res['peak_mem_allocated_gib']:.1f} GiB, "
              f"reserved {res['peak_mem_reserved_gib']:.1f} GiB")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
