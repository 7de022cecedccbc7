#!/usr/bin/env python3
"""Time one compiled block of the challenge model (forward + backward, bf16 autocast, one micro-batch of
48 × 2048 tokens) under alternative implementations of the attention's input projections, to decide which
one pgolf.layers keeps. GPU only.

  python3 bench/block_variants.py [--batch 48] [--iters 20] [--profile] [--json OUT]

Variants (CausalSelfAttention.forward up to the attention call):
  separate     q, k, v as three Linear calls
  fused        one GEMM on the concatenated weights, q/k/v as views of its output (pgolf.layers today)
  fused_vcopy  fused, with v made contiguous before attention
  fused_qk     one GEMM for q and k, v its own Linear
"""
import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from cuda_timing import time_ms, top_kernels  # noqa: E402
from pgolf import layers  # noqa: E402
from pgolf.fastpath import configure_cuda  # noqa: E402
from pgolf.layers import Block, exclusive_self_attention, sdpa_causal  # noqa: E402
from pgolf.model import ModelConfig  # noqa: E402


def projections(self, x, variant):
    b, t, _ = x.shape
    if variant == "separate":
        q, k, v = self.q(x), self.k(x), self.v(x)
    elif variant == "fused_qk":
        qk = F.linear(x, torch.cat((self.q.weight, self.k.weight)))
        q, k = qk.split((self.q.out_features, self.k.out_features), -1)
        v = self.v(x)
    else:
        w = torch.cat((self.q.weight, self.k.weight, self.v.weight))
        q, k, v = F.linear(x, w).split((self.q.out_features, self.k.out_features, self.v.out_features), -1)
        if variant == "fused_vcopy":
            v = v.contiguous()
    return (q.reshape(b, t, self.num_heads, self.head_dim).transpose(1, 2),
            k.reshape(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2),
            v.reshape(b, t, self.num_kv_heads, self.head_dim))


def make_forward(variant):
    def forward(self, x):
        b, t, dim = x.shape
        q, k, v = projections(self, x, variant)
        q = self.rotary(F.rms_norm(q, (self.head_dim,)))
        k = self.rotary(F.rms_norm(k, (self.head_dim,)))
        if self.q_gain is not None:
            q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        y = sdpa_causal(q, k, v.transpose(1, 2)).transpose(1, 2)
        if self.xsa:
            y = exclusive_self_attention(y, v)
        return self.proj(y.reshape(b, t, dim))
    return forward


def time_variant(variant, cfg, args):
    layers.CausalSelfAttention.forward = make_forward(variant)
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = Block(cfg, 3).cuda()
    with torch.no_grad():
        block.attn.proj.weight.normal_(0, 0.02)
        block.mlp.proj.weight.normal_(0, 0.02)
    step = torch.compile(lambda x, x0: block(x, x0), dynamic=False)
    x = torch.randn(args.batch, cfg.seq_len, cfg.model_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    x0 = torch.randn_like(x)
    grad = torch.randn_like(x)

    def fwd_bwd():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = step(x, x0)
        out.backward(grad)

    ms = time_ms(fwd_bwd, args.iters)
    print(f"{variant:12s} fwd+bwd {ms:.3f} ms per block call", flush=True)
    if args.profile:
        print(top_kernels(fwd_bwd, calls=2))
    return ms


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--variants", default="separate,fused,fused_vcopy,fused_qk")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    train_cfg = yaml.safe_load((ROOT / "config" / "challenge.yaml").read_text())["train"]
    cfg = ModelConfig.from_train_cfg(train_cfg, 8192)
    print("attention:", configure_cuda(torch.device("cuda"), train_cfg.get("attention_backend", "auto")))
    results = {v: time_variant(v, cfg, args) for v in args.variants.split(",")}
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                               "batch": args.batch, "ms_per_block_call": results}, indent=1))


if __name__ == "__main__":
    main()
