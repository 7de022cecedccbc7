import os
import subprocess
import sys

import torch

from pgolf import io
from pgolf.provenance import collect, git_state, host, stamp, summary_columns, visible_gpus

# What `nvidia-smi --query-gpu=index,uuid,name,driver_version --format=csv,noheader` prints on a 2-GPU host.
NVIDIA_SMI_OUTPUT = ("0, GPU-1111aaaa-0000-0000-0000-000000000000, NVIDIA H100 80GB HBM3, 550.54.15\n"
                     "1, GPU-2222bbbb-0000-0000-0000-000000000000, NVIDIA H100 80GB HBM3, 550.54.15\n")


def git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_git_state_sees_the_commit_and_a_dirty_checkout(tmp_path):
    assert git_state(tmp_path) == {"git_commit": None, "git_dirty": None}  # not a checkout: no guess
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-qm", "a")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_state(tmp_path) == {"git_commit": head, "git_dirty": False}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path) == {"git_commit": head, "git_dirty": True}


def fake_nvidia_smi(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write({NVIDIA_SMI_OUTPUT!r})\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_visible_gpus_follow_cuda_visible_devices_by_index_or_uuid(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch)
    assert [g["index"] for g in visible_gpus({})] == ["0", "1"]
    assert [g["index"] for g in visible_gpus({"CUDA_VISIBLE_DEVICES": "1"})] == ["1"]
    by_uuid = visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-1111aaaa-0000-0000-0000-000000000000"})
    assert [g["index"] for g in by_uuid] == ["0"]
    record = collect(tmp_path, "cuda:0", {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert (record["gpu_model"], record["gpu_driver"]) == ("NVIDIA H100 80GB HBM3", "550.54.15")
    assert collect(tmp_path, "cpu", {})["gpu_model"] is None  # a CPU job names no GPU


def test_host_id_prefers_the_pod_then_the_slurm_job():
    assert host({"RUNPOD_POD_ID": "abc123", "SLURM_JOB_ID": "7"})["host_id"] == "runpod:abc123"
    assert host({"SLURM_JOB_ID": "7"})["host_id"].startswith("slurm:7@")
    plain = host({})
    assert plain["host_id"] == plain["hostname"] and plain["runpod_pod_id"] is None


def test_stamp_adds_one_nested_key_and_keeps_the_rest(tmp_path):
    path = tmp_path / "train.json"
    io.write_json(path, {"steps": 3, "device": "cpu"})
    stamp(path, tmp_path, placement={"placed_by": "pgolf"})
    record = io.read_json(path)
    assert record["steps"] == 3 and set(record) == {"steps", "device", "placement", "provenance"}
    assert record["placement"] == {"placed_by": "pgolf"}
    assert record["provenance"]["torch_version"] == torch.__version__ and record["provenance"]["cuda_version"] == torch.version.cuda


def test_summary_columns_join_distinct_values_and_any_dirty():
    records = [{"git_commit": "b", "git_dirty": False, "host_id": "h1"},
               {"git_commit": "a", "git_dirty": True, "host_id": "h1"}, None]
    columns = summary_columns(records)
    assert columns["git_commit"] == "a;b" and columns["git_dirty"] is True and columns["hosts"] == "h1"
    assert summary_columns([{}])["git_dirty"] is None and summary_columns([{}])["torch_version"] is None
