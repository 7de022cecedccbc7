"""Phased global TTT: SGD on the base weights over the documents scored so far, once a phase ends.

Every rank takes part in every step: a step is a fixed group of pieces of those documents (processing
order, about `ttt_global_batch_tokens` targets, as the 1.0611 record's 32,768-token steps), each rank
computes the summed loss gradient of its share of them, the gradients and token counts
are all-reduced, and every rank applies the same mean-gradient step. The steps therefore do not depend on
the number of ranks (up to floating-point summation order).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pgolf.ttt_plan import Doc, rank_share


def _pieces(stream, doc: Doc, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A document's (inputs, targets) cut into pieces of at most `length` targets."""
    out = []
    for low in range(0, doc.num_targets, length):
        high = min(low + length, doc.num_targets)
        out.append((stream[doc.start + low:doc.start + high], stream[doc.start + low + 1:doc.start + high + 1]))
    return out


def _loss_sum(model, pieces, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL of right-padded pieces (padding masked out) and their target count, both on the device
    (no host sync: the head runs on every column, nearly all of them real targets)."""
    width = max(x.numel() for x, _ in pieces)
    device = pieces[0][0].device
    inputs = torch.zeros(len(pieces), width, dtype=torch.long, device=device)
    targets = torch.zeros_like(inputs)
    mask = torch.zeros(len(pieces), width, dtype=torch.bool, device=device)
    for r, (x, y) in enumerate(pieces):
        inputs[r, :x.numel()], targets[r, :y.numel()], mask[r, :x.numel()] = x, y, True
    with autocast:
        logits = model.head(model.hidden_states(inputs))
        losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    return torch.where(mask, losses.float(), 0.0).sum(), mask.sum()


def _trainable(params, on: bool) -> None:
    for p in params:
        p.requires_grad_(on)
        if not on:
            p.grad = None


def global_sgd(model, stream, scored: list[Doc], s, context: int, rank: int, world_size: int, autocast) -> None:
    """`ttt_global_epochs` passes of SGD with momentum on every base weight over already scored documents,
    the LR on `ttt_global_lr_schedule` over the phase's steps, the gradient norm clipped."""
    params = [p for p in model.parameters()]
    _trainable(params, True)
    optimizer = torch.optim.SGD(params, lr=s.ttt_global_lr, momentum=s.ttt_global_momentum)
    device = stream.device
    steps = step_groups(stream, scored, context, s.ttt_global_batch_tokens) * s.ttt_global_epochs
    for i, group in enumerate(steps):
        lr = step_lr(s.ttt_global_lr, s.ttt_global_lr_schedule, i, len(steps))
        if lr == 0.0:
            continue  # a step that would not move the weights
        pieces = rank_share(group, rank, world_size)
        optimizer.zero_grad(set_to_none=False)
        count = torch.zeros((), dtype=torch.float64, device=device)
        for micro in micro_batches(pieces, _micro_tokens(s, context)):  # a whole group when its pieces are alike
            loss, n = _loss_sum(model, micro, autocast)
            loss.backward()
            count += n
        _mean_gradients(params, count, world_size)
        if s.ttt_global_grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, s.ttt_global_grad_clip)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        optimizer.step()
    _trainable(params, False)


def step_groups(stream, scored: list[Doc], context: int, batch_tokens: int) -> list[list]:
    """The scored documents' pieces (processing order, each at most `context` targets, never across a
    document's end) in steps of at least `batch_tokens` targets, the last step what is left."""
    steps, group, tokens = [], [], 0
    for piece in (p for d in scored for p in _pieces(stream, d, context)):
        group.append(piece)
        tokens += piece[1].numel()
        if tokens >= batch_tokens:
            steps.append(group)
            group, tokens = [], 0
    return steps + ([group] if group else [])


def micro_batches(pieces: list, max_tokens: int) -> list[list]:
    """Consecutive runs of pieces whose right-padded batch (count × longest) stays within `max_tokens`
    (a piece longer than that alone): the activation memory of a forward and backward is bounded by
    tokens, not by a count of pieces (64 pieces padded to 2,048 were 131,072 tokens, 44 GB eager)."""
    out, run, width = [], [], 0
    for piece in pieces:
        wider = max(width, piece[0].numel())
        if run and (len(run) + 1) * wider > max_tokens:
            out.append(run)
            run, wider = [], piece[0].numel()
        run.append(piece)
        width = wider
    return out + ([run] if run else [])


def _micro_tokens(s, context: int) -> int:
    return s.ttt_global_batch_tokens + context  # a step's group of full pieces fits in one micro-batch


def warm_up_lengths(s, context: int) -> list[int]:
    """Document lengths whose pieces fill the global steps' largest micro-batch (the allocator's peak)."""
    return [context] * max(1, _micro_tokens(s, context) // context)


def step_lr(peak: float, schedule: str, step: int, num_steps: int) -> float:
    """The LR of step `step` (0-based) of a phase's `num_steps`: constant, or cosine from `peak` to 0."""
    if schedule == "constant" or num_steps == 1:
        return peak
    if schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * step / (num_steps - 1)))
    raise ValueError(f"eval.ttt_global_lr_schedule must be cosine or constant, got {schedule!r}")


def warm_up_gradients(model, stream, docs: list[Doc], s, context: int, autocast) -> None:
    """The global steps' forwards and backwards over `docs` of a (random) stream, in their micro-batches;
    the gradients are dropped and no step is taken, so the base weights stay as they are."""
    params = list(model.parameters())
    _trainable(params, True)
    try:
        pieces = [p for d in docs for p in _pieces(stream, d, context)]
        for micro in micro_batches(pieces, _micro_tokens(s, context)):
            _loss_sum(model, micro, autocast)[0].backward()
    finally:
        _trainable(params, False)


def _mean_gradients(params, count: torch.Tensor, world_size: int) -> None:
    """Sum the gradients and target counts over ranks, then divide: the group's mean-loss gradient."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if world_size > 1:
        flat = torch.cat([p.grad.reshape(-1).float() for p in params])
        dist.all_reduce(flat)
        dist.all_reduce(count)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
    for p in params:
        p.grad.div_(count.clamp_min(1).to(p.grad.dtype))
