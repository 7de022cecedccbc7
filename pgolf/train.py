"""Train stage: torchrun entry point. Train shards + tokenizer -> EMA model, GPTQ Hessians, train.log, train.json.

    python -m torch.distributed.run --standalone --nproc_per_node=N -m pgolf.train \
        --config params.json --train-dir DIR --tokenizer MODEL --out-dir DIR --seed S

Runs without torchrun too (world size 1). Every rank trains on its slice of each global batch; DDP
averages gradients, bucket by bucket while backward still runs (on the last micro-batch only); Muon
steps the block matrices, AdamW the embedding and the scalars. The time budget covers training *and*
Hessian collection (it reads training data), so training stops early enough to leave room for it.

GPU path (pgolf.fastpath): bf16 autocast, torch.compile of the model and of Muon's Newton–Schulz,
cuDNN SDPA, a pinned-memory loader, fused AdamW, and no host-device sync except every
`sync_every_steps` steps and at log steps: the wall-clock schedule between syncs is extrapolated
from the last agreed time, identically on every rank.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import random
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import sentencepiece as spm
import torch
import torch.distributed as dist
from tqdm import tqdm

from pgolf import io
from pgolf.abort import abort_reason
from pgolf.consistency import batch_split_errors
from pgolf.distributed import init_distributed
from pgolf.fastpath import StepProfiler, autocast_ctx, configure_cuda, maybe_compile
from pgolf.hessians import collect_hessians
from pgolf.loader import DistributedTokenLoader
from pgolf.model import GPT, ModelConfig
from pgolf.optim import EMA, build_optimizers, lr_scale, muon_momentum, set_schedules

# The `train:` keys this module reads besides the model's (ModelConfig.from_train_cfg takes those). The
# workflow hands over the whole section with config/schema.yaml's defaults filled in, and the schema
# documents each key; a direct caller fills them with pgolf.config.section_defaults("train").
TRAIN_KEYS = ("device", "batch_tokens", "grad_accum_steps", "max_steps", "max_wallclock_seconds", "warmup_steps",
              "warmdown_frac", "matrix_lr", "scalar_lr", "embed_lr", "muon_momentum", "weight_decay", "ema_decay",
              "hessian_batches", "log_every", "compile", "compile_warmup_steps", "attention_backend", "fused_ce",
              "fused_qk", "fused_xsa", "data_order", "sync_every_steps", "embed_bf16", "loop_start_frac",
              "muon_row_norm", "muon_momentum_warmup_start", "muon_momentum_warmup_steps", "muon_ns_steps",
              "embed_weight_decay", "scalar_weight_decay", "grad_clip_norm", "gptq_reserve_seconds")


# -----------------------------------------------------------------------------------------------
# Setup: processes, devices, seeds


def seed_everything(seed: int) -> None:
    # Same seed on every rank: identical initial weights without a broadcast.
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


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


class Clock:
    """Training time agreed by all ranks, measured only at sync points (a device sync + one tiny
    all_reduce) and extrapolated in between from the last measured step time, the same way on every
    rank, so LR, loop switch and stop decisions never diverge between ranks."""

    def __init__(self, device: torch.device, world_size: int):
        self.device, self.world_size = device, world_size
        self.t0 = time.perf_counter()
        self.elapsed, self.at_step, self.step_seconds = 0.0, 0, 0.0

    def sync(self, step: int) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter() - self.t0
        if self.world_size > 1:
            t = torch.tensor([now], dtype=torch.float64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            now = float(t.item())
        if step > self.at_step:
            self.step_seconds = (now - self.elapsed) / (step - self.at_step)
        self.elapsed, self.at_step = now, step
        return now

    def estimate(self, step: int) -> float:
        return self.elapsed + (step - self.at_step) * self.step_seconds


@dataclass
class Trainer:
    """What one optimizer step touches."""
    model: GPT
    ddp: torch.nn.Module      # the model itself, or its DistributedDataParallel wrapper on several ranks
    forward: Callable         # ddp, compiled on the GPU path
    optimizers: list
    device: torch.device
    accum_steps: int          # micro-batches per step
    grad_clip_norm: float     # 0: off


@dataclass
class Run:
    """One training process: its config, place among the ranks, model and log."""
    cfg: dict
    rank: int
    world_size: int
    device: torch.device
    train_dir: Path
    seed: int
    vocab_size: int
    model_config: ModelConfig
    num_params: int
    attention: str
    trainer: Trainer
    log: RunLog

    @property
    def model(self) -> GPT:
        return self.trainer.model


@dataclass
class LoopResult:
    steps: int
    train_seconds: float
    final_train_loss: float   # mean over ranks, nats per token
    stopped_by: str           # max_steps | wallclock | abort
    loop_start_step: int | None
    abort_reason: str | None = None


def check_train_keys(cfg: dict) -> dict:
    """The `train:` section, refused with the missing keys named when it lacks any this module reads."""
    missing = [k for k in TRAIN_KEYS if k not in cfg]
    if missing:
        raise KeyError(f"train config is missing keys: {', '.join(missing)} (config/schema.yaml has their defaults)")
    return cfg


def micro_batches(cfg: dict, world_size: int) -> int:
    """Gradient accumulation splits each rank's sequences into micro-batches: same step, less activation memory."""
    errors = batch_split_errors(cfg["batch_tokens"], cfg["seq_len"], world_size, cfg["grad_accum_steps"])
    if errors:
        raise ValueError(errors[0])
    return cfg["grad_accum_steps"]


def build_train_model(model_config: ModelConfig, cfg: dict, device: torch.device) -> GPT:
    model = GPT(model_config).to(device)
    model.fused_loss = bool(cfg["fused_ce"])
    for block in model.blocks:
        block.attn.fused_qk, block.attn.fused_xsa = bool(cfg["fused_qk"]), bool(cfg["fused_xsa"])
    if cfg["embed_bf16"]:
        model.tok_emb.weight.data = model.tok_emb.weight.data.to(torch.bfloat16)
    return model


def set_up(cfg: dict, train_dir, tokenizer, seed: int) -> Run:
    """Process group, device, seeds, model, optimizers, DDP and compile wrappers."""
    rank, world_size, device = init_distributed(cfg["device"])
    attention = configure_cuda(device, cfg["attention_backend"]) if device.type == "cuda" else "cpu-default"
    seed_everything(seed)
    vocab_size = spm.SentencePieceProcessor(model_file=str(tokenizer)).get_piece_size()
    model_config = ModelConfig.from_train_cfg(cfg, vocab_size)
    model = build_train_model(model_config, cfg, device)
    optimizers = build_optimizers(model, cfg, device)
    ddp = model
    if world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True, broadcast_buffers=False)
    forward = maybe_compile(ddp, cfg["compile"] and device.type == "cuda")
    trainer = Trainer(model, ddp, forward, optimizers, device, micro_batches(cfg, world_size), cfg["grad_clip_norm"])
    return Run(cfg, rank, world_size, device, Path(train_dir), seed, vocab_size, model_config,
               sum(p.numel() for p in model.parameters()), attention, trainer, RunLog(rank == 0))


def log_hyperparameters(run: Run, tokenizer) -> None:
    run.log("# hyperparameters")
    run_info = dict(run.cfg, seed=run.seed, world_size=run.world_size, device=str(run.device),
                    vocab_size=run.vocab_size, num_params=run.num_params, train_dir=str(run.train_dir),
                    tokenizer=str(tokenizer), torch_version=torch.__version__, attention=run.attention)
    for key, value in run_info.items():
        run.log(f"{key}: {value}")


def make_loader(run: Run) -> DistributedTokenLoader:
    cfg = run.cfg
    return DistributedTokenLoader(run.train_dir, run.vocab_size, cfg["seq_len"], cfg["batch_tokens"],
                                  run.rank, run.world_size, run.device, cfg["data_order"], run.seed)


def train_step(trainer: Trainer, loader) -> torch.Tensor:
    """Forward/backward over the micro-batches, clip, optimizer steps; returns the loss (on device)."""
    model, ddp, device, accum_steps = trainer.model, trainer.ddp, trainer.device, trainer.accum_steps
    inputs, targets = loader.next_batch()
    loss_sum = torch.zeros((), device=device)
    micro = list(zip(inputs.chunk(accum_steps), targets.chunk(accum_steps)))
    for k, (x, y) in enumerate(micro):
        # Gradients are reduced once per step: during the last micro-batch's backward.
        no_sync = ddp.no_sync() if ddp is not model and k < len(micro) - 1 else nullcontext()
        with no_sync:
            with autocast_ctx(device):
                loss = trainer.forward(x, y) / accum_steps
            loss.backward()
        loss_sum += loss.detach()
    if trainer.grad_clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.grad_clip_norm, foreach=device.type == "cuda")
    for opt in trainer.optimizers:
        opt.step()
    model.zero_grad(set_to_none=ddp is model)
    return loss_sum


def compile_warmup(run: Run, loop_at: float | None) -> float:
    """Compile (and warm the allocator) outside the timed budget, then put everything back; returns seconds."""
    cfg, model, optimizers = run.cfg, run.model, run.trainer.optimizers
    if cfg["compile_warmup_steps"] <= 0:
        return 0.0
    t = time.perf_counter()
    saved_model = copy.deepcopy(model.state_dict())
    saved_opts = [copy.deepcopy(opt.state_dict()) for opt in optimizers]
    warm_loader = make_loader(run)
    looping_at_start = model.looping
    variants = [looping_at_start] + ([True] if loop_at is not None and not looping_at_start else [])
    for looping in variants:
        model.looping = looping
        for i in range(cfg["compile_warmup_steps"]):
            set_schedules(optimizers, 1.0, muon_momentum(i, cfg))
            train_step(run.trainer, warm_loader)
    model.looping = looping_at_start
    model.load_state_dict(saved_model)
    for opt, state in zip(optimizers, saved_opts):
        opt.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
        torch.cuda.reset_peak_memory_stats(run.device)
    compile_seconds = time.perf_counter() - t
    run.log(f"compile warm-up: {cfg['compile_warmup_steps']} steps x {len(variants)} graph variant(s) "
            f"in {compile_seconds:.1f}s (untimed; weights, optimizer and data restored)")
    return compile_seconds


def global_loss(run: Run, loss_sum: torch.Tensor, step: int) -> float:
    """The step's loss averaged over ranks; a non-finite loss stops the run (on every rank)."""
    loss_value = float(loss_sum.item())
    if run.world_size > 1:
        t = torch.tensor([loss_value], dtype=torch.float64, device=run.device)
        dist.all_reduce(t)
        loss_value = float(t.item()) / run.world_size
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"non-finite training loss {loss_value} at step {step}: "
                                 f"lower the learning rates or check the data")
    return loss_value


def calibration_reserve_seconds(cfg: dict, elapsed: float, step: int, accum_steps: int) -> float:
    """Seconds kept at the end of the budget for Hessian collection."""
    if cfg["gptq_reserve_seconds"] is not None:
        return cfg["gptq_reserve_seconds"]
    # A calibration batch is a forward pass only, so a mean step over-estimates it: a safe margin.
    return cfg["hessian_batches"] * elapsed / step / accum_steps


def check_abort(run: Run, step: int, loss: float, step_ms: float, elapsed: float, reserve: float) -> str | None:
    """The config's `abort:` rules (pgolf.abort) at a log step; every rank gets the same answer."""
    rules = run.cfg.get("abort")
    if not rules:
        return None
    steps_left = max(run.cfg["max_wallclock_seconds"] - reserve - elapsed, 0.0) / (step_ms / 1000)
    reason = abort_reason(rules, step, loss, step_ms, step + steps_left)
    if run.world_size > 1:
        fired = torch.tensor([reason is not None], dtype=torch.float64, device=run.device)
        dist.all_reduce(fired, op=dist.ReduceOp.MAX)
        reason = reason or ("another rank's abort rule fired" if fired.item() else None)
    if reason:
        run.log(f"abort: {reason}")
    return reason


def timed_loop(run: Run, loader, ema: EMA, loop_at: float | None) -> LoopResult:
    """Steps until max_steps, or until the time left could not also cover the Hessian batches."""
    cfg, model, log = run.cfg, run.model, run.log
    max_steps, budget_seconds = cfg["max_steps"], cfg["max_wallclock_seconds"]
    step, reserve_seconds, stopped_by, loop_step, aborted = 0, 0.0, "max_steps", None, None
    last_log_step, last_log_elapsed = 0, 0.0
    bar = tqdm(total=max_steps, disable=run.rank != 0 or os.environ.get("TQDM_DISABLE") == "1", file=sys.stderr,
               desc="train", mininterval=1.0)
    clock = Clock(run.device, run.world_size)
    profiler = StepProfiler(os.environ.get("PGOLF_PROFILE_STEPS"), run.rank == 0)
    while step < max_steps:
        elapsed = clock.estimate(step)
        # Wall-clock aware progress: whichever budget (steps or seconds left for training) runs out first.
        progress = max(step / max_steps, elapsed / max(budget_seconds - reserve_seconds, 1e-9))
        if loop_at is not None and not model.looping and progress >= loop_at:
            model.looping, loop_step = True, step
            log(f"depth recurrence on at step {step} (progress {progress:.3f}): "
                f"schedule {run.model_config.schedule(True)}")
        scale = lr_scale(step, progress, cfg["warmup_steps"], cfg["warmdown_frac"])
        set_schedules(run.trainer.optimizers, scale, muon_momentum(step, cfg))
        profiler.before(step + 1)
        loss_sum = train_step(run.trainer, loader)
        ema.update()
        step += 1
        profiler.after(step)
        bar.update(1)
        is_log = step % cfg["log_every"] == 0 or step == max_steps
        near_end = clock.estimate(step) + 2 * clock.step_seconds + reserve_seconds >= budget_seconds
        if is_log or near_end or step % cfg["sync_every_steps"] == 0 or step <= 2:
            elapsed = clock.sync(step)
            reserve_seconds = calibration_reserve_seconds(cfg, elapsed, step, run.trainer.accum_steps)
            if is_log:
                loss_value = global_loss(run, loss_sum, step)
                step_ms = 1000 * (elapsed - last_log_elapsed) / (step - last_log_step)
                log(f"step {step}/{max_steps} loss {loss_value:.4f} lr_scale {scale:.3f} step_ms {step_ms:.1f} "
                    f"tokens_per_s {cfg['batch_tokens'] / (step_ms / 1000):.0f} elapsed_s {elapsed:.3f}")
                bar.set_postfix(loss=f"{loss_value:.3f}")
                last_log_step, last_log_elapsed = step, elapsed
                aborted = check_abort(run, step, loss_value, step_ms, elapsed, reserve_seconds)
                if aborted:
                    stopped_by = "abort"
                    break
            if elapsed + reserve_seconds >= budget_seconds and step < max_steps:
                stopped_by = "wallclock"
                break
    bar.close()
    train_seconds = clock.sync(step)
    result = LoopResult(step, train_seconds, global_loss(run, loss_sum, step), stopped_by, loop_step, aborted)
    log(f"stopped after {step} steps ({stopped_by}) in {train_seconds:.1f}s")
    return result


def calibrate(run: Run, ema: EMA, loader) -> tuple[dict, float]:
    """GPTQ calibration on the EMA weights, with depth recurrence as evaluation will run it.
    Reads training data, so it runs inside the time budget; returns (hessians, seconds)."""
    model, accum_steps = run.model, run.trainer.accum_steps
    model.load_state_dict(ema.state)
    model.looping = run.model_config.loops
    t1 = time.perf_counter()
    pending: list[torch.Tensor] = []

    def calibration_inputs() -> torch.Tensor:
        if not pending:  # one calibration batch = one micro-batch, as in training
            pending.extend(loader.next_batch()[0].chunk(accum_steps))
        return pending.pop(0)

    with autocast_ctx(run.device):
        hessians = collect_hessians(model, calibration_inputs, run.cfg["hessian_batches"])
    hessian_seconds = time.perf_counter() - t1
    run.log(f"hessians: {len(hessians) - 1} matrices from {hessians['__num_tokens__']} tokens in "
            f"{hessian_seconds:.2f}s")
    return hessians, hessian_seconds


def run_summary(run: Run, result: LoopResult, compile_seconds: float, hessian_seconds: float) -> dict:
    """train.json: the numbers aggregate reads (peak memory is the largest over ranks)."""
    peak = torch.tensor([peak_memory_bytes(run.device)], dtype=torch.float64, device=run.device)
    if run.world_size > 1:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    step, train_seconds = result.steps, result.train_seconds
    return {
        "steps": step, "train_seconds": train_seconds, "step_ms": 1000 * train_seconds / step,
        "tokens_per_second": step * run.cfg["batch_tokens"] / train_seconds,
        "peak_memory_bytes": int(peak.item()), "world_size": run.world_size, "device": str(run.device),
        "final_train_loss": result.final_train_loss, "hessian_seconds": hessian_seconds,
        # the challenge's 600 s cover GPTQ calibration that reads training data, not the loop alone
        "train_budget_seconds": train_seconds + hessian_seconds,
        "stopped_by": result.stopped_by, "num_params": run.num_params, "seed": run.seed,
        "loop_start_step": result.loop_start_step, "compile_seconds": compile_seconds, "attention": run.attention,
        "aborted": result.abort_reason is not None, "abort_reason": result.abort_reason,
    }


def train(cfg: dict, train_dir, tokenizer, out_dir, seed: int) -> dict:
    """The train stage in one process (one rank under torchrun); rank 0 writes the outputs."""
    run = set_up(check_train_keys(cfg), train_dir, tokenizer, seed)
    log_hyperparameters(run, tokenizer)
    # Depth recurrence: off until loop_start_frac of training (then both graph variants get compiled).
    loop_at = run.cfg["loop_start_frac"] if run.model_config.loops else None
    run.model.looping = run.model_config.loops and loop_at <= 0
    compile_seconds = compile_warmup(run, loop_at)
    ema = EMA(run.model, run.cfg["ema_decay"])
    loader = make_loader(run)
    run.log("# training")
    result = timed_loop(run, loader, ema, loop_at)
    hessians, hessian_seconds = calibrate(run, ema, loader)
    summary = run_summary(run, result, compile_seconds, hessian_seconds)
    if run.rank == 0:
        write_outputs(Path(out_dir), run.model_config, ema.state, hessians, run.log, summary)
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
    parser = argparse.ArgumentParser(prog="python -m pgolf.train",
                                     description="pgolf train stage: train shards + tokenizer -> EMA model, "
                                                 "GPTQ Hessians, train.log, train.json")
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
