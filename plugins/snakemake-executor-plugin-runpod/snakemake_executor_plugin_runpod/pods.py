"""What a RunPod pod for one Snakemake job looks like: GPU type and count, disk, environment,
the start command and the per-job cost report. Pure functions, no API calls, so pre-flight
checks and the tests can use them without a RunPod account."""

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

# RunPod's gpuTypeId strings for common training GPUs, with short aliases.
# "H100 SXM" is what RunPod calls "NVIDIA H100 80GB HBM3".
GPU_TYPES = {
    "NVIDIA H100 80GB HBM3": ("h100", "h100-sxm", "h100_sxm", "h100 sxm"),
    "NVIDIA H100 PCIe": ("h100-pcie", "h100_pcie", "h100 pcie"),
    "NVIDIA H100 NVL": ("h100-nvl", "h100_nvl", "h100 nvl"),
    "NVIDIA H200": ("h200", "h200-sxm", "h200_sxm"),
    "NVIDIA B200": ("b200",),
    "NVIDIA A100-SXM4-80GB": ("a100", "a100-sxm", "a100_sxm", "a100 sxm"),
    "NVIDIA A100 80GB PCIe": ("a100-pcie", "a100_pcie", "a100 pcie"),
    "NVIDIA L40S": ("l40s",),
    "NVIDIA L4": ("l4",),
    "NVIDIA A40": ("a40",),
    "NVIDIA RTX A6000": ("a6000", "rtx-a6000"),
    "NVIDIA RTX 6000 Ada Generation": ("rtx6000-ada", "6000-ada"),
    "NVIDIA GeForce RTX 4090": ("rtx4090", "4090"),
    "NVIDIA GeForce RTX 3090": ("rtx3090", "3090"),
}
_ALIASES = {alias: gpu_id for gpu_id, aliases in GPU_TYPES.items() for alias in aliases}
_ALIASES.update({gpu_id.lower(): gpu_id for gpu_id in GPU_TYPES})

# RunPod rents 1, 2, 4 or 8 GPUs of one type on one pod; torchrun's world size follows.
VALID_GPU_COUNTS = (1, 2, 4, 8)

class PodSpecError(ValueError):
    """A job asks for a pod RunPod cannot give (unknown GPU type, bad count)."""


def canonical_gpu_type(name: str) -> str:
    """RunPod's gpuTypeId for a name or alias ("H100 SXM" -> "NVIDIA H100 80GB HBM3")."""
    key = str(name).strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    known = ", ".join(sorted(GPU_TYPES))
    raise PodSpecError(f"unknown RunPod GPU type {name!r}; known types: {known}")


def check_gpu_count(count) -> int:
    try:
        n = int(count)
    except (TypeError, ValueError):
        raise PodSpecError(f"resource gpu must be an integer, got {count!r}") from None
    if n != 0 and n not in VALID_GPU_COUNTS:
        raise PodSpecError(f"resource gpu={n}: a RunPod pod has one of {VALID_GPU_COUNTS} GPUs (or 0: CPU pod)")
    return n


@dataclass(frozen=True)
class PodSpec:
    gpu_type_id: Optional[str]   # None: a CPU pod
    gpu_count: int
    container_disk_gb: int
    runtime_seconds: Optional[int]


def pod_spec(resources: Mapping, default_gpu_type: str, default_disk_gb: int) -> PodSpec:
    """Map Snakemake resources to pod settings.

    gpu (count; 0 or absent means a CPU pod), gpu_model (type name or alias), disk_mb (container
    disk; never below the default), runtime (minutes, as Snakemake defines it)."""
    gpu_count = check_gpu_count(resources.get("gpu", 0) or 0)
    gpu_type = canonical_gpu_type(resources.get("gpu_model") or default_gpu_type) if gpu_count else None
    disk_mb = resources.get("disk_mb") or 0
    disk_gb = max(int(default_disk_gb), math.ceil(float(disk_mb) / 1000))
    runtime_min = resources.get("runtime")
    runtime_s = int(float(runtime_min) * 60) if runtime_min else None
    return PodSpec(gpu_type, gpu_count, disk_gb, runtime_s)


def pod_env(gpu_count: int, extra: Mapping[str, str]) -> dict:
    """Environment for the job on the pod. On one 8xH100 SXM node the GPUs talk over NVLink;
    NCCL picks it, these settings only make failures loud and bounded instead of hangs."""
    env = {
        "NCCL_DEBUG": "WARN",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "TORCH_NCCL_BLOCKING_WAIT": "0",
        "PYTHONUNBUFFERED": "1",
    }
    if gpu_count > 1:
        env["NCCL_P2P_LEVEL"] = "NVL"
    env.update(extra)
    return env


def pod_name(prefix: str, run_id: str, jobid) -> str:
    """The name tag that marks a pod as this workflow run's; cleanup matches on its prefix."""
    return f"{name_prefix(prefix, run_id)}{jobid}"


def name_prefix(prefix: str, run_id: str) -> str:
    return f"{prefix}-{run_id}-"


def cost_report(*, run_id, job, outputs, pod_id, spec: PodSpec, wall_seconds: float,
                usd_per_gpu_hour: float, outcome: str, pod_cost_per_hour: Optional[float] = None) -> dict:
    """One JSON line per job so aggregate can sum GPU-hours and dollars.
    usd_per_gpu_hour > 0 wins; otherwise the pod's own costPerHr (whole pod) is used."""
    gpu_hours = spec.gpu_count * wall_seconds / 3600.0
    if usd_per_gpu_hour > 0:
        cost = gpu_hours * usd_per_gpu_hour
    elif pod_cost_per_hour:
        cost = float(pod_cost_per_hour) * wall_seconds / 3600.0
    else:
        cost = 0.0
    return {
        "run_id": run_id,
        "jobid": job.jobid if isinstance(job.jobid, int) else str(job.jobid),
        "rule": job.name,
        "wildcards": {} if job.is_group() else dict(job.wildcards or {}),
        "jobs": [{"rule": j.name, "wildcards": dict(j.wildcards or {})}
                 for j in (job.jobs if job.is_group() else [job])],
        "attempt": job.attempt,
        "outputs": list(outputs),
        "pod_id": pod_id,
        "gpu_type": spec.gpu_type_id or "cpu",
        "gpu_count": spec.gpu_count,
        "wall_seconds": round(wall_seconds, 3),
        "gpu_hours": round(gpu_hours, 6),
        "usd_per_gpu_hour": usd_per_gpu_hour,
        "cost_usd": round(cost, 4),
        "outcome": outcome,
    }


def report_path(report_dir: Path, run_id: str, key: str, suffix: str = ".json") -> Path:
    return Path(report_dir) / f"{run_id}-{key}{suffix}"


def write_text_atomic(path: Path, text: str) -> Path:
    """Write a file whole or not at all (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def write_report(report_dir: Path, report: dict) -> Path:
    """Write `<report_dir>/<run_id>-<jobid>.json` atomically (one JSON object on one line)."""
    path = report_path(report_dir, report["run_id"], str(report["jobid"]))
    return write_text_atomic(path, json.dumps(report, sort_keys=True) + "\n")


def job_key(job) -> str:
    """The job id as it appears in pod names, storage paths and report file names: an integer
    for a single job, a UUID string for a group job."""
    return str(job.jobid)


def job_label(job) -> str:
    return f"job {job_key(job)} ({'group ' if job.is_group() else 'rule '}{job.name}) attempt {int(job.attempt)}"
