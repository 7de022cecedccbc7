#!/usr/bin/env python3
"""GPU check and micro-benchmark of pgolf.fused_mlp (train.fused_mlp) on the record's MLP shape.

  python3 bench/fused_mlp_check.py [--json OUT.json]

Correctness: on fresh random bf16 inputs (every check draws new ones), the fused op's y and its gradients
(x, fc, proj) against an fp64 reference of the plain MLP on the same (upcast) inputs, as
‖out − ref‖ / ‖ref‖, next to the plain bf16 path's own error; the Triton kernel alone with NaN-poisoned
outputs (every element must be written), at the record's size and at an odd M (masks).
Timing (triton.testing.do_bench, median): one MLP call forward + backward at M = 48·2048, D = 512,
N = 2048: the plain MLP under torch.compile (what training runs now) vs the fused op.
"""
import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pgolf import fused_mlp as fm  # noqa: E402


def plain(x, wf, wp):
    return F.linear(F.leaky_relu(F.linear(x, wf), 0.5).square(), wp)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def inputs(M, D, N, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(M, D, device="cuda", generator=g).bfloat16()
    wf = (torch.randn(N, D, device="cuda", generator=g) / D ** 0.5).bfloat16()
    wp = (torch.randn(D, N, device="cuda", generator=g) * 0.02).bfloat16()
    gy = torch.randn(M, D, device="cuda", generator=g).bfloat16()
    return x, wf, wp, gy


def grads(fn, x, wf, wp, gy):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, wf, wp)]
    y = fn(*leaves)
    return [y.detach()] + list(torch.autograd.grad(y, leaves, gy.to(y.dtype)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    assert fm.HAVE_TRITON and torch.cuda.is_available(), "needs CUDA and Triton"
    res = {"device": torch.cuda.get_device_name(), "checks": [], "timing_ms": {}}
    ok = True
    D, N = 512, 2048
    for seed, M in ((1, 48 * 2048), (2, 48 * 2048), (3, 1000)):
        x, wf, wp, gy = inputs(M, D, N, seed)
        ref = grads(plain, x.double(), wf.double(), wp.double(), gy.double())
        fused = grads(lambda *t: fm.fused_mlp_fwd(*t)[0], x, wf, wp, gy)
        eager = grads(plain, x, wf, wp, gy)
        for name, f, e, r in zip(("y", "grad_x", "grad_fc", "grad_proj"), fused, eager, ref):
            row = {"M": M, "seed": seed, "what": name, "fused_rel": rel(f, r), "plain_bf16_rel": rel(e, r),
                   "finite": bool(torch.isfinite(f).all())}
            row["pass"] = row["finite"] and row["fused_rel"] < 1e-2
            ok &= row["pass"]
            res["checks"].append(row)
            print(f"check M={M} seed={seed} {name:9s} fused rel {row['fused_rel']:.2e}  plain bf16 rel "
                  f"{row['plain_bf16_rel']:.2e}  {'ok' if row['pass'] else 'FAIL'}", flush=True)
        # the kernel alone, outputs poisoned with NaN: every element written, epilogues right
        h = torch.full((M, N), float("nan"), device="cuda", dtype=torch.bfloat16)
        act = torch.full_like(h, float("nan"))
        fm.launch(x, wf.t(), h, act, backward=False)
        href = (x.double() @ wf.double().t())
        gh = torch.full_like(h, float("nan"))
        fm.launch(gy, wp, h, gh, backward=True)
        hd = h.double()
        ghref = (gy.double() @ wp.double()) * torch.where(hd > 0, 2 * hd, 0.5 * hd)
        f_h = torch.where(hd > 0, hd, 0.5 * hd)
        kr = {"h": rel(h, href), "act": rel(act, f_h.square()), "grad_h": rel(gh, ghref)}
        fin = all(bool(torch.isfinite(t).all()) for t in (h, act, gh))
        kpass = fin and max(kr.values()) < 1e-2
        ok &= kpass
        res["checks"].append({"M": M, "seed": seed, "what": "kernel_poisoned", **kr, "finite": fin, "pass": kpass})
        print(f"kernel M={M} poisoned outputs: all written {fin}; rel h {kr['h']:.2e} act {kr['act']:.2e} "
              f"grad_h {kr['grad_h']:.2e}  {'ok' if kpass else 'FAIL'}", flush=True)

    from triton.testing import do_bench
    M = 48 * 2048
    x, wf, wp, gy = inputs(M, D, N, 7)
    xs, wfs, wps = [t.detach().clone().requires_grad_(True) for t in (x, wf, wp)]
    compiled = torch.compile(plain, dynamic=False)

    def step(fn):
        def run():
            y = fn(xs, wfs, wps)
            torch.autograd.grad(y, (xs, wfs, wps), gy)
        return run

    fused_fn = lambda *t: fm.fused_mlp_fwd(*t)[0]  # noqa: E731
    for name, fn in (("plain_compiled", compiled), ("fused", fused_fn)):
        fwd = lambda: fn(xs, wfs, wps)  # noqa: E731
        step(fn)()  # compile / autotune
        torch.cuda.synchronize()
        res["timing_ms"][name] = {"fwd": do_bench(fwd, warmup=50, rep=300, return_mode="median"),
                                  "fwd_bwd": do_bench(step(fn), warmup=50, rep=300, return_mode="median")}
    mm = lambda: (x @ wf.t())  # noqa: E731  the bare fc GEMM on cuBLAS, for scale
    res["timing_ms"]["cublas_fc_gemm"] = {"fwd": do_bench(mm, warmup=50, rep=300, return_mode="median")}
    try:
        res["autotune"] = {str(k): str(v) for k, v in fm._mm_leaky2.cache.items()}
    except Exception:  # noqa: BLE001
        pass
    for k, v in res["timing_ms"].items():
        print(f"time {k:15s} " + "  ".join(f"{kk} {vv:.3f} ms" for kk, vv in v.items()), flush=True)
    print("autotune:", res.get("autotune"))
    res["pass"] = ok
    print("fused_mlp check:", "PASS" if ok else "FAIL", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
