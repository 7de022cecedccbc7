"""The RunPod executor, end to end against the fake RunPod API (fake_runpod.py) on 127.0.0.1.

A tiny standalone workflow: a local `prep` rule and a GPU `train` rule that runs on a (fake)
8xH100 pod, files moving through an fs default storage as they would through S3. The storage
key reaches the pod as a RunPod secret; the job writes its hash so the test sees it arrived."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_runpod import FakeRunPod

PLUGIN = Path(__file__).resolve().parents[1]
API_KEY = "rpa_TESTKEY_0123456789abcdef"
S3_SECRET = "s3secret_ABCDEFGH987654321"
SECRETS = {"s3_secret": S3_SECRET}

SNAKEFILE = """
localrules: all, prep

rule all:
    input: "out/model.txt"

rule prep:
    output: "data/numbers.txt"
    shell: "seq 1 5 > {output}"

rule train:
    input: "data/numbers.txt"
    output: "out/model.txt"
    resources: gpu=8, gpu_model="h100-sxm", runtime=1
    shell:
        "echo training; sleep $RUNPOD_TEST_SLEEP_S; test -z \\"$RUNPOD_TEST_FAIL\\"; "
        "awk '{{s += $1}} END {{print s}}' {input} > {output}; "
        "echo $RUNPOD_GPU_COUNT $NCCL_P2P_LEVEL >> {output}; "
        "printf %s \\"$AWS_SECRET_ACCESS_KEY\\" | sha256sum | cut -c1-16 >> {output}"
"""

# train -> pack (a local rule, as pgolf's compress) -> evaluate, grouped into one pod by --groups.
GROUP_SNAKEFILE = SNAKEFILE.replace('input: "out/model.txt"', 'input: "out/score.txt"').replace(
    "localrules: all, prep", "localrules: all, prep, pack") + """
rule pack:
    input: "out/model.txt"
    output: "out/packed.txt"
    shell: "head -1 {input} > {output}; echo $RUNPOD_POD_ID >> {output}"

rule evaluate:
    input: "out/packed.txt"
    output: "out/score.txt"
    resources: gpu=8, gpu_model="h100-sxm", runtime=1
    shell: "cat {input} > {output}; echo $RUNPOD_POD_ID >> {output}"
"""

needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="the fs storage plugin needs rsync")


def _workflow(tmp_path: Path, snakefile: str = SNAKEFILE) -> Path:
    wd = tmp_path / "wf"
    wd.mkdir()
    (wd / "Snakefile").write_text(snakefile)
    return wd


def _env(fake_url: str, tmp_path: Path, sleep_s: int = 0, fail: bool = False) -> dict:
    return dict(
        os.environ,
        RUNPOD_API_BASE_URL=fake_url,
        RUNPOD_API_KEY=API_KEY,
        AWS_SECRET_ACCESS_KEY=S3_SECRET,      # a forwarded storage credential: must not leak either
        PYTHONPATH=str(PLUGIN),
        HOME=str(tmp_path),                   # no ~/.runpod of the person running the tests
        RUNPOD_TEST_SLEEP_S=str(sleep_s),
        RUNPOD_TEST_FAIL="1" if fail else "",
    )


def _snakemake_args(storage: Path, *extra: str) -> list:
    return [sys.executable, "-m", "snakemake", "--executor", "runpod", "--jobs", "2",
            "--default-storage-provider", "fs", "--default-storage-prefix", str(storage),
            "--seconds-between-status-checks", "1", "--runpod-usd-per-gpu-hour", "3.0",
            "--runpod-secret-env", "AWS_SECRET_ACCESS_KEY=s3_secret",
            "--envvars", "RUNPOD_TEST_SLEEP_S", "RUNPOD_TEST_FAIL", *extra]


def _run(fake, wd, storage, tmp_path, *extra, timeout=180, **env):
    return subprocess.run(_snakemake_args(storage, *extra), cwd=wd, env=_env(fake.url, tmp_path, **env),
                          capture_output=True, text=True, timeout=timeout)


def _deploys(fake) -> list:
    return [q for _, q in fake.requests if "podFindAndDeployOnDemand" in q]


def _assert_no_secret(*texts):
    for text in texts:
        assert API_KEY not in text
        assert S3_SECRET not in text


def _all_text(wd: Path, run) -> list:
    logs = [p.read_text(errors="replace") for p in (wd / ".snakemake" / "log").glob("*.log")]
    reports = [p.read_text(errors="replace") for p in (wd / "results" / "pods").glob("*")]
    return [run.stdout, run.stderr, *logs, *reports]


def _report(wd: Path, suffix=".json"):
    (path,) = (wd / "results" / "pods").glob(f"*{suffix}")
    return json.loads(path.read_text()) if suffix == ".json" else path.read_text()


SECRET_HASH = hashlib.sha256(S3_SECRET.encode()).hexdigest()[:16]


@needs_rsync
def test_job_on_fake_pod_matches_local_run_and_stores_its_log(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    (local / "Snakefile").write_text(SNAKEFILE)
    env_local = dict(os.environ, RUNPOD_TEST_SLEEP_S="0", RUNPOD_TEST_FAIL="", RUNPOD_GPU_COUNT="8",
                     NCCL_P2P_LEVEL="NVL", AWS_SECRET_ACCESS_KEY=S3_SECRET)
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--quiet"], cwd=local, env=env_local,
                   check=True, capture_output=True)

    wd, storage = _workflow(tmp_path), tmp_path / "storage"
    with FakeRunPod(tmp_path / "pods", secrets=SECRETS) as fake:
        run = _run(fake, wd, storage, tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        assert (storage / "out/model.txt").read_bytes() == (local / "out/model.txt").read_bytes()
        assert (storage / "out/model.txt").read_text().split() == ["15", "8", "NVL", SECRET_HASH]

        # One pod, for train only, tagged with this run, 8 SXM GPUs on a CUDA >= 12.8 host, terminated.
        (deploy,) = _deploys(fake)
        assert 'gpuTypeId: "NVIDIA H100 80GB HBM3"' in deploy and "gpuCount: 8" in deploy
        assert 'allowedCudaVersions: ["12.8", "12.9", "13.0"]' in deploy
        assert "{{ RUNPOD_SECRET_s3_secret }}" in deploy       # the key travels as a secret reference
        (pod_id,) = fake.terminated
        assert "foreign-pod" in fake.pods and pod_id not in fake.pods
        assert all(auth == f"Bearer {API_KEY}" for auth, q in fake.requests if "podStop" not in q)

    report = _report(wd)
    assert report["pod_id"] == pod_id and report["rule"] == "train" and report["outcome"] == "success"
    assert report["jobs"] == [{"rule": "train", "wildcards": {}}]
    assert report["gpu_type"] == "NVIDIA H100 80GB HBM3" and report["gpu_count"] == 8
    assert report["outputs"] == ["out/model.txt"]
    assert report["gpu_hours"] == pytest.approx(8 * report["wall_seconds"] / 3600, rel=1e-3)
    assert report["cost_usd"] == pytest.approx(3.0 * report["gpu_hours"], abs=1e-3)
    log = _report(wd, ".log")   # the pod's own log, stored by the pod and saved before termination
    assert "training" in log and "runpod_executor_exit_code=0" in log
    assert "7, NVIDIA H100 80GB HBM3" in log   # the environment check lists the GPUs it found
    _assert_no_secret(*_all_text(wd, run))


@needs_rsync
def test_stale_outputs_are_replaced_by_a_real_run(tmp_path):
    """An earlier run's outputs in storage and --forcerun train: the pod must really run the job.
    When it fails, no old output survives to pass for this run's result."""
    wd, storage = _workflow(tmp_path), tmp_path / "storage"
    (storage / "out").mkdir(parents=True)
    (storage / "out/model.txt").write_text("stale\n")
    with FakeRunPod(tmp_path / "pods", secrets=SECRETS) as fake:
        proc = subprocess.Popen(_snakemake_args(storage, "--forcerun", "train"), cwd=wd, text=True,
                                env=_env(fake.url, tmp_path, sleep_s=5), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while not _deploys(fake) and time.time() < deadline:
            time.sleep(0.1)
        assert _deploys(fake) and not (storage / "out/model.txt").exists()   # gone before the pod runs
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert (storage / "out/model.txt").read_text().split()[:2] == ["15", "8"]

        (storage / "out/model.txt").write_text("stale\n")
        run = _run(fake, wd, storage, tmp_path, "--forcerun", "train", fail=True)
        assert run.returncode != 0 and "exit code 1" in run.stdout + run.stderr
        assert not (storage / "out/model.txt").exists()
        assert set(fake.pods) == {"foreign-pod"}


@needs_rsync
@pytest.mark.parametrize("mode, limits, message", [
    ("crash_before_job", ["--runpod-restart-slack-seconds", "3"], "the container restarted"),
    ("bad_image", ["--runpod-boot-timeout-seconds", "4"], "no container running 4 s after the pod was created"),
])
def test_failure_outside_the_job_script_fails_within_seconds(tmp_path, mode, limits, message):
    """RunPod restarts a container whose command exits and keeps the pod RUNNING; an image that
    cannot start leaves the pod without a container. Both fail at the short limits set here,
    not at the job's runtime, and --retries rents one fresh pod."""
    wd, storage = _workflow(tmp_path), tmp_path / "storage"
    with FakeRunPod(tmp_path / "pods", secrets=SECRETS, **{mode: True}) as fake:
        started = time.time()
        run = _run(fake, wd, storage, tmp_path, "--retries", "1", *limits, timeout=120)
        assert run.returncode != 0 and message in run.stdout + run.stderr
        assert time.time() - started < 60
        assert len(_deploys(fake)) == 2 and len(fake.terminated) == 2 and set(fake.pods) == {"foreign-pod"}
    assert _report(wd)["outcome"] == "failed"
    assert _report(wd, ".log") is not None   # RunPod's log stream, saved before termination


@needs_rsync
def test_hung_job_is_stopped_by_the_pod_side_limit(tmp_path):
    """runtime=1 (min) + 2 s margin: the pod's own `timeout` ends the job, the pod stores exit
    code 124 and its log, and the log says why. (About 70 s: runtime has a 1-minute floor.)"""
    wd, storage = _workflow(tmp_path), tmp_path / "storage"
    with FakeRunPod(tmp_path / "pods", secrets=SECRETS) as fake:
        run = _run(fake, wd, storage, tmp_path, "--runpod-time-limit-margin-seconds", "2", sleep_s=600)
        assert run.returncode != 0
        assert "stopped by the pod-side time limit (exit code 124)" in run.stdout + run.stderr
        assert set(fake.pods) == {"foreign-pod"}
    log = _report(wd, ".log")
    assert "pod-side time limit of 62 s reached" in log and "runpod_executor_exit_code=124" in log
    _assert_no_secret(*_all_text(wd, run))


@needs_rsync
def test_no_capacity_waits_then_succeeds_or_fails_clearly(tmp_path):
    wd, storage = _workflow(tmp_path), tmp_path / "storage"
    with FakeRunPod(tmp_path / "pods", secrets=SECRETS, no_capacity=2) as fake:
        run = _run(fake, wd, storage, tmp_path, "--runpod-capacity-retry-seconds", "1")
        assert run.returncode == 0, run.stderr[-3000:]
        assert "no RunPod capacity for 8x NVIDIA H100 80GB HBM3; retrying in 1 s" in run.stdout + run.stderr
        assert len(_deploys(fake)) == 3

    shutil.rmtree(storage)
    with FakeRunPod(tmp_path / "pods2", secrets=SECRETS, no_capacity=1000) as fake:
        run = _run(fake, wd, storage, tmp_path, "--runpod-capacity-retry-seconds", "1",
                   "--runpod-capacity-wait-minutes", "0.05")
        assert run.returncode != 0
        assert "RunPod had no instance for train (8x NVIDIA H100 80GB HBM3) for 0.05 min" in run.stdout + run.stderr
        assert set(fake.pods) == {"foreign-pod"}


@needs_rsync
def test_lost_create_answer_leaves_no_pod_running(tmp_path):
    wd, storage = _workflow(tmp_path), tmp_path / "storage"
    with FakeRunPod(tmp_path / "pods", secrets=SECRETS, lose_create_answers=1) as fake:
        run = _run(fake, wd, storage, tmp_path, "--retries", "1")
        assert run.returncode == 0, run.stderr[-3000:]
        assert fake.terminated[0] == "pod001"      # rented by the lost create, found by name, terminated
        assert len(_deploys(fake)) == 2 and set(fake.pods) == {"foreign-pod"}


@needs_rsync
def test_group_job_runs_train_to_evaluate_in_one_pod(tmp_path):
    wd, storage = _workflow(tmp_path, GROUP_SNAKEFILE), tmp_path / "storage"
    with FakeRunPod(tmp_path / "pods", secrets=SECRETS) as fake:
        run = _run(fake, wd, storage, tmp_path, "--groups", "train=gpu", "pack=gpu", "evaluate=gpu")
        assert run.returncode == 0, run.stderr[-3000:]
        assert len(_deploys(fake)) == 1
        (pod_id,) = fake.terminated
    assert (storage / "out/score.txt").read_text().split() == ["15", pod_id, pod_id]   # all on the pod
    report = _report(wd)
    assert len(str(report["jobid"])) == 36                      # a group job's id is a UUID
    assert sorted(j["rule"] for j in report["jobs"]) == ["evaluate", "pack", "train"]
    assert report["outputs"] == ["out/score.txt"] and report["outcome"] == "success"


@needs_rsync  # the fs storage plugin copies the workflow's sources with rsync before the executor starts
def test_credential_without_a_secret_stops_before_any_request(tmp_path):
    wd, storage = _workflow(tmp_path), tmp_path / "storage"
    with FakeRunPod(tmp_path / "pods") as fake:
        args = [a for a in _snakemake_args(storage) if a not in ("--runpod-secret-env", "AWS_SECRET_ACCESS_KEY=s3_secret")]
        run = subprocess.run(args, cwd=wd, env=_env(fake.url, tmp_path), capture_output=True, text=True, timeout=120)
        assert run.returncode != 0
        assert "AWS_SECRET_ACCESS_KEY would reach the pods as plain environment values" in run.stdout + run.stderr
        assert fake.requests == []
        _assert_no_secret(run.stdout, run.stderr)


@pytest.fixture
def sigint_caught():
    """A pytest started as a background job (`cmd &`, nohup, from a non-interactive shell) has SIGINT
    ignored, a child inherits that across exec, and Python there installs no KeyboardInterrupt handler.
    A caught SIGINT is reset to SIG_DFL by exec: catch it here while the test starts its children."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@needs_rsync
def test_ctrl_c_terminates_this_runs_pods_only(tmp_path, sigint_caught):
    wd, storage = _workflow(tmp_path), tmp_path / "storage"
    with FakeRunPod(tmp_path / "pods", secrets=SECRETS) as fake:
        # A pod of an earlier run must survive too: cleanup matches this run's tag only.
        fake.pods["old-run-pod"] = {"id": "old-run-pod", "name": "snakemake-0ldrun00-7", "desiredStatus": "RUNNING"}
        proc = subprocess.Popen(_snakemake_args(storage), cwd=wd, env=_env(fake.url, tmp_path, sleep_s=60),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # Ctrl-C once the job runs: the pod is rented and a status check has followed (a signal that lands
            # inside the rent call itself is not what this test covers).
            def polled_after_rent():
                queries = [q for _, q in fake.requests]
                rents = [i for i, q in enumerate(queries) if "podFindAndDeployOnDemand" in q]
                return bool(rents) and len(queries) > rents[0] + 1

            deadline = time.time() + 60
            while not polled_after_rent() and time.time() < deadline:
                time.sleep(0.2)
            assert polled_after_rent(), "no status check after the pod was rented"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
            assert proc.returncode != 0
            assert fake.terminated == ["pod001"]
            assert set(fake.pods) == {"foreign-pod", "old-run-pod"}
        finally:  # a failed assertion or timeout must not leave snakemake running
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    _assert_no_secret(out, err)


def test_the_fake_terminates_a_pod_whose_container_ended_just_before(tmp_path):
    """A crashing container exits every second: between the fake's poll and its kill is a race, and a
    terminate request must still get its answer (the executor retries one that got none)."""
    container = subprocess.Popen(["true"], start_new_session=True)
    container.wait()
    container.poll = lambda: None  # seen running, gone by the kill
    with FakeRunPod(tmp_path / "pods") as fake:
        fake._kill(type("Pod", (), {"proc": container})())
