"""pods.py: resources -> pod, names, the per-job report."""
import json
import types

import pytest

from snakemake_executor_plugin_runpod import pods


def test_pod_spec_maps_resources():
    spec = pods.pod_spec({"gpu": 8, "gpu_model": "H100 SXM", "runtime": 30, "disk_mb": 120_000},
                         "NVIDIA L4", 50)
    assert spec == pods.PodSpec("NVIDIA H100 80GB HBM3", 8, 120, 1800)
    assert pods.pod_spec({}, "h100", 50) == pods.PodSpec(None, 0, 50, None)      # CPU pod
    assert pods.pod_spec({"gpu": 1}, "a100", 50).gpu_type_id == "NVIDIA A100-SXM4-80GB"
    with pytest.raises(pods.PodSpecError, match="unknown RunPod GPU type"):
        pods.pod_spec({"gpu": 1, "gpu_model": "H1000"}, "h100", 50)
    with pytest.raises(pods.PodSpecError, match="gpu=3"):
        pods.pod_spec({"gpu": 3}, "h100", 50)
    assert pods.pod_env(8, {})["NCCL_P2P_LEVEL"] == "NVL" and "NCCL_P2P_LEVEL" not in pods.pod_env(1, {})


def _job(jobid, group=False):
    single = types.SimpleNamespace(name="train", wildcards={"seed": "1"}, jobid=jobid, attempt=2,
                                   is_group=lambda: False)
    if not group:
        return single
    other = types.SimpleNamespace(name="eval", wildcards={"seed": "1"})
    return types.SimpleNamespace(name="gpu_seed_eval_train", jobid=jobid, attempt=1, jobs=[single, other],
                                 is_group=lambda: True)


def test_group_job_ids_are_uuid_strings_everywhere(tmp_path):
    uid = "5b1c0f3e-8a1d-4c1e-9a55-0d6f7f1e2a3b"
    group = _job(uid, group=True)
    assert pods.job_key(group) == uid and pods.pod_name("pg", "abcd1234", pods.job_key(group)) == f"pg-abcd1234-{uid}"
    assert pods.job_label(group) == f"job {uid} (group gpu_seed_eval_train) attempt 1"
    spec = pods.PodSpec("NVIDIA H100 80GB HBM3", 8, 100, 1200)
    report = pods.cost_report(run_id="abcd1234", job=group, outputs=["e.json"], pod_id="p1", spec=spec,
                              wall_seconds=3600, usd_per_gpu_hour=2.0, outcome="success")
    assert report["jobid"] == uid and report["wildcards"] == {} and report["gpu_hours"] == 8.0
    assert report["jobs"] == [{"rule": "train", "wildcards": {"seed": "1"}}, {"rule": "eval", "wildcards": {"seed": "1"}}]
    path = pods.write_report(tmp_path, report)
    assert path.name == f"abcd1234-{uid}.json" and json.loads(path.read_text()) == report
    single = pods.cost_report(run_id="abcd1234", job=_job(7), outputs=[], pod_id="p2", spec=spec, wall_seconds=60,
                              usd_per_gpu_hour=0, outcome="failed", pod_cost_per_hour=21.5)
    assert single["jobid"] == 7 and single["wildcards"] == {"seed": "1"} and single["cost_usd"] == pytest.approx(21.5 / 60, abs=1e-4)
    assert pods.job_label(_job(7)) == "job 7 (rule train) attempt 2"
