import contextlib
import math

import numpy as np
import pytest
import torch

import pgolf.ttt_global as ttt_global
from pgolf.ttt import TTTSettings
from pgolf.ttt_global import global_sgd, micro_batches, step_groups, step_lr
from pgolf.ttt_plan import split_documents
from test_ttt import BOS, doc_stream, tiny_model


def test_cosine_goes_from_the_peak_to_zero_and_constant_stays():
    assert [step_lr(0.1, "cosine", i, 5) for i in range(5)] == pytest.approx(
        [0.1, 0.1 * (1 + math.cos(math.pi / 4)) / 2, 0.05, 0.1 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.0])
    assert step_lr(0.1, "cosine", 4, 5) == 0.0
    assert step_lr(0.1, "cosine", 0, 1) == 0.1  # a phase of one step takes it at the peak
    assert [step_lr(0.1, "constant", i, 3) for i in range(3)] == [0.1, 0.1, 0.1]
    with pytest.raises(ValueError, match="ttt_global_lr_schedule"):
        step_lr(0.1, "linear", 0, 3)


def test_steps_take_every_scored_target_once_in_pieces_of_whole_documents():
    tokens = doc_stream()
    stream = torch.from_numpy(tokens.astype(np.int64))
    docs = split_documents(tokens, BOS)[:9]
    steps = step_groups(stream, docs, 16, 40)
    targets = [int(t) for step in steps for _, y in step for t in y]
    assert targets == [int(t) for d in docs for t in stream[d.start + 1:d.start + 1 + d.num_targets]]
    sizes = [[y.numel() for _, y in step] for step in steps]
    assert all(0 < n <= 16 for step in sizes for n in step)
    assert all(sum(step) >= 40 > sum(step[:-1]) for step in sizes[:-1])  # full steps, none overfull
    assert 0 < sum(sizes[-1]) and len(steps) >= 3


def _num_steps() -> int:
    tokens = doc_stream()
    return len(step_groups(torch.from_numpy(tokens.astype(np.int64)), split_documents(tokens, BOS)[:9], 16, 40))


def _run(eval_defaults, **overrides):
    """One phase of global SGD over a tiny model: (weight change norm, steps taken)."""
    s = TTTSettings.from_eval_cfg({**eval_defaults, "ttt_global_lr": 0.1, "ttt_global_momentum": 0.0,
                                   "ttt_global_batch_tokens": 40, **overrides})
    model = tiny_model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    tokens = doc_stream()
    stream = torch.from_numpy(tokens.astype(np.int64))
    docs = split_documents(tokens, BOS)[:9]
    calls = []
    real = ttt_global._mean_gradients  # once per step, however many micro-batches it has
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ttt_global, "_mean_gradients", lambda *a: calls.append(1) or real(*a))
        global_sgd(model, stream, docs, s, 16, 0, 1, contextlib.nullcontext())
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return float((after - before).norm()), len(calls)


def test_the_clip_bounds_each_step(eval_defaults):
    clipped, _ = _run(eval_defaults, ttt_global_grad_clip=1e-6, ttt_global_lr_schedule="constant")
    free, _ = _run(eval_defaults, ttt_global_grad_clip=0.0, ttt_global_lr_schedule="constant")
    assert clipped <= _num_steps() * 0.1 * 1e-6 * 1.001  # each step moves at most lr x clip
    assert free > 100 * clipped


def test_cosine_skips_the_last_step_of_a_phase(eval_defaults):
    _, cosine_calls = _run(eval_defaults, ttt_global_lr_schedule="cosine")
    _, constant_calls = _run(eval_defaults, ttt_global_lr_schedule="constant")
    assert constant_calls == _num_steps() and cosine_calls == _num_steps() - 1


def test_micro_batches_bound_the_padded_tokens_and_keep_every_piece_in_order():
    lengths = [2048, 2048, 30, 900, 2048, 5000, 10, 10, 10]
    pieces = [(torch.zeros(n), torch.zeros(n)) for n in lengths]
    runs = micro_batches(pieces, 4096)
    assert [p for run in runs for p in run] == pieces  # same objects, same order
    for run in runs:
        width = max(x.numel() for x, _ in run)
        assert len(run) == 1 or len(run) * width <= 4096
    assert [len(run) for run in runs] == [2, 2, 1, 1, 3]  # 30 after two 2,048s would pad to 3 × 2,048
