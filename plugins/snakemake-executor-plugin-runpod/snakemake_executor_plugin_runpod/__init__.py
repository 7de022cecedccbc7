"""Snakemake executor plugin for RunPod: one pod per job, files through the default storage.

Design (after the vast.ai executor, bards-ai/snakemake-executor-plugin-vastai, storage mode):
- run_job rents one pod per job with the GPUs the job's resources ask for. The pod's start
  command runs the job's `snakemake --target-jobs ...` line (format_job_exec), which deploys the
  workflow sources from the default storage, retrieves the inputs from it and stores the outputs
  back into it (S3: a bucket, or a RunPod network volume through its S3 API).
- check_active_jobs polls the pod. All of the job's outputs present in storage means success;
  a pod that exits, stops or disappears (preempted, terminated) without them means failure, and
  Snakemake's --retries resubmit it on a fresh pod. A pod past its runtime budget fails too.
- Every pod is terminated when its job ends, on cancel (Ctrl-C), at exit and on SIGTERM/SIGHUP.
  Only pods this run created, or whose name carries this run's tag <pod_name_prefix>-<run_id>-,
  are touched.
- Each job leaves <report_dir>/<run_id>-<jobid>.json: pod id, GPU type and count, wall seconds,
  GPU-hours and cost, for aggregate to sum.
"""

import atexit
import importlib.metadata
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncGenerator, List, Optional

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.settings import CommonSettings, ExecutorSettingsBase

from .api import Redactor, RunPodApi, resolve_api_key
from .pods import (
    JOB_SCRIPT_ENV,
    PodSpecError,
    cost_report,
    docker_args,
    encode_script,
    graphql_escape,
    job_label,
    job_script,
    name_prefix,
    pod_env,
    pod_name,
    pod_spec,
    write_report,
)

# Storage credentials in the local environment, forwarded so the pod can reach the bucket.
CREDENTIAL_ENVVARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
)

# Status API failures tolerated in a row before a pod is declared lost.
MAX_STATUS_API_MISSES = 5


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    api_key: Optional[str] = field(
        default=None,
        metadata={
            "help": "RunPod API key. Better left unset: it is then read from RUNPOD_API_KEY or "
            "~/.runpod/config.toml. Never put it in a profile.",
            "env_var": True,
            "required": False,
        },
    )
    gpu_type: str = field(
        default="NVIDIA H100 80GB HBM3",
        metadata={"help": "GPU type (RunPod gpuTypeId or alias such as h100-sxm) for jobs with "
                  "a gpu resource but no gpu_model resource."},
    )
    image: str = field(
        default="runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
        metadata={"help": "Container image of the pods (needs python, pip and bash)."},
    )
    cloud_type: str = field(
        default="SECURE", metadata={"help": "SECURE, COMMUNITY or ALL."}
    )
    container_disk_gb: int = field(
        default=50, metadata={"help": "Container disk per pod in GB; the disk_mb resource raises it."}
    )
    network_volume_id: Optional[str] = field(
        default=None, metadata={"help": "Attach this network volume (mounted at /workspace)."}
    )
    data_center_id: Optional[str] = field(
        default=None, metadata={"help": "Data center (must match the network volume's)."}
    )
    setup_command: Optional[str] = field(
        default=None,
        metadata={"help": "Shell command run on the pod before the job, e.g. pip install of the "
                  "workflow's Python dependencies the image lacks."},
    )
    usd_per_gpu_hour: float = field(
        default=0.0,
        metadata={"help": "Price used for the per-job cost report; 0 uses the pod's costPerHr."},
    )
    report_dir: str = field(
        default="results/pods", metadata={"help": "Folder for the per-job pod reports (JSON)."}
    )
    boot_timeout_seconds: int = field(
        default=1200, metadata={"help": "Fail a job whose pod does not start within this time."}
    )
    runtime_grace_seconds: int = field(
        default=600,
        metadata={"help": "Seconds past the job's runtime resource before its pod is terminated."},
    )
    pod_name_prefix: str = field(
        default="snakemake",
        metadata={"help": "Pods are named <prefix>-<run id>-<job id>; cleanup matches this run's names."},
    )


common_settings = CommonSettings(
    non_local_exec=True,
    implies_no_shared_fs=True,
    job_deploy_sources=True,
    pass_default_storage_provider_args=True,
    pass_default_resources_args=True,
    # Envvars go into the pod's environment, not into the command line (which RunPod shows).
    pass_envvar_declarations_to_cmd=False,
    auto_deploy_default_storage_provider=True,
    # Pods take minutes to start; the first checks are cheap GraphQL queries.
    init_seconds_before_status_checks=0,
)


class Executor(RemoteExecutor):
    def __post_init__(self):
        self.settings: ExecutorSettings = self.workflow.executor_settings
        self.run_id = uuid.uuid4().hex[:8]
        self.redactor = Redactor()
        self.redactor.install()
        self.report_dir = Path(self.settings.report_dir)
        self._created: dict = {}       # pod id -> pod name, every pod this run rented
        self._terminated: set = set()
        self._create_attempted = False
        # Validate every job's pod before the first API call: a bad GPU type costs nothing.
        self._run_preflight()
        self.api = RunPodApi(resolve_api_key(self.settings.api_key), self.redactor)
        self.redactor.add(*self._forwarded_env().values())
        self.logger.info(f"RunPod executor: run id {self.run_id}, pods named {name_prefix(self.settings.pod_name_prefix, self.run_id)}<jobid>")
        atexit.register(self._emergency_cleanup)
        self._install_signal_cleanup()

    # ---------------------------------------------------------------- pre-flight
    def _run_preflight(self):
        for job in self.workflow.dag.needrun_jobs():
            if job.is_local:
                continue
            try:
                pod_spec(job.resources, self.settings.gpu_type, self.settings.container_disk_gb)
            except PodSpecError as e:
                raise WorkflowError(f"RunPod pre-flight, rule {job.name}: {e}") from None

    # ---------------------------------------------------------------- submission
    def _forwarded_env(self) -> dict:
        env = {k: os.environ[k] for k in CREDENTIAL_ENVVARS if os.environ.get(k)}
        env.update(self.envvars())  # storage plugin secrets and declared --envvars
        return env

    def run_job(self, job: JobExecutorInterface):
        try:
            spec = pod_spec(job.resources, self.settings.gpu_type, self.settings.container_disk_gb)
        except PodSpecError as e:
            self.report_job_error(SubmittedJobInfo(job), msg=str(e))
            return
        script = job_script(
            self.format_job_exec(job),
            job_label(job),
            importlib.metadata.version("snakemake"),
            self.settings.setup_command,
        )
        env = pod_env(spec.gpu_count, self._forwarded_env())
        env[JOB_SCRIPT_ENV] = encode_script(script)
        name = pod_name(self.settings.pod_name_prefix, self.run_id, job.jobid)
        kwargs = dict(
            name=name,
            image_name=self.settings.image,
            gpu_type_id=spec.gpu_type_id,
            gpu_count=max(spec.gpu_count, 1),
            cloud_type=self.settings.cloud_type,
            container_disk_in_gb=spec.container_disk_gb,
            volume_in_gb=0,
            docker_args=graphql_escape(docker_args()),
            env={k: graphql_escape(v) for k, v in env.items()},
            network_volume_id=self.settings.network_volume_id,
            data_center_id=self.settings.data_center_id,
            min_vcpu_count=max(int(job.threads), 1),
            min_memory_in_gb=max(int(float(job.resources.get("mem_mb", 0) or 0) / 1000), 1),
        )
        if self.settings.network_volume_id:
            kwargs["volume_mount_path"] = "/workspace"
        submitted = time.time()
        self._create_attempted = True
        try:
            pod = self.api.create_pod(**kwargs)
        except WorkflowError as e:
            # No capacity, bad request...: a job error, so --retries applies.
            self.report_job_error(SubmittedJobInfo(job), msg=str(e))
            return
        pod_id = pod["id"]
        self._created[pod_id] = name
        self.logger.info(
            f"Job {job.jobid} ({job.name}): pod {pod_id} '{name}', "
            f"{spec.gpu_count}x {spec.gpu_type_id or 'CPU'}"
        )
        self.report_job_submission(
            SubmittedJobInfo(
                job,
                external_jobid=pod_id,
                aux={"spec": spec, "submitted": submitted, "started": None, "misses": 0, "cost_per_hr": None},
            )
        )

    # ---------------------------------------------------------------- status
    async def check_active_jobs(self, active_jobs: List[SubmittedJobInfo]) -> AsyncGenerator[SubmittedJobInfo, None]:
        for job_info in active_jobs:
            async with self.status_rate_limiter:
                still_running = self._check(job_info)
            if still_running:
                yield job_info

    def _check(self, job_info: SubmittedJobInfo) -> bool:
        aux, pod_id = job_info.aux, job_info.external_jobid
        try:
            pod = self.api.get_pod(pod_id)
            aux["misses"] = 0
        except WorkflowError as e:
            aux["misses"] += 1
            if aux["misses"] > MAX_STATUS_API_MISSES:
                self._finish(job_info, f"lost contact with pod ({e})")
                return False
            self.logger.warning(f"{e} ({aux['misses']}/{MAX_STATUS_API_MISSES})")
            return True
        now = time.time()
        if not pod:
            self._finish(job_info, "pod disappeared (terminated or preempted) before the job's outputs were stored")
            return False
        if pod.get("costPerHr"):
            aux["cost_per_hr"] = pod["costPerHr"]
        status = pod.get("desiredStatus")
        if status == "RUNNING" and pod.get("runtime"):
            aux["started"] = aux["started"] or now
        if self._outputs_present(job_info.job):
            self._finish(job_info, None)
            return False
        if status in ("EXITED", "TERMINATED", "STOPPED", "FAILED"):
            self._finish(job_info, f"pod {status.lower()} without the job's outputs in storage "
                         f"(last status: {pod.get('lastStatusChange')!r}); the job failed on the pod")
            return False
        spec = aux["spec"]
        if aux["started"] is None and now - aux["submitted"] > self.settings.boot_timeout_seconds:
            self._finish(job_info, f"pod did not start within {self.settings.boot_timeout_seconds} s")
            return False
        if spec.runtime_seconds and aux["started"] and \
                now - aux["started"] > spec.runtime_seconds + self.settings.runtime_grace_seconds:
            self._finish(job_info, f"job exceeded its runtime of {spec.runtime_seconds} s "
                         f"(+{self.settings.runtime_grace_seconds} s grace)")
            return False
        return True

    def _output_paths(self, job: JobExecutorInterface) -> list:
        """Outputs as the workflow names them (storage query without the default prefix)."""
        prefix = (self.workflow.storage_settings.default_storage_prefix or "").rstrip("/")
        paths = []
        for f in job.output:
            query = f.storage_object.query if getattr(f, "is_storage", False) else str(f)
            paths.append(query[len(prefix) + 1:] if prefix and query.startswith(prefix + "/") else query)
        return paths

    def _outputs_present(self, job: JobExecutorInterface) -> bool:
        """All of the job's outputs exist in the default storage: the job succeeded on the pod
        (Snakemake stores outputs only after the job's command has succeeded)."""
        outputs = [f for f in job.output if getattr(f, "is_storage", False)]
        if not outputs:
            return False
        try:
            return all(f.storage_object.exists() for f in outputs)
        except Exception as e:  # noqa: BLE001 - a storage hiccup is retried on the next poll
            self.logger.debug(self.redactor.scrub(f"RunPod executor: output check failed: {e}"))
            return False

    def _finish(self, job_info: SubmittedJobInfo, error: Optional[str], outcome: Optional[str] = None):
        """Terminate the pod, write its report, and tell Snakemake how the job ended."""
        pod_id, aux = job_info.external_jobid, job_info.aux
        self._terminate(pod_id)
        report = cost_report(
            run_id=self.run_id, job=job_info.job, outputs=self._output_paths(job_info.job), pod_id=pod_id, spec=aux["spec"],
            wall_seconds=time.time() - aux["submitted"], usd_per_gpu_hour=self.settings.usd_per_gpu_hour,
            outcome=outcome or ("failed" if error else "success"), pod_cost_per_hour=aux.get("cost_per_hr"),
        )
        path = write_report(self.report_dir, report)
        self.logger.info(f"Pod {pod_id}: {report['outcome']}, {report['wall_seconds']:.0f} s, "
                         f"{report['gpu_hours']:.4f} GPU-h, ${report['cost_usd']:.2f} ({path})")
        if outcome == "cancelled":
            return
        if error:
            self.report_job_error(job_info, msg=self.redactor.scrub(f"RunPod pod {pod_id}: {error}. "))
        else:
            self.report_job_success(job_info)

    # ---------------------------------------------------------------- teardown
    def _terminate(self, pod_id: str):
        if pod_id in self._terminated:
            return
        try:
            self.api.terminate_pod(pod_id)
            self._terminated.add(pod_id)
        except WorkflowError as e:
            self.logger.error(f"{e}. Terminate pod {pod_id} by hand at https://www.runpod.io/console/pods "
                              "to stop billing.")

    def cancel_jobs(self, active_jobs: List[SubmittedJobInfo]):
        for job_info in active_jobs:
            self.logger.info(f"Cancelling job {job_info.job.jobid}: terminating pod {job_info.external_jobid}")
            self._finish(job_info, None, outcome="cancelled")
        self._emergency_cleanup()

    def _emergency_cleanup(self):
        """Terminate every pod of this run still alive: the ones we know, and any pod whose name
        carries this run's tag (a create whose answer was lost). Never any other pod."""
        for pod_id in sorted(set(self._created) - self._terminated):
            self._terminate(pod_id)
        if not self._create_attempted:
            return
        prefix = name_prefix(self.settings.pod_name_prefix, self.run_id)
        try:
            pods = self.api.list_pods()
        except WorkflowError as e:
            self.logger.warning(str(e))
            return
        for pod in pods:
            if str(pod.get("name", "")).startswith(prefix) and pod.get("id") not in self._terminated:
                self._terminate(pod["id"])

    def _install_signal_cleanup(self):
        """SIGTERM/SIGHUP skip atexit; clean up first, then let the previous handler act."""
        def chained(previous):
            def handler(signum, frame):
                self._emergency_cleanup()
                if callable(previous):
                    previous(signum, frame)
                elif previous is not signal.SIG_IGN:
                    signal.signal(signum, signal.SIG_DFL)
                    signal.raise_signal(signum)
            return handler

        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                signal.signal(sig, chained(signal.getsignal(sig)))
            except ValueError:  # not the main thread; atexit still covers normal exits
                pass
