"""Post-flight: compare one seed's train.json / artifact.json / eval.json with the config's expectations and
return flags, so aggregate can mark a run (a `flags` column) instead of silently ranking it.

Proposed config section (all keys optional; absent or null means "not checked"):

    expect:
      step_ms_max: 45.0          # slower steps than this: wrong GPUs, throttling, a slow node
      min_steps: 13000           # fewer optimizer steps than this within the time budget
      world_size: 8              # torchrun ranks the run must have used
      train_seconds_max: 600     # the challenge's training budget: timed loop + Hessian collection
      eval_seconds_max: 600      # and its evaluation budget (the artifact's scored eval)
      artifact_bytes_max: 16000000
"""

from typing import Mapping, Optional

from pgolf import ARTIFACT_LIMIT_BYTES as LIMIT_BYTES
from pgolf.io import read_json


def flags(train: Mapping, artifact: Optional[Mapping], expect: Optional[Mapping],
          scored: Optional[Mapping] = None) -> list:
    """Flag strings like 'slow_steps: step_ms 52.10 > 45.00'; empty when everything is as expected."""
    expect = dict(expect or {})
    out = []
    step_ms_max = expect.get("step_ms_max")
    if step_ms_max is not None and train.get("step_ms") is not None and train["step_ms"] > step_ms_max:
        out.append(f"slow_steps: step_ms {train['step_ms']:.2f} > {step_ms_max:.2f}")
    min_steps = expect.get("min_steps")
    if min_steps is not None and train.get("steps", 0) < min_steps:
        out.append(f"few_steps: {train.get('steps', 0)} < {min_steps}")
    world_size = expect.get("world_size")
    if world_size is not None and train.get("world_size") != world_size:
        out.append(f"world_size: {train.get('world_size')} != {world_size}")
    seconds_max = expect.get("train_seconds_max")
    budget_seconds = budget_seconds_of(train)
    if seconds_max is not None and budget_seconds > seconds_max:
        out.append(f"over_time: train_budget_seconds {budget_seconds:.1f} (loop {train.get('train_seconds', 0):.1f} "
                   f"+ hessians {train.get('hessian_seconds', 0):.1f}) > {seconds_max}")
    eval_max = expect.get("eval_seconds_max")
    if eval_max is not None and scored is not None and scored.get("eval_seconds", 0) > eval_max:
        out.append(f"slow_eval: eval_seconds {scored['eval_seconds']:.1f} > {eval_max} "
                   f"on {scored.get('world_size', 1)} rank(s)")
    if artifact is not None:
        limit = expect.get("artifact_bytes_max") or artifact.get("limit_bytes") or LIMIT_BYTES
        if artifact["total_bytes"] > limit or artifact.get("fits") is False:
            out.append(f"over_size: {artifact['total_bytes']} bytes > {limit}")
    return out


def budget_seconds_of(train: Mapping) -> float:
    """Seconds charged to the training budget: the timed loop plus Hessian collection (it reads training data)."""
    if "train_budget_seconds" in train:
        return train["train_budget_seconds"]
    return train.get("train_seconds", 0) + train.get("hessian_seconds", 0)


def flags_from_files(train_json, artifact_json, expect: Optional[Mapping]) -> list:
    return flags(read_json(train_json), read_json(artifact_json) if artifact_json else None, expect)
