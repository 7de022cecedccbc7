"""`snakemake --profile runpod -n results/ablation_summary.tsv` from the repo root: the bare
profile name resolves, the RunPod executor plugin is found, the challenge config validates, each
seed's GPU stages form one group job (one pod) asking for the challenge's 8 GPUs, and CPU stages
ask for none. Without S3 keys it stops with one short message instead of a traceback wall."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRY_RUN = [sys.executable, "-m", "snakemake", "--profile", "runpod", "-n", "results/ablation_summary.tsv"]


def _dry_run(*extra, env=None):
    proc = subprocess.run(DRY_RUN + list(extra), cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    return proc, proc.stdout + proc.stderr


def test_runpod_profile_dry_run_plans_one_8_gpu_pod_per_seed(tmp_path):
    proc, out = _dry_run("--default-storage-provider", "fs", "--default-storage-prefix", str(tmp_path / "store"))
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"Using profiles? runpod", out)
    assert "is extended by" not in out  # challenge.yaml replaces the embedded default
    train_jobs = re.findall(r"rule train:\n(.*?)(?:\n\n|\Z)", out, flags=re.S)
    assert train_jobs
    assert all(re.search(r"resources: .*\bgpu=8\b", job) for job in train_jobs)
    eval_jobs = re.findall(r"rule eval(?:_prequant)?:\n(.*?)(?:\n\n|\Z)", out, flags=re.S)  # the challenge's 8×H100
    assert eval_jobs and all(re.search(r"resources: .*\bgpu=8\b", job) for job in eval_jobs)
    shards_jobs = re.findall(r"rule shards:\n(.*?)(?:\n\n|\Z)", out, flags=re.S)
    assert shards_jobs and all(re.search(r"resources: .*\bgpu=0\b", job) for job in shards_jobs)
    # One group job (one pod) per trained model: its quantize, compress and evals ride along.
    assert out.count("Group job gpu_seed") == len(train_jobs)
    groups = re.split(r"Group job gpu_seed", out)[1:]
    assert all(set(re.findall(r"rule (\w+):", g)) >= {"compress", "eval", "eval_prequant", "quantize", "train"}
               for g in groups)


def test_runpod_profile_without_s3_keys_says_what_to_set(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc, out = _dry_run(env=dict(env, HOME=str(tmp_path)))
    assert proc.returncode != 0
    assert "S3 storage needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment" in out
    assert "Traceback" not in out and len(out.splitlines()) < 10
