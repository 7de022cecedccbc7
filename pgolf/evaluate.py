"""Score a model on the validation shards with the canonical bits-per-byte rule (DESIGN.md §2).

Sliding window: windows of `seq_len` tokens start every `stride` tokens; the first window scores
all its targets, every later one only the targets no earlier window scored, so each validation
token is scored exactly once and (after the first window) with at least seq_len - stride tokens of
context. stride == seq_len is the plain non-overlapping evaluation.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pgolf.bpb import bits_per_byte, byte_luts, target_bytes
from pgolf.io import write_json
from pgolf.shard_format import load_tokens, shard_paths

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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def evaluate_tokens(model: torch.nn.Module, tokens: np.ndarray, luts, seq_len: int, stride: int,
                    batch_seqs: int, device: torch.device) -> dict:
    """Sum of NLL (nats) and of UTF-8 bytes over every target token of `tokens`, scored once."""
    model.eval().to(device)
    stream = torch.from_numpy(tokens.astype(np.int64)).to(device)
    num_targets = stream.numel() - 1
    plan = window_plan(num_targets, seq_len, stride)
    length = min(seq_len, num_targets)
    luts_dev = tuple(torch.as_tensor(t, device=device) for t in luts)
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    bytes_sum = torch.zeros((), dtype=torch.int64, device=device)
    scored = 0
    offsets_all = torch.arange(length, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for first in tqdm(range(0, len(plan), batch_seqs), desc="eval", unit="batch", leave=False):
        batch = plan[first:first + batch_seqs]
        starts = torch.tensor([s for s, _ in batch], device=device)
        index = starts[:, None] + offsets_all[None, :]
        inputs, targets = stream[index], stream[index + 1]
        with autocast:
            nll = model.loss(inputs, targets, reduction="none").float()
        keep = offsets_all[None, :] >= torch.tensor([o for _, o in batch], device=device)[:, None]
        nll_sum += nll[keep].double().sum()
        bytes_sum += target_bytes(inputs, targets, luts_dev)[keep].long().sum()
        scored += int(keep.sum())
    if scored != num_targets:  # the plan's contract: every target exactly once
        raise AssertionError(f"scored {scored} targets, expected {num_targets}")
    nll_total, byte_total = float(nll_sum), int(bytes_sum)
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
    """mode 'artifact': rebuild from the compressed blob alone; 'prequant': the EMA model.pt."""
    started = time.perf_counter()
    if mode == "artifact":
        from pgolf.artifact import load_model_from_artifact

        model, _ = load_model_from_artifact(model_path)
    elif mode == "prequant":
        model = load_prequant_model(model_path)
    else:
        raise ValueError(f"eval mode must be 'artifact' or 'prequant', got {mode!r}")
    paths = shard_paths(val_dir)
    if not paths:
        raise FileNotFoundError(f"{val_dir}: no validation shards")
    tokens = load_tokens(paths)
    dev = resolve_device(device)
    result = evaluate_tokens(model, tokens, byte_luts(tokenizer_model), cfg["seq_len"], cfg["stride"],
                             cfg["batch_seqs"], dev)
    result.update(mode=mode, seq_len=cfg["seq_len"], stride=cfg["stride"], device=str(dev),
                  eval_seconds=time.perf_counter() - started)
    log.info("%s eval: val_loss %.5f nats, val_bpb %.5f over %d tokens / %d bytes in %.1f s", mode,
             result["val_loss"], result["val_bpb"], result["scored_tokens"], result["scored_bytes"],
             result["eval_seconds"])
    write_json(out_json, result)
    return result
