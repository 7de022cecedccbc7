"""Local GPU placement with a fake inventory (PGOLF_GPU_IDS): jobs are real processes holding real
flocks, so disjointness and release after kill -9 are the kernel's, not a mock's."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgolf import gpus, launch

REPO = Path(__file__).resolve().parents[1]

# A job: takes its GPUs, reports them on stdout, and runs until killed.
JOB = """
import json, sys, time
from pgolf.gpus import place
with place(int(sys.argv[1])) as placement:
    print(json.dumps(placement.ids), flush=True)
    time.sleep(600)
"""


@pytest.fixture
def fake_gpus(tmp_path, monkeypatch):
    """Four fake GPUs and a private lock directory, for this process and the jobs it starts."""
    env = {gpus.IDS_ENV: "0,1,2,3", gpus.LOCK_DIR_ENV: str(tmp_path / "locks")}
    for var in (*env, *gpus.SCHEDULER_ENV):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    return dict(os.environ, PYTHONPATH=str(REPO))


def start_job(env: dict, count: int) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen([sys.executable, "-c", JOB, str(count)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return proc, json.loads(line)


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=30)


def test_concurrent_jobs_get_disjoint_ids(fake_gpus):
    a, ids_a = start_job(fake_gpus, 2)
    b, ids_b = start_job(fake_gpus, 1)
    c, ids_c = start_job(fake_gpus, 1)
    try:
        assert len(ids_a) == 2 and len(ids_b) == len(ids_c) == 1
        assert sorted(ids_a + ids_b + ids_c) == ["0", "1", "2", "3"]
        assert gpus.try_acquire(gpus.available_ids(), 1, gpus.lock_dir()) is None  # all four taken
    finally:
        for proc in (a, b, c):
            stop(proc)


def test_a_job_waits_for_busy_ids_and_gets_them_when_freed(fake_gpus):
    holder, held_ids = start_job(fake_gpus, 4)
    waiter = subprocess.Popen([sys.executable, "-c", JOB, "2"], env=fake_gpus, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert waiter.poll() is None  # still waiting, not failed
        stop(holder)
        ids = json.loads(waiter.stdout.readline())
        assert len(ids) == 2 and set(ids) <= set(held_ids)
    finally:
        stop(waiter)
    assert "waiting for 2 free GPU(s)" in waiter.stderr.read()


def test_ids_come_back_after_a_job_is_killed(fake_gpus):
    proc, ids = start_job(fake_gpus, 4)
    assert gpus.try_acquire(gpus.available_ids(), 1, gpus.lock_dir()) is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with gpus.place(4) as placement:
        assert sorted(placement.ids) == sorted(ids)


def test_asking_for_more_gpus_than_exist_fails_at_once(fake_gpus):
    started = time.monotonic()
    with pytest.raises(gpus.GpuRequestError, match="asks for 5 GPU.*may use 4 .*train.nproc"):
        with gpus.place(5):
            pass
    assert time.monotonic() - started < 1.0


def test_the_parents_cuda_visible_devices_bound_the_inventory(fake_gpus, monkeypatch):
    monkeypatch.delenv(gpus.IDS_ENV)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with gpus.place(2) as placement:
        assert sorted(placement.ids) == ["2", "3"]
        assert placement.env() == {"CUDA_VISIBLE_DEVICES": ",".join(placement.ids)}
    with pytest.raises(gpus.GpuRequestError):
        with gpus.place(3):
            pass


def test_a_schedulers_placement_is_left_alone(fake_gpus, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    with gpus.place(1) as placement:
        assert placement.placed_by == "slurm" and placement.ids == ["5"] and placement.env() == {}
        assert placement.lock_fds == ()


def test_cpu_jobs_take_no_gpu(fake_gpus):
    with gpus.place(0) as placement:
        assert placement.ids == [] and placement.env() == {}
        assert placement.record() == {"placed_by": "none", "cuda_visible_devices": "", "gpus": []}


def test_torchrun_gets_the_jobs_devices_and_keeps_them_taken(fake_gpus, tmp_path):
    """The launched process sees only the job's ids and holds their lock files open too: were the
    Snakemake job process killed first, a still-running torchrun keeps its GPUs from being handed out."""
    probe = ("import os, sys; print(os.environ['CUDA_VISIBLE_DEVICES'], "
             "sorted(os.path.basename(os.readlink(f'/proc/self/fd/{fd}')) for fd in sys.argv[1:]))")
    with gpus.place(2) as placement:
        fds = [str(fd) for fd in placement.lock_fds]
        launch._run_logged([sys.executable, "-c", probe, *fds], tmp_path / "job.log", threads=1, nproc=1,
                           what="probe", placement=placement)
    out = (tmp_path / "job.log").read_text().splitlines()
    assert out[0].startswith(f"CUDA_VISIBLE_DEVICES={','.join(placement.ids)} $ ")
    assert out[-1] == f"{','.join(placement.ids)} {sorted(f'gpu-{i}.lock' for i in placement.ids)}"


def test_gpus_are_described_by_model_and_uuid(tmp_path, monkeypatch):
    """nvidia-smi's CSV (index, uuid, name), looked up by index or by UUID as CUDA_VISIBLE_DEVICES may hold."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0, GPU-aaa, NVIDIA H200\\n1, GPU-bbb, NVIDIA H200\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert gpus.describe(["1", "GPU-aaa", "7"]) == [
        {"id": "1", "index": 1, "uuid": "GPU-bbb", "name": "NVIDIA H200"},
        {"id": "GPU-aaa", "index": 0, "uuid": "GPU-aaa", "name": "NVIDIA H200"},
        {"id": "7", "index": None, "uuid": None, "name": None}]
    monkeypatch.delenv(gpus.IDS_ENV, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpus.available_ids() == ["0", "1"]
