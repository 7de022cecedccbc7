#!/usr/bin/env python3
"""Time causal attention forward and forward + backward on the GPU for the record's shape (one
micro-batch: 48 × 2048 tokens, 8 query / 4 KV heads of 64), per SDPA backend, GQA handling and memory
layout, to pick what pgolf.layers.sdpa_causal should call.

  python3 bench/attention_variants.py [--batch 48] [--iters 20] [--json OUT]

Layouts: "bshd" = q/k/v are [batch, heads, seq, dim] views of [batch, seq, heads, dim] memory (what the
model's projections produce); "bhsd" = contiguous [batch, heads, seq, dim].
"""
import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from cuda_timing import time_ms

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def make(batch, heads, seq, dim, layout, gen):
    shape = (batch, seq, heads, dim) if layout == "bshd" else (batch, heads, seq, dim)
    t = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    t = t.transpose(1, 2) if layout == "bshd" else t
    return t.detach().requires_grad_(True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    b, t, hq, hkv, d = args.batch, args.seq, 8, 4, 64
    # Causal: half the score matrix. fwd 2 matmuls, bwd 5 (incl. recompute): 4·b·h·t²·d·(1/2) per matmul pair.
    fwd_flop = 4 * b * hq * t * t * d / 2
    rows = []
    for backend in ("cudnn", "flash", "efficient"):
        for gqa in ("native", "repeat"):
            for layout in ("bshd", "bhsd"):
                gen = torch.Generator(device="cuda").manual_seed(0)
                q = make(b, hq, t, d, layout, gen)
                k, v = make(b, hkv, t, d, layout, gen), make(b, hkv, t, d, layout, gen)
                grad = make(b, hq, t, d, layout, gen).detach()

                def fwd():
                    kk, vv = (k, v) if gqa == "native" else (k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
                    with sdpa_kernel([BACKENDS[backend]]):
                        return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa == "native")

                def fwd_bwd():
                    out = fwd()
                    torch.autograd.grad(out, (q, k, v), grad)
                try:
                    row = {"backend": backend, "gqa": gqa, "layout": layout,
                           "fwd_ms": time_ms(fwd, args.iters), "fwd_bwd_ms": time_ms(fwd_bwd, args.iters)}
                except Exception as exc:  # backend refuses this combination
                    print(f"{backend:9s} {gqa:6s} {layout}: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
                    continue
                row["fwd_tflops"] = fwd_flop / row["fwd_ms"] / 1e9
                row["bwd_tflops"] = 2.5 * fwd_flop / (row["fwd_bwd_ms"] - row["fwd_ms"]) / 1e9
                rows.append(row)
                print(f"{backend:9s} {gqa:6s} {layout}: fwd {row['fwd_ms']:.3f} ms ({row['fwd_tflops']:.0f} TFLOP/s)  "
                      f"fwd+bwd {row['fwd_bwd_ms']:.3f} ms (bwd {row['bwd_tflops']:.0f} TFLOP/s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "cudnn": torch.backends.cudnn.version(), "shape": [b, t, hq, hkv, d], "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
