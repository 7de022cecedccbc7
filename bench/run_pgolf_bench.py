#!/usr/bin/env python3
"""Time pgolf's train stage with the record's config (config/challenge.yaml) on a GPU,
the counterpart of run_reference_bench.sh, and summarise it the same way (per phase: before and after
depth recurrence switches on).

  python3 bench/run_pgolf_bench.py --out OUTDIR/pgolf [--steps 64] [--nproc 1] [--profile 61:62] [--check]

Random sp8192 tokens from .ref/data/datasets/fineweb10B_sp8192 (make_random_shards.py makes them if
missing). World 1 runs 8 gradient-accumulation micro-batches of 48 x 2048 (= the record's 786,432
tokens per step), world N runs 8/N. The wall clock is taken out of the schedule (max_wallclock_seconds
huge), so the loop switches on at step steps/2 and the warmdown follows steps, as the reference does
with MAX_WALLCLOCK_SECONDS=0.
"""
import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from parse_reference_log import flops_per_token  # bench/ is on sys.path: python puts the script's folder there

from pgolf.config import load_config, load_schema, validate_config

ROOT = Path(__file__).resolve().parents[1]

STEP_RE = re.compile(r"^step (\d+)/\d+ loss (\S+) .* elapsed_s (\S+)$", re.M)
LOOP_RE = re.compile(r"depth recurrence on at step (\d+)")


def check(train_cfg: dict) -> None:
    """GPU correctness smoke: compiled == eager loss on the record model; batched NS == per-matrix NS."""
    import torch
    from pgolf.fastpath import autocast_ctx, configure_cuda
    from pgolf.model import GPT, ModelConfig
    from pgolf.muon import newton_schulz
    dev = torch.device("cuda")
    print("attention:", configure_cuda(dev, train_cfg["attention_backend"]), flush=True)
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_train_cfg(train_cfg, 8192)).to(dev)
    with torch.no_grad():
        for b in model.blocks:  # non-zero projections, so every block matters
            b.attn.proj.weight.normal_(0, 0.02)
            b.mlp.proj.weight.normal_(0, 0.02)
    ids = torch.randint(0, 8192, (2, 2048), device=dev)
    tgt = torch.randint(0, 8192, (2, 2048), device=dev)
    compiled = torch.compile(model, dynamic=False)
    for looping in (True,):  # the looped graph holds every technique; the plain one is compiled in training
        model.looping = looping
        from pgolf.layers import ATTENTION, set_attention_backend
        pinned = dict(ATTENTION)
        set_attention_backend(None, True)  # cuDNN has no fp32 kernel: the reference takes PyTorch's choice
        with torch.no_grad():
            ref = model.float().loss(ids, tgt).double()  # fp32 eager
        set_attention_backend(pinned["backends"], pinned["gqa_native"])
        with torch.no_grad():
            with autocast_ctx(dev):
                fast = compiled(ids, tgt).double()
        print(f"check looping={looping}: eager fp32 loss {ref.item():.5f} compiled bf16 {fast.item():.5f} "
              f"rel {abs(fast - ref).item() / ref.item():.2e}", flush=True)
        assert abs(fast - ref).item() / ref.item() < 1e-2
    g = torch.randn(4, 512, 2048, device=dev, dtype=torch.bfloat16)
    batched = newton_schulz(g)
    single = torch.stack([newton_schulz(g[i]) for i in range(4)])
    print(f"check batched NS vs per-matrix: max abs diff {(batched - single).abs().max().item():.2e}", flush=True)


def apply_sets(section: dict, pairs: list[str], name: str) -> None:
    """`--set key=yaml_value ...` overrides into config section `name`, then the section checked against
    the schema (a bad value is named here, not deep in a stage). YAML 1.1 reads bare on/off/yes/no as
    booleans: quote enum strings (`key='"on"'`), as the config files do."""
    for kv in pairs:
        k, _, v = kv.partition("=")
        section[k] = yaml.safe_load(v)
    if pairs:
        try:
            validate_config(section, load_schema()["properties"][name], where=f"{name} overrides {' '.join(pairs)}")
        except ValueError as e:
            raise SystemExit(str(e)) from None


def eval_section(cfg: dict, ablation: str | None = None) -> dict:
    """A config's eval section (load_config filled in the schema's defaults) with, if named, one ablation's
    eval.* overrides (`ttt` in config/challenge.yaml: the record's test-time training)."""
    section = dict(cfg["eval"])
    if ablation is not None:
        overrides = cfg["ablations"].get(ablation)
        if overrides is None:
            raise SystemExit(f"no ablation {ablation!r} in the config")
        section.update({k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("eval.")})
    return section


def link_shards(src: Path, split: str, dest: Path) -> Path:
    """dest/ with links to src's fineweb_{split}_*.bin: a stage sees only the split it should."""
    found = sorted(Path(src).glob(f"fineweb_{split}_*.bin"))
    if not found:
        raise SystemExit(f"{src}: no fineweb_{split}_*.bin")
    dest.mkdir(parents=True, exist_ok=True)
    for p in found:
        if not (dest / p.name).exists():
            os.symlink(p.resolve(), dest / p.name)
    return dest


def phases(text: str, batch_tokens: int, hp: dict, skip: int = 3, stop: int | None = None) -> dict:
    points = [(int(s), float(e)) for s, _, e in STEP_RE.findall(text)]
    m = LOOP_RE.search(text)
    loop_at = int(m.group(1)) if m else None
    last = stop or points[-1][0]
    out = {}
    spans = {"pre_loop": (1 + skip, loop_at if loop_at is not None else last, False)}
    if loop_at is not None:
        spans["looped"] = (loop_at + 1 + skip, last, True)
    for name, (lo, hi, looped) in spans.items():
        sel = [(s, e) for s, e in points if lo <= s <= hi]
        if len(sel) < 2:
            continue
        (s0, e0), (s1, e1) = sel[0], sel[-1]
        ms = (e1 - e0) / (s1 - s0) * 1e3
        tps = batch_tokens / ms * 1e3
        f = flops_per_token(hp, looped)
        ws = int(hp["world_size"])
        out[name] = {"from_step": s0, "to_step": s1, "ms_per_step": ms, "tokens_per_s": tps,
                     "tokens_per_s_per_gpu": tps / ws, "tflops_per_gpu": f * tps / ws / 1e12,
                     "mfu": f * tps / ws / 1e12 / 790.0}
    return {"loop_enabled_at_step": loop_at, "phases": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--config", default=str(ROOT / "config" / "challenge.yaml"))
    ap.add_argument("--data", default=str(ROOT / ".ref/data/datasets/fineweb10B_sp8192"))
    ap.add_argument("--tokenizer", default=str(ROOT / ".ref/data/tokenizers/fineweb_8192_bpe.model"))
    ap.add_argument("--profile", default=None, help="first:last step to profile (excluded from the phases)")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], help="train overrides key=yaml_value")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(a.config)["train"]  # the schema's defaults filled in
    cfg.update(nproc=a.nproc, device="cuda", grad_accum_steps=8 // a.nproc, max_steps=a.steps,
               max_wallclock_seconds=1e9, gptq_reserve_seconds=0.0, log_every=1 if a.steps <= 16 else 4,
               hessian_batches=8, compile_warmup_steps=3)
    apply_sets(cfg, a.set, "train")
    if a.check:
        check(cfg)
    if not list(Path(a.data).glob("fineweb_train_*.bin")):
        subprocess.run([sys.executable, str(ROOT / "bench/make_random_shards.py"), "--out", a.data,
                        "--train-tokens", "20000000"], check=True)
    train_dir = link_shards(Path(a.data), "train", out / "train_shards")  # the stage never sees val
    (out / "params.json").write_text(json.dumps(cfg, indent=1))
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)  # keep the caller's
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=pythonpath, TQDM_DISABLE="1")
    if a.profile:
        env["PGOLF_PROFILE_STEPS"] = a.profile
    launcher = [sys.executable] if a.nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                      f"--nproc_per_node={a.nproc}"]
    cmd = launcher + ["-m", "pgolf.train", "--config", str(out / "params.json"), "--train-dir", str(train_dir),
                      "--tokenizer", a.tokenizer, "--out-dir", str(out / "run"), "--seed", "1337"]
    with open(out / "pgolf.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            log.write(line)
            if not line.startswith("train:"):
                sys.stdout.write(line)
        rc = proc.wait()
    if rc != 0:
        print(f"pgolf train failed: exit {rc}")
        return rc
    text = (out / "pgolf.log").read_text()
    summary = json.loads((out / "run" / "train.json").read_text())
    hp = dict(cfg, world_size=summary["world_size"], num_loops=cfg["loop_repeats"] - 1,
              loop_start=cfg["loop_layers"][0] if cfg["loop_layers"] else 0,
              loop_end=cfg["loop_layers"][-1] if cfg["loop_layers"] else -1, train_seq_len=cfg["seq_len"])
    stop = int(a.profile.partition(":")[0]) - 1 if a.profile else None
    res = phases(text, cfg["batch_tokens"], hp, stop=stop)
    res.update(peak_mem_allocated_gib=summary["peak_memory_bytes"] / 2**30, attention=summary.get("attention"),
               compile_seconds=summary.get("compile_seconds"), hessian_seconds=summary["hessian_seconds"],
               final_train_loss=summary["final_train_loss"], world_size=summary["world_size"])
    (out / "pgolf.json").write_text(json.dumps(res, indent=2))
    for name, p in res["phases"].items():
        print(f"pgolf {name:8s} steps {p['from_step']}..{p['to_step']}: {p['ms_per_step']:.1f} ms/step "
              f"{p['tokens_per_s'] / 1e3:.0f}K tok/s ({p['tokens_per_s_per_gpu'] / 1e3:.0f}K/GPU) "
              f"{p['tflops_per_gpu']:.0f} TFLOP/s/GPU MFU {100 * p['mfu']:.1f}%")
    print(f"pgolf peak memory allocated {res['peak_mem_allocated_gib']:.1f} GiB; attention {res['attention']}; "
          f"compile warm-up {res['compile_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
