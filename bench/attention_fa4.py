#!/usr/bin/env python3
"""FlashAttention 4 (pgolf.flash4, `pip install '.[fa4]'`) against cuDNN SDPA at the record's attention
shape (one micro-batch: 48 x 2048 tokens, 8 query / 4 KV heads of 64, causal), forward and forward +
backward, and each one's largest error against float32 autograd (batch 2).

  python3 bench/attention_fa4.py [--batch 48] [--seq 2048] [--iters 20] [--json FILE]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from cuda_timing import time_ms
from pgolf import flash4


def cudnn_attn(q, k, v):
    """q [b, t, hq, d], k/v [b, t, hkv, d] -> [b, t, hq, d], the model's layout."""
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True, enable_gqa=True)
    return o.transpose(1, 2)


def reference(q, k, v):
    rep = q.shape[2] // k.shape[2]
    qf, kf, vf = (x.float().transpose(1, 2) for x in (q, k, v))
    kf, vf = kf.repeat_interleave(rep, 1), vf.repeat_interleave(rep, 1)
    return F.scaled_dot_product_attention(qf, kf, vf, is_causal=True).transpose(1, 2)


def inputs(b, t, hq, hkv, d, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    def make(heads):
        return torch.randn(b, t, heads, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_(True)
    q, k, v = make(hq), make(hkv), make(hkv)
    grad = torch.randn(b, t, hq, d, device="cuda", dtype=torch.bfloat16, generator=g)
    return q, k, v, grad


def errors(fn, b, t, hq, hkv, d):
    """Max abs error of output and input gradients against float32 autograd."""
    q, k, v, grad = inputs(b, t, hq, hkv, d, seed=1)
    out = fn(q, k, v)
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), grad)
    qf, kf, vf = (x.detach().float().requires_grad_(True) for x in (q, k, v))
    ref = reference(qf, kf, vf)
    rq, rk, rv = torch.autograd.grad(ref, (qf, kf, vf), grad.float())
    def err(a, r):
        return (a.float() - r).abs().max().item()
    return {"out": err(out, ref), "dq": err(gq, rq), "dk": err(gk, rk), "dv": err(gv, rv)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json")
    a = ap.parse_args()
    b, t, hq, hkv, d = a.batch, a.seq, 8, 4, 64
    fwd_flop = 4 * b * hq * t * t * d / 2  # causal: half the score matrix
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "cudnn": torch.backends.cudnn.version(), "shape": [b, t, hq, hkv, d], "rows": {}}
    for name, fn in (("cudnn", cudnn_attn), ("fa4", flash4.attention)):
        try:
            t0 = time.perf_counter()
            q, k, v, grad = inputs(b, t, hq, hkv, d)
            o = fn(q, k, v)
            torch.autograd.grad(o, (q, k, v), grad)
            torch.cuda.synchronize()
            first_s = time.perf_counter() - t0
            row = {"first_call_s": first_s, "fwd_ms": time_ms(lambda: fn(q, k, v), a.iters),
                   "fwd_bwd_ms": time_ms(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad), a.iters)}
            row["fwd_tflops"] = fwd_flop / row["fwd_ms"] / 1e9
            row["bwd_tflops"] = 2.5 * fwd_flop / (row["fwd_bwd_ms"] - row["fwd_ms"]) / 1e9
            row["max_abs_err_vs_fp32"] = errors(fn, 2, t, hq, hkv, d)
        except Exception as exc:
            row = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
        result["rows"][name] = row
        print(name, json.dumps(row), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
