"""Early abort: the config's `abort:` rules, checked at log steps, stop a run that is clearly going wrong.

Every input is a value all ranks already agree on (the all-reduced loss, the agreed clock), so every
rank reaches the same verdict; pgolf.train still all-reduces it before stopping.
"""
from __future__ import annotations


def abort_reason(rules: dict | None, step: int, loss: float, step_ms: float, projected_steps: float) -> str | None:
    """Why the run should stop now (the first rule that fires), or None. `rules` is the `abort:` section."""
    if not rules or step < rules["after_steps"]:
        return None
    loss_rule = rules["loss_above"]
    if loss_rule and step >= loss_rule["step"] and loss > loss_rule["value"]:
        return f"loss_above: training loss {loss:.4f} > {loss_rule['value']} at step {step}"
    if rules["step_ms_above"] is not None and step_ms > rules["step_ms_above"]:
        return f"step_ms_above: {step_ms:.1f} ms per step > {rules['step_ms_above']} at step {step}"
    if rules["min_projected_steps"] is not None and projected_steps < rules["min_projected_steps"]:
        return (f"min_projected_steps: the time budget allows about {projected_steps:.0f} steps "
                f"< {rules['min_projected_steps']} (at step {step})")
    return None
