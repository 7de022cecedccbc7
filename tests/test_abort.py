from pgolf.abort import abort_reason

RULES = {"after_steps": 10, "loss_above": {"step": 50, "value": 4.5}, "step_ms_above": 130.0,
         "min_projected_steps": 4000}
HEALTHY = dict(loss=3.0, step_ms=100.0, projected_steps=5000)


def test_a_healthy_run_and_a_run_without_rules_go_on():
    assert abort_reason(RULES, 100, **HEALTHY) is None
    assert abort_reason(None, 100, loss=99.0, step_ms=1e9, projected_steps=0) is None


def test_no_rule_fires_during_warm_up():
    assert abort_reason(RULES, 9, loss=99.0, step_ms=1e9, projected_steps=0) is None


def test_loss_above_fires_only_from_its_step():
    assert abort_reason(RULES, 40, **dict(HEALTHY, loss=5.0)) is None
    assert abort_reason(RULES, 50, **dict(HEALTHY, loss=5.0)).startswith("loss_above: training loss 5.0000 > 4.5")


def test_step_ms_above_fires():
    assert abort_reason(RULES, 20, **dict(HEALTHY, step_ms=131.0)).startswith("step_ms_above: 131.0 ms")


def test_min_projected_steps_fires():
    assert abort_reason(RULES, 20, **dict(HEALTHY, projected_steps=3999)).startswith("min_projected_steps")
    assert abort_reason(RULES, 20, **dict(HEALTHY, projected_steps=4000)) is None
