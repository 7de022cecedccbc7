"""How one poll of a pod turns into "still running", success or a failure message.

RunPod's desiredStatus is only RUNNING, EXITED or TERMINATED, and a container whose start command
exits is started again on the same pod, which stays RUNNING. So the job's own exit code (stored by
the pod, see script.py) decides the outcome, and the pod's state only ever adds failures:
- stopped (EXITED / TERMINATED) or gone without an exit code stored;
- never up: no container running `boot_timeout` after the create call (image pull failing, no
  host able to run the image's CUDA);
- restarted: the container's uptime lags the time since it was first seen up by more than
  `restart_slack`, i.e. it was started again (a crash before the job, or a start command that
  exits, loops like this), detected within minutes instead of at the runtime limit;
- overdue: past the pod-side time limit plus a grace, in case the pod's own limit failed.
"""

from dataclasses import dataclass
from typing import Optional

from .script import TIME_LIMIT_EXIT_CODES

STOPPED = ("EXITED", "TERMINATED")


@dataclass(frozen=True)
class Limits:
    boot_timeout: float       # s from create to a running container
    restart_slack: float      # s the container's uptime may lag the time since first seen up
    time_limit: float         # s, the pod-side limit (runtime + margin)
    overdue_grace: float      # s past time_limit before the executor gives up on the pod


@dataclass
class Watch:
    created_at: float
    first_up_at: Optional[float] = None


def uptime_seconds(pod: dict) -> Optional[float]:
    """The container's uptime, or None while no container runs (RunPod: runtime is null)."""
    runtime = pod.get("runtime")
    if not runtime:
        return None
    return float(runtime.get("uptimeInSeconds") or 0)


def outcome_of_exit_code(code: int) -> Optional[str]:
    """None for success, else the failure message for the job's exit code."""
    if code == 0:
        return None
    if code in TIME_LIMIT_EXIT_CODES:
        return f"the job was stopped by the pod-side time limit (exit code {code})"
    return f"the job failed on the pod with exit code {code}"


def pod_failure(pod: Optional[dict], watch: Watch, limits: Limits, now: float) -> Optional[str]:
    """A failure message when the pod can no longer deliver an exit code, else None (keep polling).
    Call only while no exit code is stored for the attempt."""
    if not pod:
        return "pod disappeared (terminated or preempted) before its job stored an exit code"
    status = pod.get("desiredStatus")
    if status in STOPPED:
        return (f"pod {status.lower()} before its job stored an exit code "
                f"(RunPod: {pod.get('lastStatusChange') or 'no reason given'})")
    uptime = uptime_seconds(pod)
    if watch.first_up_at is None:
        if uptime is None:
            if now - watch.created_at > limits.boot_timeout:
                return (f"no container running {limits.boot_timeout:.0f} s after the pod was created "
                        "(image pull failing, or no host for the image's CUDA version?)")
            return None
        watch.first_up_at = now - uptime
        return None
    up_for = now - watch.first_up_at
    if up_for > limits.restart_slack and (uptime or 0) + limits.restart_slack < up_for:
        return (f"the container restarted (up {uptime or 0:.0f} s, first up {up_for:.0f} s ago): "
                "the start command exited before the job stored an exit code (bad image, crash "
                "before the job, or the job script killed)")
    if up_for > limits.time_limit + limits.overdue_grace:
        return f"no exit code {up_for:.0f} s after the container started (pod-side limit {limits.time_limit:.0f} s)"
    return None
