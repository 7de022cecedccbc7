"""The RunPod executor, end to end against a fake RunPod GraphQL API on 127.0.0.1.

A tiny standalone workflow: a local `prep` rule and a GPU `train` rule that
runs on a (fake) 8xH100 pod, files moving through an fs default storage as they would through S3."""

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
from snakemake_executor_plugin_runpod import api as rp_api
from snakemake_executor_plugin_runpod import pods

PLUGIN = Path(__file__).resolve().parents[1]
API_KEY = "rpa_TESTKEY_0123456789abcdef"
S3_SECRET = "s3secret_ABCDEFGH987654321"

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
    resources: gpu=8, gpu_model="h100-sxm", runtime=10
    shell:
        "sleep $RUNPOD_TEST_SLEEP_S; "
        "awk '{{s += $1}} END {{print s}}' {input} > {output}; "
        "echo $RUNPOD_GPU_COUNT $NCCL_P2P_LEVEL >> {output}"
"""

needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="the fs storage plugin needs rsync")


def _workflow(tmp_path: Path) -> Path:
    wd = tmp_path / "wf"
    wd.mkdir()
    (wd / "Snakefile").write_text(SNAKEFILE)
    return wd


def _env(fake_url: str, tmp_path: Path, sleep_s: int = 0) -> dict:
    return dict(
        os.environ,
        RUNPOD_API_BASE_URL=fake_url,
        RUNPOD_API_KEY=API_KEY,
        AWS_SECRET_ACCESS_KEY=S3_SECRET,      # a forwarded storage credential: must not leak either
        PYTHONPATH=str(PLUGIN),
        HOME=str(tmp_path),                   # no ~/.runpod of the person running the tests
        RUNPOD_TEST_SLEEP_S=str(sleep_s),
    )


def _snakemake_args(storage: Path) -> list:
    return [sys.executable, "-m", "snakemake", "--executor", "runpod", "--jobs", "2",
            "--default-storage-provider", "fs", "--default-storage-prefix", str(storage),
            "--seconds-between-status-checks", "1", "--runpod-usd-per-gpu-hour", "3.0",
            "--envvars", "RUNPOD_TEST_SLEEP_S"]


def _assert_no_secret(*texts):
    for text in texts:
        assert API_KEY not in text
        assert S3_SECRET not in text


def _all_logs(wd: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in (wd / ".snakemake" / "log").glob("*.log"))


@needs_rsync
def test_job_on_fake_pod_matches_local_run(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    (local / "Snakefile").write_text(SNAKEFILE)
    env_local = dict(os.environ, RUNPOD_TEST_SLEEP_S="0", RUNPOD_GPU_COUNT="8", NCCL_P2P_LEVEL="NVL")
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--quiet"], cwd=local, env=env_local,
                   check=True, capture_output=True)

    wd, storage = _workflow(tmp_path), tmp_path / "storage"
    with FakeRunPod(tmp_path / "pods") as fake:
        run = subprocess.run(_snakemake_args(storage), cwd=wd, env=_env(fake.url, tmp_path),
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
        assert (storage / "out/model.txt").read_bytes() == (local / "out/model.txt").read_bytes()
        assert (storage / "out/model.txt").read_text().split() == ["15", "8", "NVL"]

        # One pod, for train only, tagged with this run, 8 GPUs of the SXM type, terminated.
        deploys = [q for _, q in fake.requests if "podFindAndDeployOnDemand" in q]
        assert len(deploys) == 1
        assert 'gpuTypeId: "NVIDIA H100 80GB HBM3"' in deploys[0] and "gpuCount: 8" in deploys[0]
        (pod_id,) = [p for p in fake.terminated]
        assert "foreign-pod" in fake.pods and pod_id not in fake.pods
        assert all(auth == f"Bearer {API_KEY}" for auth, _ in fake.requests)

    (report_file,) = (wd / "results" / "pods").glob("*.json")
    report = json.loads(report_file.read_text())
    assert report["pod_id"] == pod_id and report["rule"] == "train" and report["outcome"] == "success"
    assert report["gpu_type"] == "NVIDIA H100 80GB HBM3" and report["gpu_count"] == 8
    assert report["outputs"] == ["out/model.txt"]
    assert report["gpu_hours"] == pytest.approx(8 * report["wall_seconds"] / 3600, rel=1e-3)
    assert report["cost_usd"] == pytest.approx(3.0 * report["gpu_hours"], abs=1e-3)
    _assert_no_secret(run.stdout, run.stderr, _all_logs(wd), report_file.read_text())


@needs_rsync
def test_pod_reporting_failure_fails_the_job(tmp_path):
    wd, storage = _workflow(tmp_path), tmp_path / "storage"
    with FakeRunPod(tmp_path / "pods", fail_pods=True) as fake:
        run = subprocess.run(_snakemake_args(storage) + ["--retries", "1"], cwd=wd,
                             env=_env(fake.url, tmp_path), capture_output=True, text=True, timeout=120)
        assert run.returncode != 0
        assert "Error in rule train" in run.stdout + run.stderr
        assert not (storage / "out/model.txt").exists()
        # --retries 1: a second pod was rented after the first failed; both terminated.
        assert len([q for _, q in fake.requests if "podFindAndDeployOnDemand" in q]) == 2
        assert len(fake.terminated) == 2 and set(fake.pods) == {"foreign-pod"}
    outcomes = [json.loads(p.read_text())["outcome"] for p in (wd / "results/pods").glob("*.json")]
    assert outcomes == ["failed"]  # one file per run and job id; the retry overwrote the first
    _assert_no_secret(run.stdout, run.stderr, _all_logs(wd))


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
    with FakeRunPod(tmp_path / "pods") as fake:
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
            assert any(p["id"].startswith("pod") for p in fake.pods.values()), "no pod was rented"
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
    _assert_no_secret(out, err, _all_logs(wd))


def test_pod_spec_maps_resources():
    spec = pods.pod_spec({"gpu": 8, "gpu_model": "H100 SXM", "runtime": 30, "disk_mb": 120_000},
                         "NVIDIA L4", 50)
    assert spec == pods.PodSpec("NVIDIA H100 80GB HBM3", 8, 120, 1800)
    assert pods.pod_spec({}, "h100", 50) == pods.PodSpec(None, 0, 50, None)      # CPU pod
    assert pods.pod_spec({"gpu": 1}, "a100", 50).gpu_type_id == "NVIDIA A100-SXM4-80GB"
    with pytest.raises(pods.PodSpecError, match="unknown RunPod GPU type"):
        pods.pod_spec({"gpu": 1, "gpu_model": "H1000"}, "h100", 50)
    with pytest.raises(pods.PodSpecError, match="gpu=3"):
        pods.pod_spec({"gpu": 3}, "h100", 50)
    assert pods.pod_env(8, {})["NCCL_P2P_LEVEL"] == "NVL" and "NCCL_P2P_LEVEL" not in pods.pod_env(1, {})


def test_start_command_survives_the_sdk_graphql_quoting():
    from runpod.api.mutations.pods import generate_pod_deployment_mutation
    from fake_runpod import _field

    tricky = 'echo "quoted" \\ back\nslash'
    query = generate_pod_deployment_mutation("n", "img", docker_args=pods.graphql_escape(pods.docker_args()),
                                             env={"X": pods.graphql_escape(tricky)})
    assert _field(query, "dockerArgs") == pods.docker_args()
    assert f'value: "{pods.graphql_escape(tricky)}"' in query


def test_redactor_and_key_resolution(tmp_path, caplog):
    red = rp_api.Redactor([API_KEY, "short"])
    assert red.scrub(f"Bearer {API_KEY} short") == "Bearer *** short"   # short values are not secrets
    red.install()
    import logging
    logging.getLogger("snakemake").warning("key=%s", API_KEY)
    assert API_KEY not in caplog.text and "key=***" in caplog.text

    toml = tmp_path / "config.toml"
    toml.write_text(f'[default]\napi_key = "{API_KEY}"\n')
    assert rp_api.resolve_api_key(None, {}, toml) == API_KEY
    assert rp_api.resolve_api_key(None, {"RUNPOD_API_KEY": "envkey123"}, toml) == "envkey123"
    with pytest.raises(Exception, match="No RunPod API key"):
        rp_api.resolve_api_key(None, {}, tmp_path / "missing.toml")


def test_sdk_errors_are_scrubbed(monkeypatch):
    red = rp_api.Redactor()
    api = rp_api.RunPodApi(API_KEY, red)
    red.add(S3_SECRET)
    monkeypatch.setenv("RUNPOD_API_BASE_URL", "http://127.0.0.1:9")   # nothing listens there
    with pytest.raises(Exception) as info:
        api.create_pod(name="x", image_name="img", env={"AWS_SECRET_ACCESS_KEY": S3_SECRET})
    assert "RunPod API call create_pod failed" in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None
    _assert_no_secret(str(info.value))
