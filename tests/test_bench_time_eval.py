"""bench/time_eval.py --rank-share: one process takes the global TTT steps one rank of eight takes."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import time_eval  # noqa: E402

SPLIT_PHASES, GPUS, CONTEXT = [833, 1667, 2500], 8, 2048
EVAL = {"seq_len": CONTEXT, "ttt_seq_len": None, "ttt_global_batch_tokens": 32768, "ttt_global_on": "scored"}


def test_a_rank_share_takes_as_many_global_steps_as_one_rank_of_eight_and_as_many_targets():
    split = time_eval.split_docs()
    eight_ranks = time_eval.rank0_global_steps(split, SPLIT_PHASES, 32768, GPUS, CONTEXT, "scored")
    cfg = time_eval.share_of_rank(EVAL, SPLIT_PHASES, GPUS)
    assert cfg["ttt_phase_docs"] == [104, 208, 312]
    share = time_eval.rank0_global_steps(split[::GPUS], cfg["ttt_phase_docs"], cfg["ttt_global_batch_tokens"], 1,
                                         CONTEXT, "scored")
    assert len(share) == pytest.approx(len(eight_ranks), abs=2)
    assert sum(share) == pytest.approx(sum(eight_ranks), rel=0.05)  # the same longest fraction of the documents


def test_rank0_takes_every_eighth_piece_of_each_step():
    split = time_eval.split_docs()[:2000]
    one = time_eval.rank0_global_steps(split, [100, 200], 32768, 1, CONTEXT, "scored")
    eight = time_eval.rank0_global_steps(split, [100, 200], 32768, GPUS, CONTEXT, "scored")
    assert len(one) == len(eight) and sum(eight) == pytest.approx(sum(one) / GPUS, rel=0.1)
