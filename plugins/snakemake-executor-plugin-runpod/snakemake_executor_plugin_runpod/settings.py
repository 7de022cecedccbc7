"""The executor's settings (`--runpod-<name>` on the command line, `runpod-<name>` in a profile)."""

from dataclasses import dataclass, field
import re
from typing import Dict, List, Optional

from snakemake_interface_executor_plugins.settings import ExecutorSettingsBase

# A RunPod-published PyTorch image (torch 2.8.0, CUDA 12.8.1, Python 3.11); its CUDA needs a host
# driver of 12.8 or later, which allowed_cuda_versions asks RunPod for.
DEFAULT_IMAGE = "runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04"
DEFAULT_CUDA_VERSIONS = "12.8,12.9,13.0"


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    api_key: Optional[str] = field(
        default=None,
        metadata={"help": "RunPod API key. Better left unset: it is then read from RUNPOD_API_KEY or "
                  "~/.runpod/config.toml. Never put it in a profile.", "env_var": True, "required": False},
    )
    gpu_type: str = field(
        default="NVIDIA H100 80GB HBM3",
        metadata={"help": "GPU type (RunPod gpuTypeId or alias such as h100-sxm) for jobs with "
                  "a gpu resource but no gpu_model resource."},
    )
    image: str = field(default=DEFAULT_IMAGE, metadata={"help": "Container image of the pods (needs python, pip, bash)."})
    allowed_cuda_versions: str = field(
        default=DEFAULT_CUDA_VERSIONS,
        metadata={"help": "Comma-separated host CUDA versions a GPU pod may land on; they must cover "
                  "the image's CUDA (an older host driver cannot start the container)."},
    )
    cloud_type: str = field(default="SECURE", metadata={"help": "SECURE, COMMUNITY or ALL."})
    container_disk_gb: int = field(
        default=50, metadata={"help": "Container disk per pod in GB; the disk_mb resource raises it."}
    )
    network_volume_id: Optional[str] = field(
        default=None, metadata={"help": "Attach this network volume (mounted at /workspace)."}
    )
    data_center_id: Optional[str] = field(
        default=None,
        metadata={"help": "Data centre (e.g. EU-RO-1): the network volume's. With S3 storage on that "
                  "volume, storage-s3-region must equal it."},
    )
    secret_env: Optional[str] = field(
        default=None,
        metadata={"help": "Comma-separated VAR=secret_name: the pod gets VAR from the RunPod secret "
                  "secret_name ({{ RUNPOD_SECRET_secret_name }}) instead of this machine's value. "
                  "Every forwarded credential (a name with KEY, SECRET, TOKEN or PASSWORD) needs one."},
    )
    setup_command: Optional[str] = field(
        default=None,
        metadata={"help": "Shell command run on the pod before the job, e.g. pip install of the "
                  "workflow's Python dependencies the image lacks."},
    )
    check_command: Optional[str] = field(
        default=None,
        metadata={"help": "Shell command run on the pod after the setup and before the job; a "
                  "non-zero exit fails the job at once (e.g. check the torch and CUDA versions)."},
    )
    usd_per_gpu_hour: float = field(
        default=0.0, metadata={"help": "Price used for the per-job cost report; 0 uses the pod's costPerHr."}
    )
    report_dir: str = field(
        default="results/pods", metadata={"help": "Folder for the per-job pod reports and pod logs."}
    )
    pod_name_prefix: str = field(
        default="snakemake",
        metadata={"help": "Pods are named <prefix>-<run id>-<job id>; cleanup matches this run's names."},
    )
    time_limit_margin_seconds: int = field(
        default=600,
        metadata={"help": "The pod stops its job at the job's runtime resource plus this margin "
                  "(start-up, downloads); a job without runtime gets 24 h."},
    )
    boot_timeout_seconds: int = field(
        default=900, metadata={"help": "Fail a job whose pod has no running container within this time."}
    )
    restart_slack_seconds: int = field(
        default=120,
        metadata={"help": "A container whose uptime lags the time since it was first seen up by more "
                  "than this was restarted: the job failed outside its script."},
    )
    capacity_wait_minutes: float = field(
        default=60,
        metadata={"help": "While RunPod has no instance with the GPUs asked for, retry creating the "
                  "pod (with back-off) for up to this long, then fail the job."},
    )
    capacity_retry_seconds: float = field(
        default=30, metadata={"help": "First wait after a no-capacity answer; doubles up to 10 min."}
    )


def split_list(text: Optional[str]) -> List[str]:
    """ "a, b,c" -> ["a", "b", "c"] (a profile or command-line list setting)."""
    return [item for item in re.split(r"[,\s]+", text or "") if item]


def secret_map(text: Optional[str]) -> Dict[str, str]:
    """ "VAR=name, VAR2=name2" -> {"VAR": "name", ...}; a malformed entry is an error."""
    pairs = {}
    for item in split_list(text):
        var, sep, name = item.partition("=")
        if not sep or not var or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(f"runpod-secret-env entry {item!r}: expected VAR=secret_name")
        pairs[var] = name
    return pairs
