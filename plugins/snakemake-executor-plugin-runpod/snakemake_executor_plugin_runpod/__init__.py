"""Snakemake executor plugin for RunPod: one pod per job or group job, files through the default
storage (an S3 bucket, or a RunPod network volume through its S3 API).

- run_job removes the job's old outputs from storage, then rents a pod with the GPUs the job's
  resources ask for. Its start command runs the job script (script.py): the job's own
  `snakemake --target-jobs ...` line under a pod-side time limit, then the job's exit code and
  log stored for this attempt. No capacity: the create call is retried with back-off.
- check_active_jobs polls each pod: the stored exit code decides success or failure; a pod that
  stopped, vanished, never started a container, or whose container restarted, fails the job
  within minutes (watch.py). Snakemake's --retries then rent a fresh pod.
- Before terminating a pod the executor saves its log to <report_dir>/<run id>-<job id>.log and
  writes <run id>-<job id>.json (GPU-hours and cost; format: this package's README).
- Every pod is terminated when its job ends, on cancel (Ctrl-C), at exit and on SIGTERM/SIGHUP.
  Only pods this run created, or whose name carries this run's tag <pod_name_prefix>-<run_id>-,
  are touched.
"""

import atexit
import importlib.metadata
import os
import re
import signal
import time
import uuid
from pathlib import Path
from typing import AsyncGenerator, List, Optional

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.settings import CommonSettings

from .api import Redactor, RunPodApi, RunPodApiError, graphql_escape, is_no_capacity, resolve_api_key
from .pods import (PodSpecError, cost_report, job_key, job_label, name_prefix, pod_env, pod_name, pod_spec,
                   report_path, write_report, write_text_atomic)
from .script import GPUS_ENV, JOB_SCRIPT_ENV, JobScript, docker_args, encode_script, job_script
from .settings import ExecutorSettings, secret_map, split_list
from .storage import BadStatus, StatusStore, check_s3, remove_stale_outputs, status_dir
from .watch import Limits, Watch, outcome_of_exit_code, pod_failure

__all__ = ["ExecutorSettings", "Executor", "common_settings"]

# Storage credentials in the local environment, forwarded so the pod can reach the bucket.
CREDENTIAL_ENVVARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
)
# Forwarded variables whose values must reach the pod as RunPod secrets, never as plain values.
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)

# Status API failures tolerated in a row before a pod is declared lost.
MAX_STATUS_API_MISSES = 5
# A job without a runtime resource still gets a pod-side limit.
DEFAULT_TIME_LIMIT_SECONDS = 24 * 3600
# After the pod-side limit (+ the KILL grace of `timeout`) the pod has this long to store its code.
OVERDUE_GRACE_SECONDS = 300
MAX_CAPACITY_BACKOFF_SECONDS = 600


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
        # Everything that can be checked without renting is checked before the first API call.
        self._check_pods_possible()
        self.store = self._status_store()
        self.pod_env_values = self._pod_credentials()
        self.api = RunPodApi(resolve_api_key(self.settings.api_key), self.redactor)
        self.logger.info(f"RunPod executor: run id {self.run_id}, pods named "
                         f"{name_prefix(self.settings.pod_name_prefix, self.run_id)}<jobid>")
        atexit.register(self._emergency_cleanup)
        self._install_signal_cleanup()

    # ---------------------------------------------------------------- checks before any pod
    def _check_pods_possible(self):
        for job in self.workflow.dag.needrun_jobs():
            if job.is_local:
                continue
            try:
                pod_spec(job.resources, self.settings.gpu_type, self.settings.container_disk_gb)
            except PodSpecError as e:
                raise WorkflowError(f"RunPod pre-flight, rule {job.name}: {e}") from None

    def _status_store(self) -> StatusStore:
        storage = self.workflow.storage_settings
        provider = self.workflow.storage_registry.default_storage_provider
        if provider is None or not storage.default_storage_prefix:
            raise WorkflowError("The RunPod executor moves files through the default storage: set "
                                "default-storage-provider and default-storage-prefix (e.g. s3, s3://bucket/run).")
        if storage.default_storage_provider == "s3":
            tagged = self.workflow.storage_provider_settings.get("s3")
            check_s3(tagged.get_settings() if tagged else None, os.environ, self.settings.data_center_id)
        return StatusStore(provider, storage.default_storage_prefix)

    def _pod_credentials(self) -> dict:
        """The environment the pod needs to reach the storage: plain values for non-secrets, RunPod
        secret references for credentials. A credential without a secret stops the run here."""
        try:
            secrets = secret_map(self.settings.secret_env)
        except ValueError as e:
            raise WorkflowError(str(e)) from None
        env = {k: os.environ[k] for k in CREDENTIAL_ENVVARS if os.environ.get(k)}
        env.update(self.envvars())  # storage plugin settings and declared --envvars
        self.redactor.add(*env.values())
        plain = [k for k in env if SECRET_NAME.search(k) and k not in secrets]
        if plain:
            raise WorkflowError(
                f"{', '.join(sorted(plain))} would reach the pods as plain environment values, which the "
                "RunPod console and API show. Create a RunPod secret for each (console: Secrets) and map "
                f"them with runpod-secret-env, e.g. {plain[0]}={plain[0].lower()}.")
        env.update({k: "{{ RUNPOD_SECRET_%s }}" % name for k, name in secrets.items() if k in env})
        return env

    # ---------------------------------------------------------------- submission
    def run_job(self, job: JobExecutorInterface):
        try:
            spec = pod_spec(job.resources, self.settings.gpu_type, self.settings.container_disk_gb)
            status = status_dir(self.run_id, job_key(job), job.attempt)
            removed = remove_stale_outputs(job)
            self.store.remove(status)
        except (PodSpecError, WorkflowError) as e:
            self.report_job_error(SubmittedJobInfo(job), msg=self.redactor.scrub(str(e)))
            return
        if removed:
            self.logger.info(f"Job {job_key(job)}: removed {len(removed)} old output(s) from storage before the run")
        time_limit = (spec.runtime_seconds or DEFAULT_TIME_LIMIT_SECONDS) + self.settings.time_limit_margin_seconds
        name = pod_name(self.settings.pod_name_prefix, self.run_id, job_key(job))
        now = time.time()
        info = SubmittedJobInfo(job, external_jobid=name, aux={
            "spec": spec, "status": status, "name": name, "submitted": now, "pod_id": None,
            "create": self._create_kwargs(job, spec, name, status, time_limit), "watch": None,
            "limits": Limits(self.settings.boot_timeout_seconds, self.settings.restart_slack_seconds,
                             time_limit, 60 + OVERDUE_GRACE_SECONDS),
            "next_create": now, "create_deadline": now + 60 * self.settings.capacity_wait_minutes,
            "backoff": self.settings.capacity_retry_seconds, "misses": 0, "cost_per_hr": None,
        })
        error = self._try_create(info)
        if error:
            self.report_job_error(info, msg=error)
        else:
            self.report_job_submission(info)

    def _create_kwargs(self, job, spec, name: str, status: str, time_limit: int) -> dict:
        args = self.workflow.spawned_job_args_factory
        script = job_script(JobScript(
            exec_job=self.format_job_exec(job), label=job_label(job),
            snakemake_version=importlib.metadata.version("snakemake"),
            storage_args=" ".join([args.get_default_storage_provider_args(), *args.get_storage_provider_args()]),
            status_dir=status, time_limit_seconds=time_limit,
            setup_command=self.settings.setup_command, check_command=self.settings.check_command,
        ))
        env = pod_env(spec.gpu_count, self.pod_env_values)
        env.update({JOB_SCRIPT_ENV: encode_script(script), GPUS_ENV: str(spec.gpu_count)})
        kwargs = dict(
            name=name, image_name=self.settings.image, gpu_type_id=spec.gpu_type_id,
            gpu_count=max(spec.gpu_count, 1), cloud_type=self.settings.cloud_type,
            container_disk_in_gb=spec.container_disk_gb, volume_in_gb=0,
            docker_args=graphql_escape(docker_args()), env={k: graphql_escape(v) for k, v in env.items()},
            network_volume_id=self.settings.network_volume_id, data_center_id=self.settings.data_center_id,
            min_vcpu_count=max(int(job.threads), 1),
            min_memory_in_gb=max(int(float(job.resources.get("mem_mb", 0) or 0) / 1000), 1),
            allowed_cuda_versions=split_list(self.settings.allowed_cuda_versions) if spec.gpu_type_id else None,
        )
        if self.settings.network_volume_id:
            kwargs["volume_mount_path"] = "/workspace"
        return kwargs

    def _try_create(self, info: SubmittedJobInfo) -> Optional[str]:
        """Rent the job's pod. None: rented, or no capacity now and a retry is scheduled; else
        the job's error message."""
        aux, now = info.aux, time.time()
        self._create_attempted = True
        try:
            pod = self.api.create_pod(**aux["create"])
        except RunPodApiError as e:
            if not is_no_capacity(e):
                self._terminate_named(aux["name"])  # the create may have succeeded, its answer lost
                return str(e)
            if now + aux["backoff"] > aux["create_deadline"]:
                return (f"RunPod had no instance for {info.job.name} ({aux['spec'].gpu_count}x "
                        f"{aux['spec'].gpu_type_id}) for {self.settings.capacity_wait_minutes:g} min; "
                        "try another GPU type, cloud type or data centre, or raise runpod-capacity-wait-minutes")
            self.logger.warning(f"Job {job_key(info.job)}: no RunPod capacity for {aux['spec'].gpu_count}x "
                                f"{aux['spec'].gpu_type_id}; retrying in {aux['backoff']:.0f} s")
            aux["next_create"] = now + aux["backoff"]
            aux["backoff"] = min(2 * aux["backoff"], MAX_CAPACITY_BACKOFF_SECONDS)
            return None
        aux["pod_id"], aux["watch"] = pod["id"], Watch(created_at=now)
        self._created[pod["id"]] = aux["name"]
        self.logger.info(f"Job {job_key(info.job)} ({info.job.name}): pod {pod['id']} '{aux['name']}', "
                         f"{aux['spec'].gpu_count}x {aux['spec'].gpu_type_id or 'CPU'}")
        return None

    # ---------------------------------------------------------------- status
    async def check_active_jobs(self, active_jobs: List[SubmittedJobInfo]) -> AsyncGenerator[SubmittedJobInfo, None]:
        for job_info in active_jobs:
            async with self.status_rate_limiter:
                still_running = self._check(job_info)
            if still_running:
                yield job_info

    def _check(self, info: SubmittedJobInfo) -> bool:
        aux, now = info.aux, time.time()
        if aux["pod_id"] is None:  # waiting for capacity
            if now >= aux["next_create"]:
                error = self._try_create(info)
                if error:
                    self.report_job_error(info, msg=error)
                    return False
            return True
        try:
            pod = self.api.get_pod(aux["pod_id"])
            aux["misses"] = 0
        except RunPodApiError as e:
            aux["misses"] += 1
            if aux["misses"] > MAX_STATUS_API_MISSES:
                self._finish(info, f"lost contact with the pod ({e})")
                return False
            self.logger.warning(f"{e} ({aux['misses']}/{MAX_STATUS_API_MISSES})")
            return True
        if pod and pod.get("costPerHr"):
            aux["cost_per_hr"] = pod["costPerHr"]
        try:
            code = self._stored_exit_code(aux["status"])
        except BadStatus as e:
            self._finish(info, str(e))
            return False
        if code is not None:
            self._finish(info, outcome_of_exit_code(code))
            return False
        failure = pod_failure(pod, aux["watch"], aux["limits"], now)
        if failure:
            self._finish(info, failure)
            return False
        return True

    def _stored_exit_code(self, status: str) -> Optional[int]:
        try:
            return self.store.exit_code(status)
        except BadStatus:
            raise
        except Exception as e:  # noqa: BLE001 - a storage hiccup is retried on the next poll
            self.logger.debug(self.redactor.scrub(f"RunPod executor: exit code check failed: {e}"))
            return None

    def _finish(self, info: SubmittedJobInfo, error: Optional[str], outcome: Optional[str] = None):
        """Save the pod's log, terminate the pod, write its report, and tell Snakemake the outcome."""
        aux, pod_id = info.aux, info.aux["pod_id"]
        if pod_id is not None:
            log_path = self._save_log(info)
            self._terminate(pod_id)
            report = cost_report(
                run_id=self.run_id, job=info.job, outputs=self._output_paths(info.job), pod_id=pod_id,
                spec=aux["spec"], wall_seconds=time.time() - aux["submitted"],
                usd_per_gpu_hour=self.settings.usd_per_gpu_hour,
                outcome=outcome or ("failed" if error else "success"), pod_cost_per_hour=aux.get("cost_per_hr"),
            )
            path = write_report(self.report_dir, report)
            self.logger.info(f"Pod {pod_id}: {report['outcome']}, {report['wall_seconds']:.0f} s, "
                             f"{report['gpu_hours']:.4f} GPU-h, ${report['cost_usd']:.2f} ({path}; log {log_path})")
        if outcome == "cancelled":
            return
        if error:
            where = f"RunPod pod {pod_id}" if pod_id else "RunPod"
            self.report_job_error(info, msg=self.redactor.scrub(f"{where}: {error}. "))
        else:
            self.report_job_success(info)

    def _save_log(self, info: SubmittedJobInfo) -> Path:
        """The log the pod stored for this attempt, else (it failed before its job) the tail of
        RunPod's log stream; written to <report_dir>/<run id>-<job id>.log before termination."""
        try:
            text = self.store.log(info.aux["status"])
        except Exception as e:  # noqa: BLE001 - fall back to RunPod's log stream
            self.logger.debug(self.redactor.scrub(f"RunPod executor: stored log unreadable: {e}"))
            text = None
        if text is None:
            text = self.api.pod_log(info.aux["pod_id"])
        path = report_path(self.report_dir, self.run_id, job_key(info.job), ".log")
        return write_text_atomic(path, self.redactor.scrub(text))

    def _output_paths(self, job: JobExecutorInterface) -> list:
        """Outputs as the workflow names them (storage query without the default prefix)."""
        prefix = (self.workflow.storage_settings.default_storage_prefix or "").rstrip("/")
        paths = []
        for f in job.output:
            query = f.storage_object.query if getattr(f, "is_storage", False) else str(f)
            paths.append(query[len(prefix) + 1:] if prefix and query.startswith(prefix + "/") else query)
        return paths

    # ---------------------------------------------------------------- teardown
    def _terminate(self, pod_id: str):
        if pod_id in self._terminated:
            return
        try:
            self.api.terminate_pod(pod_id)
            self._terminated.add(pod_id)
        except RunPodApiError as e:
            self.logger.error(f"{e}. Terminate pod {pod_id} by hand at https://www.runpod.io/console/pods "
                              "to stop billing.")

    def _terminate_named(self, name: str):
        """Terminate any pod of this exact name: a create call whose answer was lost may have
        rented one, which must not keep running unseen."""
        try:
            pods = self.api.list_pods()
        except RunPodApiError as e:
            self.logger.warning(f"{e}; pods named {name} (if any) are terminated at exit")
            return
        for pod in pods:
            if pod.get("name") == name and pod.get("id") not in self._terminated:
                self.logger.warning(f"Terminating pod {pod['id']} '{name}' from a create call whose answer was lost")
                self._terminate(pod["id"])

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
        except RunPodApiError as e:
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
