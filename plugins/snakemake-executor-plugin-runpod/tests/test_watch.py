"""watch.py: one poll of a pod -> keep polling, or why the job failed."""
from snakemake_executor_plugin_runpod.watch import Limits, Watch, outcome_of_exit_code, pod_failure

LIMITS = Limits(boot_timeout=600, restart_slack=120, time_limit=1800, overdue_grace=300)


def _pod(status="RUNNING", uptime=None):
    return {"desiredStatus": status, "lastStatusChange": "x",
            "runtime": None if uptime is None else {"uptimeInSeconds": uptime}}


def test_exit_code_decides():
    assert outcome_of_exit_code(0) is None
    assert "exit code 2" in outcome_of_exit_code(2)
    assert "pod-side time limit" in outcome_of_exit_code(124) and "pod-side time limit" in outcome_of_exit_code(137)


def test_stopped_or_gone_without_an_exit_code_fails():
    assert "disappeared" in pod_failure(None, Watch(0), LIMITS, 10)
    assert "pod exited" in pod_failure(_pod("EXITED"), Watch(0), LIMITS, 10)
    assert "pod terminated" in pod_failure(_pod("TERMINATED"), Watch(0), LIMITS, 10)


def test_no_container_fails_at_the_boot_timeout():
    watch = Watch(created_at=0)
    assert pod_failure(_pod(), watch, LIMITS, 599) is None
    assert "no container running 600 s" in pod_failure(_pod(), watch, LIMITS, 601)


def test_a_restarted_container_fails_within_the_slack():
    watch = Watch(created_at=0)
    assert pod_failure(_pod(uptime=10), watch, LIMITS, 100) is None      # first seen up: started at 90
    assert pod_failure(_pod(uptime=200), watch, LIMITS, 290) is None     # uptime keeps pace
    assert "restarted" in pod_failure(_pod(uptime=5), watch, LIMITS, 300)   # started again
    crash_loop = Watch(created_at=0)
    for now in range(100, 215, 20):                                      # always up for 1-2 s
        assert pod_failure(_pod(uptime=1), crash_loop, LIMITS, now) is None
    assert "restarted" in pod_failure(_pod(uptime=1), crash_loop, LIMITS, 230)
    between_starts = Watch(created_at=0, first_up_at=100)                 # runtime null after being up
    assert "restarted" in pod_failure(_pod(), between_starts, LIMITS, 230)


def test_overdue_pod_fails_after_its_limit_and_grace():
    watch = Watch(created_at=0, first_up_at=0)
    assert pod_failure(_pod(uptime=2100), watch, LIMITS, 2100) is None
    assert "no exit code" in pod_failure(_pod(uptime=2101), watch, LIMITS, 2101)
