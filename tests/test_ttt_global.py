import contextlib
import math

import numpy as np
import pytest
import torch

import pgolf.ttt_global as ttt_global
from pgolf.ttt import TTTSettings
from pgolf.ttt_global import global_sgd, step_lr
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


def _run(eval_defaults, **overrides):
    """One phase of global SGD over a tiny model: (weight change norm, loss evaluations)."""
    s = TTTSettings.from_eval_cfg({**eval_defaults, "ttt_global_lr": 0.1, "ttt_global_momentum": 0.0,
                                   "ttt_global_batch_docs": 3, **overrides})
    model = tiny_model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    tokens = doc_stream()
    stream = torch.from_numpy(tokens.astype(np.int64))
    docs = split_documents(tokens, BOS)[:9]  # three steps of three documents
    calls = []
    real = ttt_global._loss_sum
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ttt_global, "_loss_sum", lambda *a: calls.append(1) or real(*a))
        global_sgd(model, stream, docs, s, 16, 0, 1, contextlib.nullcontext())
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return float((after - before).norm()), len(calls)


def test_the_clip_bounds_each_step(eval_defaults):
    clipped, _ = _run(eval_defaults, ttt_global_grad_clip=1e-6, ttt_global_lr_schedule="constant")
    free, _ = _run(eval_defaults, ttt_global_grad_clip=0.0, ttt_global_lr_schedule="constant")
    assert clipped <= 3 * 0.1 * 1e-6 * 1.001  # three steps, each at most lr x clip
    assert free > 100 * clipped


def test_cosine_skips_the_last_step_of_a_phase(eval_defaults):
    _, cosine_calls = _run(eval_defaults, ttt_global_lr_schedule="cosine")
    _, constant_calls = _run(eval_defaults, ttt_global_lr_schedule="constant")
    assert constant_calls == 3 and cosine_calls == 2
