#!/usr/bin/env python3
"""GPU check and timing of train.fused_ce (pgolf.softcap_ce) at the training shape. GPU only.

  python3 bench/softcap_ce_check.py [--rows 98304] [--json OUT] [--no-sweep]

0. The kernel's launch settings swept on [rows, 8192] bf16 logits; the fastest is used below
   (--no-sweep: softcap_ce.KERNEL's as they are).
1. The Triton kernel against a float64 reference (4,096 rows of bf16 logits, vocab 8,192, some saturating
   the softcap): relative error of the per-row losses and of d loss / d logits, beside the error of the
   bf16-rounded reference itself.
2. One micro-batch of the head and loss (hidden [rows, 512] bf16, tied weight [8192, 512] bf16), forward
   + backward, both compiled: the plain path of GPT.loss (logits → float32 → softcap → cross-entropy,
   backward by autograd) against head_loss_rows; and the kernel alone.
"""
import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from cuda_timing import time_ms, top_kernels  # bench/ is on sys.path: python puts the script's folder there

from pgolf import softcap_ce
from pgolf.softcap_ce import _rows_triton, head_loss_rows

CAP, VOCAB, DIM = 30.0, 8192, 512


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def sweep_kernel(rows):
    """Kernel alone on [rows, 8192] bf16 logits under each launch setting; sets softcap_ce.KERNEL to the best."""
    g = torch.Generator(device="cuda").manual_seed(2)
    logits = (torch.randn(rows, VOCAB, device="cuda", generator=g) * 10).to(torch.bfloat16)
    targets = torch.randint(0, VOCAB, (rows,), device="cuda", generator=g)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    settings = [dict(num_warps=w, programs_per_sm=0, stages=1) for w in (4, 8, 16, 32)]
    settings += [dict(num_warps=w, programs_per_sm=p, stages=st) for w in (8, 16) for p in (1, 2, 4) for st in (1, 2, 3)]
    times = []
    for k in settings:
        try:
            ms = time_ms(lambda: _rows_triton(logits, targets, CAP, k["num_warps"], k["programs_per_sm"] * sms or None,
                                              k["stages"]), 20)
        except Exception as exc:  # e.g. too many registers or shared memory for this setting
            print(f"kernel {k}: failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            continue
        gbps = 2 * logits.numel() * logits.element_size() / ms / 1e6
        print(f"kernel {k}: {ms:.3f} ms ({gbps:.0f} GB/s)", flush=True)
        times.append((ms, k))
    best = min(times, key=lambda t: t[0])
    softcap_ce.KERNEL.update(best[1])
    print(f"best: {best[1]} {best[0]:.3f} ms", flush=True)
    return [{"ms": ms, **k} for ms, k in times]


def check_kernel():
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(4096, VOCAB, device="cuda", generator=g) * 25).to(torch.bfloat16)
    targets = torch.randint(0, VOCAB, (4096,), device="cuda", generator=g)
    x = logits.double().requires_grad_(True)
    ref = F.cross_entropy(CAP * torch.tanh(x / CAP), targets, reduction="none")
    ref.sum().backward()
    loss, grad = softcap_ce.softcap_ce_rows(logits, targets, CAP)  # with softcap_ce.KERNEL's settings
    out = {"settings": dict(softcap_ce.KERNEL), "loss_rel": rel(loss, ref.detach()), "grad_rel": rel(grad, x.grad),
           "grad_rel_of_bf16_rounded_reference": rel(x.grad.to(torch.bfloat16), x.grad)}
    print("kernel vs float64:", out, flush=True)
    return out


def plain(hidden, weight, targets):
    logits = (hidden @ weight.t()).float()
    return F.cross_entropy(CAP * torch.tanh(logits / CAP), targets)


def fused(hidden, weight, targets):
    return head_loss_rows(hidden, weight, targets, CAP).mean()


def time_head(rows):
    g = torch.Generator(device="cuda").manual_seed(1)
    hidden = torch.randn(rows, DIM, device="cuda", generator=g).to(torch.bfloat16).requires_grad_(True)
    weight = (torch.randn(VOCAB, DIM, device="cuda", generator=g) * 0.05).to(torch.bfloat16).requires_grad_(True)
    targets = torch.randint(0, VOCAB, (rows,), device="cuda", generator=g)
    out, grads = {}, {}
    for name, fn in (("plain", plain), ("fused", fused)):
        step = torch.compile(fn, dynamic=False)

        def fwd_bwd():
            hidden.grad = weight.grad = None
            loss = step(hidden, weight, targets)
            loss.backward()
            return loss
        loss = fwd_bwd().item()
        grads[name] = (hidden.grad.clone(), weight.grad.clone())
        out[name] = {"ms": time_ms(fwd_bwd, 20), "loss": loss}
        print(f"=== head + loss, {name}: {out[name]['ms']:.3f} ms fwd+bwd (loss {loss:.6f})", flush=True)
        print(top_kernels(fwd_bwd, rows=8), flush=True)
    out["grad_hidden_rel"] = rel(grads["fused"][0], grads["plain"][0])
    out["grad_weight_rel"] = rel(grads["fused"][1], grads["plain"][1])
    logits = (hidden @ weight.t()).detach()
    out["kernel_ms"] = time_ms(lambda: softcap_ce.softcap_ce_rows(logits, targets, CAP), 20)
    print("fused vs plain gradients:", out["grad_hidden_rel"], out["grad_weight_rel"],
          f"kernel alone {out['kernel_ms']:.3f} ms", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=48 * 2048)
    ap.add_argument("--json")
    ap.add_argument("--no-sweep", action="store_true", help="keep softcap_ce.KERNEL's launch settings")
    a = ap.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    result["sweep"] = [] if a.no_sweep else sweep_kernel(a.rows)
    result["kernel"] = check_kernel()
    result["head"] = time_head(a.rows)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
