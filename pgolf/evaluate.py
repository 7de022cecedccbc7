"""Score a model on the validation shards with the canonical bits-per-byte rule (DESIGN.md §2).

Sliding window: windows of `seq_len` tokens start every `stride` tokens; the first window scores
all its targets, every later one only the targets no earlier window scored, so each validation
token is scored exactly once and (after the first window) with at least seq_len - stride tokens of
context. stride == seq_len is the plain non-overlapping evaluation.

Under torchrun (`python -m pgolf.evaluate`, launched by pgolf.launch.run_eval with one rank per GPU)
each rank scores a contiguous share of the windows and the sums are all-reduced: the challenge allows
600 s of evaluation on 8×H100, and one GPU would need about eight times the record's 84 s.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pgolf.bpb import bits_per_byte, byte_luts, target_bytes
from pgolf.distributed import init_distributed
from pgolf.fastpath import configure_cuda, maybe_compile
from pgolf.io import write_json
from pgolf.shard_format import load_tokens, shard_paths
from pgolf.ttt import DOC_TABLE_NAME, evaluate_with_ttt, ttt_requested, write_doc_table

log = logging.getLogger(__name__)


def window_plan(num_targets: int, seq_len: int, stride: int) -> list[tuple[int, int]]:
    """(start, first scored offset) per window; all windows have length min(seq_len, num_targets).

    Target j is token j+1 predicted from tokens ≤ j. The last window is pulled back so it ends
    exactly at the last target, and scores only what its predecessors left.
    """
    if not 0 < stride <= seq_len:
        raise ValueError(f"eval.stride must be in 1..seq_len ({seq_len}), got {stride}")
    length = min(seq_len, num_targets)
    starts = list(range(0, num_targets - length + 1, stride))
    if starts[-1] + length < num_targets:
        starts.append(num_targets - length)
    plan, covered_end = [], 0
    for start in starts:
        plan.append((start, covered_end - start if covered_end > start else 0))
        covered_end = start + length
    return plan


@torch.no_grad()
def evaluate_tokens(model: torch.nn.Module, tokens: np.ndarray, luts, seq_len: int, stride: int,
                    batch_seqs: int, device: torch.device, rank: int = 0, world_size: int = 1,
                    compile: bool = False) -> dict:
    """Sum of NLL (nats) and of UTF-8 bytes over every target token of `tokens`, scored once.

    `model.scored_losses(inputs, targets, keep)` gives the NLL of the kept targets. With world_size > 1
    (an initialized process group) this rank scores its share of the window batches and the totals are
    all-reduced, so every rank returns the same result. `compile` runs `model.hidden_states` (the dense
    part; the head runs on the kept positions only, a shape that varies) through torch.compile, with every
    batch padded to `batch_seqs` windows that score nothing, so one static graph serves them all."""
    model.eval().to(device)
    if compile:
        # An instance attribute shadows the method for scored_losses; deleted again below.
        model.hidden_states = maybe_compile(model.hidden_states, True)
    try:
        return _score_windows(model, tokens, luts, seq_len, stride, batch_seqs, device, rank, world_size, compile)
    finally:
        if compile:
            del model.hidden_states


def _score_windows(model, tokens, luts, seq_len, stride, batch_seqs, device, rank, world_size, pad) -> dict:
    stream = torch.from_numpy(tokens.astype(np.int64)).to(device)
    num_targets = stream.numel() - 1
    plan = window_plan(num_targets, seq_len, stride)
    length = min(seq_len, num_targets)
    luts_dev = tuple(torch.as_tensor(t, device=device) for t in luts)
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    counts = torch.zeros(2, dtype=torch.int64, device=device)  # scored bytes, scored targets
    offsets_all = torch.arange(length, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    batch_starts = np.array_split(np.arange(0, len(plan), batch_seqs), world_size)[rank]
    for first in tqdm(batch_starts.tolist(), desc="eval", unit="batch", leave=False, disable=rank != 0):
        batch = plan[first:first + batch_seqs]
        if pad:  # repeat the last window with nothing scored (first offset = length)
            batch = batch + [(batch[-1][0], length)] * (batch_seqs - len(batch))
        starts = torch.tensor([s for s, _ in batch], device=device)
        index = starts[:, None] + offsets_all[None, :]
        inputs, targets = stream[index], stream[index + 1]
        keep = offsets_all[None, :] >= torch.tensor([o for _, o in batch], device=device)[:, None]
        with autocast:
            nll = model.scored_losses(inputs, targets, keep).float()
        nll_sum += nll.double().sum()
        counts[0] += target_bytes(inputs, targets, luts_dev)[keep].long().sum()
        counts[1] += nll.numel()
    if world_size > 1:
        dist.all_reduce(nll_sum)
        dist.all_reduce(counts)
    byte_total, scored = (int(c) for c in counts.tolist())
    if scored != num_targets:  # the plan's contract: every target exactly once
        raise AssertionError(f"scored {scored} targets, expected {num_targets}")
    nll_total = float(nll_sum)
    return {
        "val_loss": nll_total / scored,
        "val_bpb": bits_per_byte(nll_total, byte_total),
        "scored_tokens": scored,
        "scored_bytes": byte_total,
    }


def load_prequant_model(model_pt: str | Path) -> torch.nn.Module:
    from pgolf.model import build_model

    checkpoint = torch.load(model_pt, map_location="cpu", weights_only=True)
    model = build_model(checkpoint["model_config"])
    model.load_state_dict(checkpoint["state_dict"])
    return model


def evaluate_files(mode: str, model_path: str | Path, val_dir: str | Path, tokenizer_model: str | Path,
                   cfg: dict, device: str, out_json: str | Path) -> dict:
    """mode 'artifact': rebuild from the compressed blob alone; 'prequant': the EMA model.pt.
    Under torchrun every rank scores its share; rank 0 writes out_json (and, with TTT, the per-document
    table beside it). eval_seconds is the whole stage from here on (model load, warm-up, scoring) on the
    slowest rank; scoring_seconds rank 0's scoring loop alone."""
    started = time.perf_counter()
    rank, world_size, dev = init_distributed(device)
    if mode == "artifact":
        from pgolf.artifact import load_model_from_artifact

        model, _ = load_model_from_artifact(model_path)
    elif mode == "prequant":
        model = load_prequant_model(model_path)
    else:
        raise ValueError(f"eval mode must be 'artifact' or 'prequant', got {mode!r}")
    tokens = load_tokens(shard_paths(val_dir))
    if dev.type == "cuda":
        configure_cuda(dev)  # cuDNN attention when it works here, as in training
    scoring_started, doc_table = time.perf_counter(), None
    if ttt_requested(cfg):
        result, doc_table = evaluate_with_ttt(model, tokens, tokenizer_model, cfg, dev, rank, world_size)
    else:
        result = evaluate_tokens(model, tokens, byte_luts(tokenizer_model), cfg["seq_len"], cfg["stride"],
                                 cfg["batch_seqs"], dev, rank, world_size,
                                 compile=bool(cfg.get("compile")) and dev.type == "cuda")
    # This rank's scoring loop alone (TTT's warm-up, on random tokens, is reported apart as warmup_seconds).
    result["scoring_seconds"] = time.perf_counter() - scoring_started - result.get("warmup_seconds", 0.0)
    elapsed = torch.tensor(time.perf_counter() - started, dtype=torch.float64, device=dev)
    if world_size > 1:
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the evaluation lasts as long as its slowest rank
    result.update(mode=mode, seq_len=cfg["seq_len"], stride=cfg["stride"], device=str(dev),
                  world_size=world_size, eval_seconds=float(elapsed))
    if rank == 0:
        log.info("%s eval: val_loss %.5f nats, val_bpb %.5f over %d tokens / %d bytes in %.1f s on %d rank(s)",
                 mode, result["val_loss"], result["val_bpb"], result["scored_tokens"], result["scored_bytes"],
                 result["eval_seconds"], world_size)
        if doc_table is not None:
            write_doc_table(Path(out_json).with_name(DOC_TABLE_NAME), doc_table)
        write_json(out_json, result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pgolf.evaluate",
                                     description="pgolf eval stage (one rank per GPU under torchrun)")
    parser.add_argument("--mode", required=True, choices=("artifact", "prequant"))
    parser.add_argument("--model", required=True, help="model.blob (artifact) or model.pt (prequant)")
    parser.add_argument("--val-dir", required=True, help="directory of fineweb_val_*.bin shards")
    parser.add_argument("--tokenizer", required=True, help="SentencePiece .model (byte counting)")
    parser.add_argument("--config", required=True, help="params.json: the eval config section")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", required=True, help="eval.json to write (rank 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        evaluate_files(args.mode, args.model, args.val_dir, args.tokenizer,
                       json.loads(Path(args.config).read_text()), args.device, args.out)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
