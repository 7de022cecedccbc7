"""Reproducibility record: which code, software and machine produced a train.json or eval.json.

The launcher adds it, under one key ("provenance"), after the ranks exited, so the packed
submission code carries none of this. Every field is null where it does not apply (no git
checkout, no GPU, not on RunPod or SLURM), never a guess.
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
import subprocess
from pathlib import Path

import torch

from pgolf import io

# Summary column -> the provenance field it collects (distinct values over an ablation's seeds).
SUMMARY_FIELDS = {"git_commit": "git_commit", "git_dirty": "git_dirty", "pgolf_version": "pgolf_version",
                  "torch_version": "torch_version", "cuda_version": "cuda_version",
                  "cudnn_version": "cudnn_version", "triton_version": "triton_version",
                  "gpu_model": "gpu_model", "gpu_driver": "gpu_driver", "hosts": "host_id"}


def _run(cmd: list[str], cwd=None) -> str | None:
    """stdout of a short command, or None when it is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(repo_root: Path) -> dict:
    """The checkout's commit and whether tracked or untracked (not ignored) files differ from it."""
    commit = _run(["git", "rev-parse", "HEAD"], cwd=repo_root)
    status = _run(["git", "status", "--porcelain"], cwd=repo_root) if commit else None
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def software() -> dict:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"pgolf_version": _version("pgolf"), "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda, "cudnn_version": cudnn,
            "triton_version": _version("triton") if torch.cuda.is_available() else None}


def visible_gpus(env: dict | None = None) -> list[dict]:
    """nvidia-smi's view of the GPUs this job may use (CUDA_VISIBLE_DEVICES by index or UUID), without
    creating a CUDA context in the launcher."""
    env = os.environ if env is None else env
    out = _run(["nvidia-smi", "--query-gpu=index,uuid,name,driver_version", "--format=csv,noheader"])
    if not out:
        return []
    gpus = [dict(zip(("index", "uuid", "name", "driver"), (f.strip() for f in line.split(","))))
            for line in out.splitlines()]
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        wanted = {v.strip() for v in visible.split(",") if v.strip()}
        gpus = [g for g in gpus if g["index"] in wanted or g["uuid"] in wanted]
    return gpus


def host(env: dict | None = None) -> dict:
    env = os.environ if env is None else env
    pod, job = env.get("RUNPOD_POD_ID"), env.get("SLURM_JOB_ID")
    hostname = socket.gethostname()
    host_id = f"runpod:{pod}" if pod else f"slurm:{job}@{hostname}" if job else hostname
    return {"hostname": hostname, "runpod_pod_id": pod, "slurm_job_id": job, "host_id": host_id}


def collect(repo_root: Path, device: str, env: dict | None = None) -> dict:
    """The whole record for a job that ran on `device` ("cpu", "cuda:0", ...)."""
    gpus = visible_gpus(env) if str(device).startswith("cuda") else []
    return {**git_state(repo_root), **software(), **host(env),
            "gpu_model": ",".join(sorted({g["name"] for g in gpus})) or None,
            "gpu_driver": ",".join(sorted({g["driver"] for g in gpus})) or None}


def stamp(json_path: Path, repo_root: Path, **launcher_fields) -> None:
    """Add the record (and what else the launcher knows, e.g. placement) to a stage's JSON in one atomic
    rewrite; its `device` says whether GPUs apply."""
    record = {**io.read_json(json_path), **launcher_fields}
    record["provenance"] = collect(repo_root, record.get("device", "cpu"))
    io.write_json(json_path, record)


def summary_columns(records: list[dict]) -> dict:
    """Distinct values of each field over the records (train and eval of every seed), ';'-joined;
    git_dirty is true when any record's checkout was dirty."""
    columns = {}
    for column, field in SUMMARY_FIELDS.items():
        values = [r.get(field) for r in records if r and r.get(field) is not None]
        if column == "git_dirty":
            columns[column] = any(values) if values else None
        else:
            columns[column] = ";".join(sorted({str(v) for v in values})) or None
    return columns
