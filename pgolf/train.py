"""Train stage: torchrun entry point. Train shards + tokenizer -> EMA model, GPTQ Hessians, train.log, train.json.

    python -m torch.distributed.run --standalone --nproc_per_node=N -m pgolf.train \
        --config params.json --train-dir DIR --tokenizer MODEL --out-dir DIR --seed S

Runs without torchrun too (world size 1). Every rank trains on its slice of each global batch; gradients
are averaged with one all_reduce; Muon steps the block matrices, Adam the embedding and the scalars.
The time budget covers training *and* Hessian collection (it reads training data), so training stops
early enough to leave room for it.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
import torch.distributed as dist
from tqdm import tqdm

from pgolf import io
from pgolf.hessians import collect_hessians
from pgolf.loader import DistributedTokenLoader
from pgolf.model import GPT, ModelConfig
from pgolf.muon import Muon

# The `train:` keys this module reads (the model keys are checked by ModelConfig.from_train_cfg).
TRAIN_KEYS = ("device", "batch_tokens", "grad_accum_steps", "max_steps", "max_wallclock_seconds", "warmup_steps",
              "warmdown_frac", "matrix_lr", "scalar_lr", "embed_lr", "muon_momentum", "weight_decay", "ema_decay",
              "hessian_batches", "log_every")
ADAM_BETAS = (0.9, 0.95)


# -----------------------------------------------------------------------------------------------
# Setup: processes, devices, seeds


def init_distributed(device_pref: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun joins the process group: nccl on GPU, gloo on CPU."""
    if device_pref not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device={device_pref!r}: expected auto, cpu or cuda")
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return rank, world_size, device


def seed_everything(seed: int) -> None:
    # Same seed on every rank: identical initial weights without a broadcast.
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def mean_over_ranks(values: list[float], device: torch.device, world_size: int) -> list[float]:
    """Average small host values over ranks, so every rank takes the same schedule and stop decisions."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(t)
        t /= world_size
    return t.tolist()


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# -----------------------------------------------------------------------------------------------
# Optimizers, schedule, EMA


def build_optimizers(model: GPT, cfg: dict, device: torch.device) -> list[torch.optim.Optimizer]:
    """Muon for the 2-D block matrices; Adam for the tied embedding and for norm gains / scalars."""
    matrices = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2]
    scalars = [p for n, p in model.named_parameters() if n != "tok_emb.weight" and p.ndim < 2]
    assert len(matrices) + len(scalars) + 1 == len(list(model.parameters())), "unassigned parameters"
    adam = torch.optim.Adam(
        [dict(params=[model.tok_emb.weight], lr=cfg["embed_lr"]), dict(params=scalars, lr=cfg["scalar_lr"])],
        betas=ADAM_BETAS, eps=1e-8, fused=device.type == "cuda")
    muon = Muon(matrices, lr=cfg["matrix_lr"], momentum=cfg["muon_momentum"], weight_decay=cfg["weight_decay"])
    optimizers = [adam, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers


def lr_scale(step: int, progress: float, warmup_steps: int, warmdown_frac: float) -> float:
    """Linear warmup over warmup_steps, flat, then linear decay to 0 over the last warmdown_frac of progress."""
    warmup = (step + 1) / warmup_steps if step < warmup_steps else 1.0
    warmdown = (1.0 - progress) / warmdown_frac if warmdown_frac > 0 and progress > 1 - warmdown_frac else 1.0
    return max(0.0, min(warmup, warmdown))


class EMA:
    """Exponential moving average of the weights (fp32); the saved model is this average."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            self.state[k].lerp_(v.float(), 1.0 - self.decay)


def allreduce_grads(model: torch.nn.Module, world_size: int) -> None:
    """Average gradients over ranks with one flat all_reduce."""
    if world_size == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


# -----------------------------------------------------------------------------------------------
# The training run


class RunLog:
    """train.log lines: printed as they come (rank 0), written atomically at the end."""

    def __init__(self, enabled: bool):
        self.enabled, self.lines = enabled, []

    def __call__(self, line: str) -> None:
        if self.enabled:
            self.lines.append(line)
            print(line, flush=True)


def train(cfg: dict, train_dir, tokenizer, out_dir, seed: int) -> dict:
    missing = [k for k in TRAIN_KEYS if k not in cfg]
    if missing:
        raise KeyError(f"train config is missing keys: {', '.join(missing)}")
    rank, world_size, device = init_distributed(cfg["device"])
    log = RunLog(rank == 0)
    seed_everything(seed)

    vocab_size = spm.SentencePieceProcessor(model_file=str(tokenizer)).get_piece_size()
    model_config = ModelConfig.from_train_cfg(cfg, vocab_size)
    model = GPT(model_config).to(device)
    optimizers = build_optimizers(model, cfg, device)
    ema = EMA(model, cfg["ema_decay"])
    loader = DistributedTokenLoader(train_dir, vocab_size, cfg["seq_len"], cfg["batch_tokens"],
                                    rank, world_size, device)
    num_params = sum(p.numel() for p in model.parameters())
    # Gradient accumulation splits each rank's sequences into micro-batches: same step, less activation memory.
    accum_steps = cfg["grad_accum_steps"]
    local_seqs = cfg["batch_tokens"] // world_size // cfg["seq_len"]
    if accum_steps < 1 or local_seqs % accum_steps:
        raise ValueError(f"train.grad_accum_steps={accum_steps} must divide the {local_seqs} sequences per rank "
                         f"(train.batch_tokens / world_size / train.seq_len)")

    log("# hyperparameters")
    run_info = dict(cfg, seed=seed, world_size=world_size, device=str(device), vocab_size=vocab_size,
                    num_params=num_params, train_dir=str(train_dir), tokenizer=str(tokenizer),
                    torch_version=torch.__version__)
    for key, value in run_info.items():
        log(f"{key}: {value}")
    log("# training")

    max_steps, budget_seconds = cfg["max_steps"], cfg["max_wallclock_seconds"]
    step, elapsed, reserve_seconds, loss_value, stopped_by = 0, 0.0, 0.0, float("nan"), "max_steps"
    last_log_step, last_log_elapsed = 0, 0.0
    bar = tqdm(total=max_steps, disable=rank != 0, file=sys.stderr, desc="train", mininterval=1.0)
    t0 = time.perf_counter()
    while step < max_steps:
        # Stop once the remaining time could not also cover the Hessian batches.
        if step > 0 and elapsed + reserve_seconds >= budget_seconds:
            stopped_by = "wallclock"
            break
        # Wall-clock aware progress: whichever budget (steps or seconds left for training) runs out first.
        progress = max(step / max_steps, elapsed / max(budget_seconds - reserve_seconds, 1e-9))
        scale = lr_scale(step, progress, cfg["warmup_steps"], cfg["warmdown_frac"])
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale

        inputs, targets = loader.next_batch()
        loss_sum = torch.zeros((), device=device)
        for micro_inputs, micro_targets in zip(inputs.chunk(accum_steps), targets.chunk(accum_steps)):
            loss = model.loss(micro_inputs, micro_targets) / accum_steps
            loss.backward()
            loss_sum += loss.detach()
        loss_value, elapsed = mean_over_ranks([loss_sum.item(), time.perf_counter() - t0], device, world_size)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"non-finite training loss {loss_value} at step {step + 1}: "
                                     f"lower the learning rates or check the data")
        allreduce_grads(model, world_size)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        ema.update(model)
        step += 1
        # A calibration batch is a forward pass only, so a mean training step over-estimates it: a safe margin.
        reserve_seconds = cfg["hessian_batches"] * elapsed / step
        bar.update(1)
        if step % cfg["log_every"] == 0 or step == max_steps:
            step_ms = 1000 * (elapsed - last_log_elapsed) / (step - last_log_step)
            log(f"step {step}/{max_steps} loss {loss_value:.4f} lr_scale {scale:.3f} step_ms {step_ms:.1f} "
                f"tokens_per_s {cfg['batch_tokens'] / (step_ms / 1000):.0f} elapsed_s {elapsed:.1f}")
            bar.set_postfix(loss=f"{loss_value:.3f}")
            last_log_step, last_log_elapsed = step, elapsed
    bar.close()
    train_seconds = elapsed
    log(f"stopped after {step} steps ({stopped_by}) in {train_seconds:.1f}s")

    # GPTQ calibration on the EMA weights: the model that will be quantized.
    model.load_state_dict(ema.state)
    t1 = time.perf_counter()
    hessians = collect_hessians(model, lambda: loader.next_batch()[0], cfg["hessian_batches"])
    hessian_seconds = time.perf_counter() - t1
    log(f"hessians: {len(hessians) - 1} matrices from {hessians['__num_tokens__']} tokens in "
        f"{hessian_seconds:.2f}s")

    peak = torch.tensor([peak_memory_bytes(device)], dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    summary = {
        "steps": step, "train_seconds": train_seconds, "step_ms": 1000 * train_seconds / step,
        "tokens_per_second": step * cfg["batch_tokens"] / train_seconds,
        "peak_memory_bytes": int(peak.item()), "world_size": world_size, "device": str(device),
        "final_train_loss": loss_value, "hessian_seconds": hessian_seconds, "stopped_by": stopped_by,
        "num_params": num_params, "seed": seed,
    }
    if rank == 0:
        write_outputs(Path(out_dir), model_config, ema.state, hessians, log, summary)
    return summary


def write_outputs(out_dir: Path, model_config: ModelConfig, state: dict, hessians: dict, log: RunLog,
                  summary: dict) -> None:
    """model.pt, hessians.pt, train.log, train.json: each written whole or not at all."""
    with io.atomic_path(out_dir / "model.pt") as tmp:
        torch.save({"model_config": model_config.to_dict(),
                    "state_dict": {k: v.detach().cpu() for k, v in state.items()}}, tmp)
    with io.atomic_path(out_dir / "hessians.pt") as tmp:
        torch.save(hessians, tmp)
    with io.atomic_path(out_dir / "train.log") as tmp:
        tmp.write_text("\n".join(log.lines) + "\n")
    io.write_json(out_dir / "train.json", summary)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pgolf.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="params.json: the train config section")
    parser.add_argument("--train-dir", required=True, help="directory of fineweb_train_*.bin shards")
    parser.add_argument("--tokenizer", required=True, help="SentencePiece .model (gives vocab_size)")
    parser.add_argument("--out-dir", required=True, help="gets model.pt, hessians.pt, train.log, train.json")
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        train(io.read_json(args.config), args.train_dir, args.tokenizer, args.out_dir, args.seed)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
