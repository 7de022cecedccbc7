"""Local GPU placement: each GPU job gets device ids of its own.

Snakemake's `gpu` resource only counts GPUs; it assigns no device ids, so without this every job
would start on GPU 0. A job asking for k GPUs takes k ids from the ones this workflow may use
(PGOLF_GPU_IDS, else the parent's CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists) by
holding an flock on one file per id for as long as it runs. The kernel drops a lock when its
holder dies, however it dies (crash, kill -9, Ctrl-C), so ids always come back. Under SLURM and
RunPod the scheduler already gave the job its devices: those are recorded and left alone.
"""
from __future__ import annotations

import fcntl
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IDS_ENV = "PGOLF_GPU_IDS"            # comma-separated ids pgolf may hand out; overrides discovery
LOCK_DIR_ENV = "PGOLF_GPU_LOCK_DIR"  # where the per-id lock files live (default: per user, in /tmp)
# A scheduler that set one of these placed the job itself.
SCHEDULER_ENV = {"SLURM_JOB_ID": "slurm", "RUNPOD_POD_ID": "runpod"}
WAIT_POLL_SECONDS = 2.0


class GpuRequestError(RuntimeError):
    """A job asks for more GPUs than this machine lets the workflow use."""


@dataclass
class Placement:
    ids: list[str]   # the job's CUDA_VISIBLE_DEVICES entries
    placed_by: str   # pgolf, slurm, runpod, or none (a CPU job)
    # pgolf's lock descriptors: pass them to child processes (pass_fds) so the ids stay taken while
    # a child still runs on them, even if this process was killed first
    lock_fds: tuple[int, ...] = ()

    def env(self) -> dict[str, str]:
        """What to export to the job's processes: only pgolf's own placement changes anything."""
        return {"CUDA_VISIBLE_DEVICES": ",".join(self.ids)} if self.placed_by == "pgolf" else {}

    def record(self) -> dict:
        """For train.json / eval.json: which devices ran the job, by id, model and UUID."""
        return {"placed_by": self.placed_by, "cuda_visible_devices": ",".join(self.ids),
                "gpus": describe(self.ids) if self.ids else []}


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _nvidia_smi(fields: str) -> list[list[str]]:
    """Rows of `nvidia-smi --query-gpu=<fields>`; empty when there is no NVIDIA driver."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [[cell.strip() for cell in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def _torch_device_count() -> int:
    """torch's count, asked in a child process: initialising CUDA here would fix this process's devices."""
    code = "import torch; print(torch.cuda.device_count())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    return int(out.stdout.strip() or 0) if out.returncode == 0 else 0


def available_ids(env=None) -> list[str]:
    """The device ids this workflow may hand out."""
    env = os.environ if env is None else env
    for name in (IDS_ENV, "CUDA_VISIBLE_DEVICES"):
        if name in env:
            return _split(env[name])
    rows = _nvidia_smi("index")
    if rows:
        return [row[0] for row in rows]
    return [str(i) for i in range(_torch_device_count())]


def describe(ids: list[str]) -> list[dict]:
    """Model and UUID of each id (an index or a UUID, as CUDA_VISIBLE_DEVICES may hold either)."""
    known = {}
    for index, uuid, name in _nvidia_smi("index,uuid,name"):
        known[index] = known[uuid] = {"index": int(index), "uuid": uuid, "name": name}
    return [{"id": i, **known.get(i, {"index": None, "uuid": None, "name": None})} for i in ids]


def lock_dir(env=None) -> Path:
    env = os.environ if env is None else env
    default = Path(tempfile.gettempdir()) / f"pgolf-gpu-locks-{os.getuid()}"
    return Path(env.get(LOCK_DIR_ENV) or default)


def _lock_path(directory: Path, device_id: str) -> Path:
    return directory / ("gpu-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in device_id) + ".lock")


def try_acquire(ids: list[str], count: int, directory: Path) -> dict[str, int] | None:
    """Lock `count` free ids at once ({id: fd}), or none of them (None): a job never sits on part of its GPUs."""
    directory.mkdir(parents=True, exist_ok=True)
    held: dict[str, int] = {}
    for device_id in ids:
        fd = os.open(_lock_path(directory, device_id), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        held[device_id] = fd
        if len(held) == count:
            return held
    release(held)
    return None


def release(held: dict[str, int]) -> None:
    for fd in held.values():
        os.close(fd)  # closing the last descriptor of the lock drops it


def acquire(count: int, env=None, directory: Path | None = None) -> dict[str, int]:
    """Wait until `count` ids are free and lock them; fail at once if the machine has fewer than `count`."""
    ids = available_ids(env)
    if count > len(ids):
        raise GpuRequestError(
            f"a job asks for {count} GPU(s) but this workflow may use {len(ids)} ({','.join(ids) or 'none'}); "
            f"lower train.nproc, or set {IDS_ENV} / CUDA_VISIBLE_DEVICES to more devices")
    directory = directory or lock_dir(env)
    waited = False
    while (held := try_acquire(ids, count, directory)) is None:
        if not waited:
            message = (f"waiting for {count} free GPU(s) of {','.join(ids)}: other pgolf jobs hold them "
                       f"(locks in {directory})")
            log.warning(message)
            print(f"pgolf: {message}", file=sys.stderr, flush=True)  # the job log alone would hide the wait
            waited = True
        time.sleep(WAIT_POLL_SECONDS * (0.5 + random.random()))  # jittered: waiting jobs do not move in step
    return held


@contextmanager
def place(count: int, env=None, directory: Path | None = None):
    """The job's Placement for its whole life; pgolf's locks are dropped when the block ends."""
    env = os.environ if env is None else env
    scheduler = next((name for var, name in SCHEDULER_ENV.items() if env.get(var)), None)
    if count <= 0:
        yield Placement([], "none")
        return
    if scheduler:  # what the scheduler gave the job, recorded, not changed
        given = env.get("CUDA_VISIBLE_DEVICES")
        yield Placement(_split(given) if given is not None else available_ids(env), scheduler)
        return
    held = acquire(count, env, directory)
    try:
        placement = Placement(list(held), "pgolf", tuple(held.values()))
        log.info("GPUs for this job: CUDA_VISIBLE_DEVICES=%s", ",".join(placement.ids))
        yield placement
    finally:
        release(held)

