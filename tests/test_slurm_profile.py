"""The slurm profile: the sbatch call for a train-like job carries the GPUs, time and partition
the profile sets. A fake `sbatch` on PATH records its argv and refuses the job, so no cluster is
needed and the run ends at once; the SLURM query tools are fakes that answer nothing."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# Like pgolf's train rule, the job's GPU count is its own resource (from train.nproc); the
# profile adds the model, time and partition.
SNAKEFILE = """
rule train:
    output: "model.txt"
    resources: gpu=8
    shell: "touch {output}"
"""


def first_sbatch_call(tmp_path, wd, profile: dict, env: dict | None = None) -> str:
    """Run Snakemake in `wd` with `profile` and a fake SLURM whose `sbatch` records its argv and refuses
    the job; the argv of the first submission, one string."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv_file = tmp_path / "sbatch.argv"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv_file}\necho refused >&2\nexit 1\n')
    for tool in ("sacct", "squeue", "scancel", "sinfo", "scontrol", "sacctmgr", "sshare"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    profile = {**profile, "retries": 0, "jobs": 1}
    profile["default-resources"] = {**profile["default-resources"], "slurm_account": "golf"}
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile/config.yaml").write_text(yaml.safe_dump(profile))

    env = dict(env or os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", HOME=str(tmp_path))
    env.pop("SLURM_JOB_ID", None)
    # The plugin waits ~40 s before its first status check even after a refused submission;
    # the argv is all this test needs, so the run is stopped as soon as sbatch was called.
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--profile", str(tmp_path / "profile")],
                            cwd=wd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not argv_file.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.2)  # let the fake finish writing
    proc.kill()
    out, _ = proc.communicate()
    assert argv_file.exists(), out[-3000:]
    return " ".join(argv_file.read_text().split("\n"))


def repo_profile() -> dict:
    """The repo's slurm profile, with the configfile dropped: the tests bring their own config."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    profile.pop("configfile")
    return profile


def test_sbatch_arguments_for_train(tmp_path):
    profile = repo_profile()
    wd = tmp_path / "wf"
    wd.mkdir()
    (wd / "Snakefile").write_text(SNAKEFILE)
    call = first_sbatch_call(tmp_path, wd, profile)
    set_train = profile["set-resources"]["train"]
    assert f"--gpus={set_train['gpu_model']}:8" in call
    assert f"-t {set_train['runtime']}" in call
    assert f"-p {profile['default-resources']['slurm_partition']}" in call
    assert f"--mem {set_train['mem_mb']}" in call
    assert "-A golf" in call


def test_shards_run_as_a_cluster_job(tmp_path):
    """pgolf's workflow under the slurm profile: with docs and tokenizer already built (locally, as the
    embedded default runs them), the next job, shards, goes to sbatch and does not run here."""
    wd = tmp_path / "wf"
    wd.mkdir()
    for item in ("Snakefile", "rules", "workflow", "config"):
        (shutil.copytree if (REPO / item).is_dir() else shutil.copy)(REPO / item, wd / item)
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg.update(seeds=[1], only=["baseline"])
    cfg["docs"].update(num_docs=240, num_val_docs=24)
    cfg["tokenizer"]["vocab_size"] = 384
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--until", "tokenizer"], cwd=wd, env=env,
                   check=True, capture_output=True, timeout=300)

    call = first_sbatch_call(tmp_path, wd, repo_profile(), env)
    assert "--comment rule_shards" in call
    assert not list((wd / "results").glob("shards/*/manifest.json"))


def test_bare_profile_names_resolve_after_setup(tmp_path):
    """docs/runpod.md's set-up links profiles/<name> into the user's Snakemake config dir, which
    is where Snakemake looks for a bare --profile name (after the working directory)."""
    config_home = tmp_path / "config"
    (config_home / "snakemake").mkdir(parents=True)
    for name in ("runpod", "slurm"):
        (config_home / "snakemake" / name).symlink_to(REPO / "profiles" / name)
    code = ("from snakemake.cli import get_profile_dir; "
            "print(get_profile_dir('runpod')[1].resolve()); print(get_profile_dir('slurm')[1].resolve())")
    env = dict(os.environ, XDG_CONFIG_HOME=str(config_home), HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [str(REPO / "profiles/runpod/config.yaml"), str(REPO / "profiles/slurm/config.yaml")]
