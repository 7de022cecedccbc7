"""`snakemake --profile runpod -n results/ablation_summary.tsv` from the repo root: the bare
profile name resolves, the RunPod executor plugin is found, the challenge config validates, and
train and eval jobs ask for the challenge's 8 GPUs and CPU stages for none. The S3 default storage is
swapped for a local folder so the dry run needs no bucket credentials."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_runpod_profile_dry_run_from_repo_root(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "runpod", "-n", "results/ablation_summary.tsv",
         "--default-storage-provider", "fs", "--default-storage-prefix", str(tmp_path / "store")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
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
