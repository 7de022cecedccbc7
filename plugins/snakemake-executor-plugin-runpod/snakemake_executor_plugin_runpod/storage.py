"""The executor's side of the default storage: checks before any pod, the per-attempt status a pod
stores (exit code and log), and removing a job's old outputs before its pod is rented."""

import os
from pathlib import Path
from typing import Mapping, Optional

from snakemake_interface_common.exceptions import WorkflowError

# Where pods store each attempt's exit code and log, under the default storage prefix.
STATUS_ROOT = ".snakemake-runpod"

# S3 keys a pod needs in its environment: it has no ~/.aws, and boto3 on the workflow host would
# otherwise find them there and pass the dry run, then fail on the pod.
S3_KEY_SETTINGS = {"AWS_ACCESS_KEY_ID": "access_key", "AWS_SECRET_ACCESS_KEY": "secret_key"}


def status_dir(run_id: str, job_key: str, attempt: int) -> str:
    return f"{STATUS_ROOT}/{run_id}/{job_key}/attempt{int(attempt)}"


def check_s3(settings, environ: Mapping[str, str] = os.environ, data_center_id: Optional[str] = None):
    """Stop before any pod when the S3 default storage lacks keys, or when a RunPod network volume's
    S3 API would be called with a region other than its data centre id (its S3 API's region)."""
    missing = [var for var, field in S3_KEY_SETTINGS.items()
               if not environ.get(var) and not getattr(settings, field, None)]
    if missing:
        raise WorkflowError(
            f"S3 default storage without credentials: export {' and '.join(missing)} "
            "(a RunPod network volume: its S3 API keys, and AWS_ENDPOINT_URL="
            "https://s3api-<data centre id>.runpod.io). Keys only in ~/.aws are not seen by pods."
        )
    if data_center_id:
        region = getattr(settings, "region", None) or ""
        if region.lower() != data_center_id.lower():
            raise WorkflowError(
                f"The network volume's S3 API wants its data centre id as region: set "
                f"storage-s3-region: {data_center_id} in the profile (now {region or 'unset'!r})."
            )
        endpoint = getattr(settings, "endpoint_url", None) or environ.get("AWS_ENDPOINT_URL", "")
        if data_center_id.lower() not in endpoint.lower():
            raise WorkflowError(
                f"AWS_ENDPOINT_URL (or storage-s3-endpoint-url) must be "
                f"https://s3api-{data_center_id.lower()}.runpod.io for data centre {data_center_id} "
                f"(now {endpoint or 'unset'!r})."
            )


class BadStatus(WorkflowError):
    """A pod stored something that is not an exit code."""


class StatusStore:
    """Reads what a pod stored for one attempt, through the workflow's default storage provider."""

    def __init__(self, provider, prefix: str):
        self.provider = provider
        self.prefix = prefix.rstrip("/")

    def _object(self, path: str):
        return self.provider.object(f"{self.prefix}/{path}", retrieve=True, keep_local=False)

    def exit_code(self, status: str) -> Optional[int]:
        """The attempt's exit code, or None while the pod has not stored one."""
        obj = self._object(f"{status}/exit_code")
        if not obj.exists():
            return None
        text = self._read(obj).strip()
        try:
            return int(text)
        except ValueError:
            raise BadStatus(f"{status}/exit_code in storage holds {text[:40]!r}, not an exit code") from None

    def log(self, status: str) -> Optional[str]:
        obj = self._object(f"{status}/pod.log")
        return self._read(obj) if obj.exists() else None

    def remove(self, status: str):
        for name in ("exit_code", "pod.log"):
            obj = self._object(f"{status}/{name}")
            if obj.exists():
                obj.remove()

    @staticmethod
    def _read(obj) -> str:
        path = Path(obj.local_path())
        path.parent.mkdir(parents=True, exist_ok=True)
        obj.retrieve_object()
        try:
            return path.read_text(errors="replace")
        finally:
            path.unlink(missing_ok=True)


def remove_stale_outputs(job) -> list:
    """Delete the job's outputs that exist in storage from an earlier run, so that nothing a
    failed attempt leaves behind can pass for this run's result. Returns what was removed."""
    removed = []
    for f in (f for j in (job.jobs if job.is_group() else [job]) for f in j.output):
        obj = getattr(f, "storage_object", None) if getattr(f, "is_storage", False) else None
        if obj is not None and obj.exists():
            obj.remove()
            removed.append(obj.query)
    return removed
