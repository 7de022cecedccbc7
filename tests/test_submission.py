"""Submission export pieces: submission.json numbers and README tests from given seeds (the whole folder and the
exported train_gpt.py's reproduction are tested end to end in test_workflow.py)."""
import statistics

import pytest

from pgolf.submission import readme, submission_json

META = {"name": "my run", "author": "A. Golfer", "github_id": "agolfer", "blurb": None}


def seeds(bpbs):
    return [{"seed": s, "train": {"steps": 100 + s, "step_ms": 40.0, "world_size": 8, "device": "cuda:0"},
             "artifact": {"model_bytes": 15_000_000 + s, "total_bytes": 15_030_000 + s},
             "eval": {"val_bpb": bpb, "val_loss": 2 * bpb, "eval_seconds": 90.0}} for s, bpb in enumerate(bpbs)]


def test_submission_json_means_spreads_and_bytes():
    bpbs = [1.10, 1.12, 1.11]
    row = {"delta_bpb_vs_reference": -0.01, "delta_nats_vs_reference": -0.02}
    sub = submission_json(META, seeds(bpbs), row, bytes_code=20_000, date="2026-05-01")
    assert sub["val_bpb"] == pytest.approx(statistics.mean(bpbs))
    assert sub["val_bpb_std"] == pytest.approx(statistics.stdev(bpbs))
    assert sub["val_loss_std"] == pytest.approx(statistics.stdev(2 * b for b in bpbs))
    assert sub["bytes_code"] == 20_000 and sub["bytes_total"] == 15_000_002 + 20_000
    assert sub["seed_results"]["1"]["artifact_bytes"] == 15_000_001 + 20_000
    assert sub["comparison_baseline_bpb"] == pytest.approx(statistics.mean(bpbs) + 0.01)
    assert sub["hardware"] == "8x cuda:0" and sub["date"] == "2026-05-01"


def test_one_seed_has_no_spread_and_no_reference_no_comparison():
    sub = submission_json(META, seeds([1.1]), {"delta_bpb_vs_reference": float("nan")}, 100, "2026-05-01")
    assert sub["val_bpb_std"] is None and "comparison_baseline_bpb" not in sub


def test_readme_states_both_tests_against_the_reference():
    reference = {"name": "record_1736", "val_bpb": {"mean": 1.12, "std": 0.001, "n": 3}}
    row = {"delta_bpb_vs_reference": -0.01, "delta_nats_vs_reference": -0.02, "p_strict_vs_reference": 0.2,
           "p_welch_vs_reference": 0.01, "world_size": 8}
    sub = submission_json(META, seeds([1.10, 1.12, 1.11]), row, 20_000, "2026-05-01")
    text = readme(META, "mine", sub, row, reference)
    assert "Against record_1736" in text and "strict rule" in text and "p = 0.2" in text and "p = 0.01" in text
    assert "| 2 | 2.22000000 | 1.11000000 |" in text and "--nproc_per_node=8" in text
