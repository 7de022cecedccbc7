#!/usr/bin/env python3
"""GPU check and timing of train.fused_qk / train.fused_xsa (pgolf.attention_ops) at the training shape
(48 × 2048 tokens, 8 query / 4 KV heads of 64, RoPE on 16 dims). GPU only.

  python3 bench/attention_ops_check.py [--json OUT]

1. Each kernel against float64 autograd of pgolf.layers' plain code (bf16 inputs strided as the q/k/v
   GEMM leaves them): relative error beside that of the plain code run in bf16 and compiled.
2. Launch settings (tokens per program, warps) swept per kernel, forward + backward; the fastest is used
   for part 3 and written to the JSON (pgolf.attention_ops.KERNEL is set by hand from training-step
   timings, docs/records/2026-11-23_fused_attention_ops).
3. Forward + backward of each op against the plain code compiled by Inductor.
"""
import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from cuda_timing import time_ms  # bench/ is on sys.path: python puts the script's folder there

from pgolf import attention_ops
from pgolf.layers import Rotary, exclusive_self_attention

B, T, H, HKV, D, ROPE = 48, 2048, 8, 4, 64, 16


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def inputs(seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(B, T, (H + 2 * HKV) * D, device="cuda", generator=g).to(torch.bfloat16)
    q = qkv[..., :H * D].view(B, T, H, D)
    v = qkv[..., (H + HKV) * D:].view(B, T, HKV, D)
    y = torch.randn(B, H, T, D, device="cuda", generator=g).to(torch.bfloat16).transpose(1, 2)  # SDPA's layout
    gain = (torch.rand(H, device="cuda", generator=g) + 1).to(torch.bfloat16)
    return q, v, y, gain


ROT = None  # Rotary(16 dims) on the GPU, built in main


def plain_qk(q, gain):
    out = ROT(F.rms_norm(q.transpose(1, 2), (D,)))
    return (out * gain[None, :, None, None] if gain is not None else out).transpose(1, 2)


def fused_qk(q, gain):
    cos, sin = ROT.tables(T, q.dtype)
    return attention_ops.qk_norm_rope(q, gain, cos, sin)


def fwd_bwd(fn, *args):
    """fn's output and the gradients of its tensor inputs for a fixed incoming gradient (seeded per shape)."""
    leaves = [a.detach().requires_grad_() if a is not None else None for a in args]
    out = fn(*leaves)
    grad = torch.randn(out.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(9))
    out.backward(grad.to(out.dtype))
    return [out] + [a.grad for a in leaves if a is not None]


def check(report):
    q, v, y, gain = inputs()
    cases = {"qk": (plain_qk, fused_qk, (q, gain)), "xsa": (exclusive_self_attention, attention_ops.xsa, (y, v))}
    for name, (plain, fused, args) in cases.items():
        exact = fwd_bwd(plain, *[a.double() for a in args])
        ours = fwd_bwd(fused, *args)
        bf16 = fwd_bwd(torch.compile(plain, dynamic=False), *args)
        labels = ["out"] + [f"grad_{i}" for i in range(len(ours) - 1)]
        for lab, e, o, p in zip(labels, exact, ours, bf16):
            report[f"{name}_{lab}"] = dict(fused=rel(o, e), plain_bf16=rel(p, e))
            print(f"check {name} {lab}: fused rel {rel(o, e):.2e}, plain bf16 compiled rel {rel(p, e):.2e}", flush=True)


def sweep(report):
    q, v, y, gain = inputs(1)
    k = q[..., :HKV, :]
    runs = {"qk": lambda: (fwd_bwd(fused_qk, q, gain), fwd_bwd(fused_qk, k, None)),
            "xsa": lambda: fwd_bwd(attention_ops.xsa, y, v)}
    for name, fn in runs.items():
        times = []
        for tokens in (2, 4, 8, 16, 32):
            for warps in (1, 2, 4, 8):
                attention_ops.KERNEL.update({f"{name}_tokens": tokens, f"{name}_warps": warps})
                try:
                    ms = time_ms(fn, 10)
                except Exception as exc:  # too many registers for this setting
                    print(f"sweep {name} tokens {tokens} warps {warps}: failed: {type(exc).__name__}", flush=True)
                    continue
                times.append((ms, tokens, warps))
                print(f"sweep {name} tokens {tokens} warps {warps}: {ms:.3f} ms fwd+bwd", flush=True)
        ms, tokens, warps = min(times)
        attention_ops.KERNEL.update({f"{name}_tokens": tokens, f"{name}_warps": warps})
        report[f"sweep_{name}"] = [dict(ms=m, tokens=t, warps=w) for m, t, w in times]
        print(f"best {name}: tokens {tokens} warps {warps} {ms:.3f} ms", flush=True)
    report["kernel"] = dict(attention_ops.KERNEL)


def against_inductor(report):
    q, v, y, gain = inputs(2)
    k = q[..., :HKV, :]
    plain_qk_c, plain_xsa_c = torch.compile(plain_qk, dynamic=False), torch.compile(exclusive_self_attention,
                                                                                     dynamic=False)
    timings = {
        "qk plain (Inductor)": lambda: (fwd_bwd(plain_qk_c, q, gain), fwd_bwd(plain_qk_c, k, None)),
        "qk fused": lambda: (fwd_bwd(fused_qk, q, gain), fwd_bwd(fused_qk, k, None)),
        "xsa plain (Inductor)": lambda: fwd_bwd(plain_xsa_c, y, v),
        "xsa fused": lambda: fwd_bwd(attention_ops.xsa, y, v),
    }
    for name, fn in timings.items():
        ms = time_ms(fn, 10)
        report[name] = ms
        print(f"{name}: {ms:.3f} ms fwd+bwd per layer", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    args = ap.parse_args()
    global ROT
    ROT = Rotary(ROPE, 10000.0).cuda()
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for part in (check, sweep, against_inductor):
        part(report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
