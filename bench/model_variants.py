#!/usr/bin/env python3
"""Time one compiled training micro-batch of the whole challenge model (loss forward + backward, bf16
autocast, 48 × 2048 tokens) under alternative implementations and Inductor settings, print each one's
top kernels, and keep the Triton source of the kernels that touch the skip gates. GPU only.

  python3 bench/model_variants.py [--looping] [--iters 10] [--rows 12] [--variants V,V:KNOB+KNOB,...]
                                  [--kernels-out DIR] [--json OUT]

Variants of GPT.hidden_states' decoder half (docs/benchmarks.md §1b has all three measured):
  select    lerp(skip_weights[j] · skip, x, sigmoid(skip_gates[j])) per skip (pgolf.model before a703059)
  hoisted   sigmoid and casts of the whole [skips, dim] parameters once, rows selected per skip
  unbind    hoisted, rows taken with unbind (backward: one stack, not a zero-filled select per skip):
            pgolf.model's own GPT.hidden_states
and switches, joined to a name with "+" (e.g. unbind+fused_ce+fused_qk; alone they mean unbind):
  fused_ce   GPT.fused_loss on (train.fused_ce: pgolf.softcap_ce)
  fused_qk   q/k RMS norm + RoPE + gain as pgolf.attention_ops.qk_norm_rope (train.fused_qk)
  fused_xsa  XSA as pgolf.attention_ops.xsa (train.fused_xsa)
  select_mix Block's resid_mix rows taken by select (mix[0], mix[1]), as before unbind
`V:KNOB+KNOB` compiles variant V with those torch._inductor.config flags set True, `KNOB=0` sets one False
(e.g. unbind:combo_kernels, fused_ce:triton.mix_order_reduction=0).
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from cuda_timing import time_ms, top_kernels  # noqa: E402
from pgolf.fastpath import configure_cuda  # noqa: E402
from pgolf.layers import Block  # noqa: E402
from pgolf.model import GPT, ModelConfig  # noqa: E402

ORIGINAL = GPT.hidden_states
DECODERS = ("select", "hoisted", "unbind")
SWITCHES = ("fused_ce", "fused_qk", "fused_xsa", "select_mix")
BLOCK_FORWARD = Block.forward


def block_select_mix(self, x, x0):
    s = self.norm_scale
    mix = self.resid_mix.to(x.dtype)
    x = mix[0] * x + mix[1] * x0
    x = x + self.attn_scale.to(x.dtype) * self.attn(self.attn_norm(x) * s)
    return x + self.mlp_scale.to(x.dtype) * self.mlp(self.mlp_norm(x) * s)


def decoder_variant(how):
    def hidden_states(self, input_ids):
        x = self.tok_emb(input_ids).to(torch.bfloat16)
        if self.config.embed_norm:
            x = F.rms_norm(x, (x.size(-1),))
        x0 = x
        order = self.config.schedule(self.looping)
        half = len(order) // 2
        skips = []
        for i in order[:half]:
            x = self.blocks[i](x, x0)
            skips.append(x)
        if how == "select":
            gates = [torch.sigmoid(self.skip_gates[j]).to(x.dtype) for j in range(len(skips))]
            weights = [self.skip_weights[j].to(x.dtype) for j in range(len(skips))]
        else:
            gates, weights = torch.sigmoid(self.skip_gates).to(x.dtype), self.skip_weights.to(x.dtype)
        for j, i in enumerate(order[half:]):
            if skips:
                x = torch.lerp(weights[j] * skips.pop(), x, gates[j])
            x = self.blocks[i](x, x0)
        return self.final_norm(x)
    return hidden_states


def run(spec, cfg, args):
    name, _, knobs = spec.partition(":")
    parts = name.split("+")
    unknown = set(parts) - set(DECODERS) - set(SWITCHES)
    if unknown:
        raise ValueError(f"unknown variant parts {sorted(unknown)}")
    decoder = next((p for p in parts if p in DECODERS), "unbind")
    GPT.hidden_states = ORIGINAL if decoder == "unbind" else decoder_variant(decoder)
    Block.forward = block_select_mix if "select_mix" in parts else BLOCK_FORWARD
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(cfg).cuda()
    model.fused_loss = "fused_ce" in parts
    for block in model.blocks:
        block.attn.fused_qk, block.attn.fused_xsa = "fused_qk" in parts, "fused_xsa" in parts
    model.tok_emb.weight.data = model.tok_emb.weight.data.to(torch.bfloat16)
    model.looping = args.looping
    with torch.no_grad():
        for b in model.blocks:
            b.attn.proj.weight.normal_(0, 0.02)
            b.mlp.proj.weight.normal_(0, 0.02)
        model.skip_gates.normal_(0, 0.5)
    step = torch.compile(model, dynamic=False)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, cfg.seq_len), device="cuda")
    tgt = torch.randint(0, cfg.vocab_size, (args.batch, cfg.seq_len), device="cuda")

    def fwd_bwd():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step(ids, tgt)
        loss.backward()
        return loss

    t = time.perf_counter()
    flags = dict((k.partition("=")[0], k.partition("=")[2] != "0") for k in knobs.split("+") if k)
    with torch._inductor.config.patch(flags):
        loss = fwd_bwd().item()  # compiles
    compile_s = time.perf_counter() - t
    ms = time_ms(fwd_bwd, args.iters, warmup=2)
    print(f"=== {spec}: {ms:.2f} ms per micro-batch (loss {loss:.5f}, gate grad sum "
          f"{model.skip_gates.grad.double().sum().item():.6e}, compiled in {compile_s:.0f} s)", flush=True)
    print(top_kernels(fwd_bwd, rows=args.rows), flush=True)
    model.zero_grad(set_to_none=True)
    return ms


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--looping", action="store_true")
    ap.add_argument("--rows", type=int, default=12, help="kernels listed per variant")
    ap.add_argument("--variants", default="select,hoisted,unbind")
    ap.add_argument("--ce-kernel", help="JSON file whose 'kernel' → 'settings' set pgolf.softcap_ce.KERNEL "
                    "(bench/softcap_ce_check.py --json writes one)")
    ap.add_argument("--attn-kernel", help="JSON file whose 'kernel' sets pgolf.attention_ops.KERNEL "
                    "(bench/attention_ops_check.py --json writes one)")
    ap.add_argument("--kernels-out")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.ce_kernel:
        from pgolf import softcap_ce
        softcap_ce.KERNEL.update(json.loads(Path(args.ce_kernel).read_text())["kernel"]["settings"])
        print("softcap_ce kernel:", softcap_ce.KERNEL, flush=True)
    if args.attn_kernel:
        from pgolf import attention_ops
        attention_ops.KERNEL.update(json.loads(Path(args.attn_kernel).read_text())["kernel"])
        print("attention_ops kernels:", attention_ops.KERNEL, flush=True)
    train_cfg = yaml.safe_load((ROOT / "config" / "challenge.yaml").read_text())["train"]
    cfg = ModelConfig.from_train_cfg(train_cfg, 8192)
    print("attention:", configure_cuda(torch.device("cuda"), "auto"), flush=True)
    results = {}
    for v in args.variants.split(","):
        try:
            results[v] = run(v, cfg, args)
        except Exception as exc:  # an unknown Inductor flag, a failed compile: report it, go on
            print(f"=== {v}: failed: {type(exc).__name__}: {str(exc)[:500]}", flush=True)
            results[v] = None
        if args.json:  # after each variant: a run cut by its time limit keeps what it measured
            Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                                   "looping": args.looping, "ms_per_micro_batch": results}, indent=1))
    if args.kernels_out:  # Triton sources that mention sigmoid: the skip gates' kernels
        cache = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", "/tmp"))
        out = Path(args.kernels_out)
        out.mkdir(parents=True, exist_ok=True)
        for p in cache.rglob("*.py"):
            text = p.read_text(errors="ignore")
            if "@triton.jit" in text and "sigmoid" in text and "tl.sum" in text:
                shutil.copy(p, out / p.name)


if __name__ == "__main__":
    main()
