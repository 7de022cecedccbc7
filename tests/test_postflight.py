import pytest

from pgolf import postflight
from pgolf.io import write_json

TRAIN = {"steps": 13780, "train_seconds": 599.5, "step_ms": 43.5, "world_size": 8}
ARTIFACT = {"model_bytes": 15_800_000, "code_bytes": 47_000, "total_bytes": 15_847_000,
            "limit_bytes": 16_000_000, "fits": True}
EXPECT = {"step_ms_max": 45.0, "min_steps": 13000, "world_size": 8, "train_seconds_max": 600}


def test_expected_run_has_no_flags():
    assert postflight.flags(TRAIN, ARTIFACT, EXPECT) == []
    assert postflight.flags(TRAIN, ARTIFACT, None) == []


@pytest.mark.parametrize("train_update, artifact_update, flag", [
    ({"step_ms": 52.1}, {}, "slow_steps: step_ms 52.10 > 45.00"),
    ({"steps": 9000}, {}, "few_steps: 9000 < 13000"),
    ({"world_size": 4}, {}, "world_size: 4 != 8"),
    ({"train_seconds": 640.0}, {}, "over_time: train_budget_seconds 640.0 (loop 640.0 + hessians 0.0) > 600"),
    ({}, {"total_bytes": 16_000_001, "fits": False}, "over_size: 16000001 bytes > 16000000"),
])
def test_each_deviation_is_flagged(train_update, artifact_update, flag):
    assert postflight.flags({**TRAIN, **train_update}, {**ARTIFACT, **artifact_update}, EXPECT) == [flag]


def test_hessian_seconds_count_against_the_training_budget():
    """A 590 s loop is inside 600 s, but 15 s of Hessian collection on top of it is not."""
    seed = {**TRAIN, "train_seconds": 590.0, "hessian_seconds": 15.0, "train_budget_seconds": 605.0}
    assert postflight.flags(seed, ARTIFACT, EXPECT) == [
        "over_time: train_budget_seconds 605.0 (loop 590.0 + hessians 15.0) > 600"]
    older = {**TRAIN, "train_seconds": 590.0, "hessian_seconds": 15.0}  # a train.json without the sum
    assert postflight.flags(older, ARTIFACT, EXPECT) == postflight.flags(seed, ARTIFACT, EXPECT)


def test_flags_from_files(tmp_path):
    write_json(tmp_path / "train.json", {**TRAIN, "world_size": 1, "step_ms": 300.0})
    write_json(tmp_path / "artifact.json", ARTIFACT)
    assert postflight.flags_from_files(tmp_path / "train.json", tmp_path / "artifact.json",
                                       {"world_size": 8, "artifact_bytes_max": 15_000_000}) == [
        "world_size: 1 != 8", "over_size: 15847000 bytes > 15000000"]


def test_slow_artifact_eval_is_flagged():
    expect = {**EXPECT, "eval_seconds_max": 600}
    assert postflight.flags(TRAIN, ARTIFACT, expect, {"eval_seconds": 599.0, "world_size": 8}) == []
    assert postflight.flags(TRAIN, ARTIFACT, expect, {"eval_seconds": 612.34, "world_size": 1}) == [
        "slow_eval: eval_seconds 612.3 > 600 on 1 rank(s)"]
    assert postflight.flags(TRAIN, ARTIFACT, expect) == []  # no eval.json: nothing to check
