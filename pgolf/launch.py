"""Launch the train and eval stages under torchrun and move their files onto the paths Snakemake asked for."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pgolf
from pgolf import io
from pgolf.gpus import Placement
from pgolf.progress import Reporter
from pgolf.provenance import stamp

CPU_JOB = Placement([], "none")

# pgolf.train writes these names into its --out-dir; the rule's outputs may be named anything.
TRAIN_FILES = ("model.pt", "hessians.pt", "train.log", "train.json")
REPO_ROOT = Path(pgolf.__file__).resolve().parents[1]


def torchrun_prefix(nproc: int, python: str = sys.executable) -> list[str]:
    """`python -m torch.distributed.run` rather than `torchrun`, so the launcher is the venv's own."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def torchrun_command(nproc: int, module: str, args: list, python: str = sys.executable) -> list[str]:
    return [*torchrun_prefix(nproc, python), "-m", module, *(str(a) for a in args)]


@contextmanager
def _scratch(parent: Path, prefix: str, cfg: dict):
    """A scratch directory inside `parent` holding the ranks' params.json, removed whatever happens: the
    ranks write there, and their files move to the rule's outputs only after every rank exited cleanly."""
    with io.scratch_dir(parent, prefix) as scratch:
        io.write_json(scratch / "params.json", cfg)
        yield scratch


def _run_logged(cmd: list[str], log_path, threads: int, nproc: int, what: str, placement: Placement = CPU_JOB,
                budget_seconds: float | None = None) -> None:
    """Run cmd on the job's devices with its output going to log_path whole and, as compact progress lines,
    to this process's stderr (pgolf.progress), which is the user's terminal under Snakemake's local executor.
    The device locks pass to the child, so its ids stay taken while it runs."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    report = Reporter(f"{what} {Path(log_path).stem}", budget_seconds)
    env = {**launch_env(threads, nproc), **placement.env()}
    with open(log_path, "ab") as log:
        log.write(("".join(f"{k}={v} " for k, v in placement.env().items()) + "$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                pass_fds=placement.lock_fds)
        pending = b""
        for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):
            log.write(chunk)
            log.flush()
            *records, pending = re.split(rb"[\r\n]", pending + chunk)
            for record in records:
                report(record.decode("utf-8", "replace"))
        returncode = proc.wait()
    if returncode != 0:
        raise RuntimeError(f"{what} failed (exit {returncode}); see {log_path}")


def launch_env(threads: int, nproc: int, base: dict | None = None) -> dict:
    """Environment for the ranks: pgolf importable, CPU threads shared out among the ranks."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = str(max(1, threads // nproc))
    return env


def run_gate(device: str, nproc: int, floors: dict, out_json: Path, log_path, threads: int,
             placement: Placement = CPU_JOB) -> dict:
    """pgolf.gate in its own process (its CUDA contexts end with it); raises GateError naming a slow device."""
    from pgolf.gate import check

    cmd = [sys.executable, "-m", "pgolf.gate", "--device", device, "--nproc", str(nproc), "--out", str(out_json)]
    _run_logged(cmd, log_path, threads, 1, "GPU gate", placement)
    record = dict(io.read_json(out_json), min_tflops=floors["min_tflops"], min_gbps=floors["min_gbps"])
    with open(log_path, "a") as log:
        for m in record["devices"]:
            log.write(f"gate: {m['device']} ({m['name']}) {m['tflops']:.2f} TFLOP/s {m['dtype']} GEMM, "
                      f"{m['gbps']:.1f} GB/s copy\n")
    check(record)
    return record


def run_train(cfg: dict, train_dir, tokenizer, seed: int, outputs: dict, log_path, nproc: int,
              threads: int, gate: dict | None = None, placement: Placement = CPU_JOB) -> None:
    """Run training with `nproc` ranks; `outputs` maps each of TRAIN_FILES to its final path.

    Ranks write into a scratch directory beside the model output; files move to their final paths only
    after every rank exited cleanly, so a failed run leaves no output behind. `gate` (the config's `gate:`
    floors) first times every device of the job; its figures go into train.json."""
    missing = [name for name in TRAIN_FILES if name not in outputs]
    if missing:
        raise KeyError(f"run_train: no output path for {', '.join(missing)}")
    with _scratch(Path(outputs["model.pt"]).parent, ".train.", cfg) as scratch:
        gate_record = (run_gate(cfg["device"], nproc, gate, scratch / "gate.json", log_path, threads, placement)
                       if gate else None)
        out_dir = scratch / "out"
        cmd = torchrun_command(nproc, "pgolf.train", ["--config", scratch / "params.json", "--train-dir", train_dir,
                                                      "--tokenizer", tokenizer, "--out-dir", out_dir, "--seed", int(seed)])
        _run_logged(cmd, log_path, threads, nproc, "training", placement, cfg["max_wallclock_seconds"])
        # the devices that ran it, the gate's figures and the provenance, before train.json reaches its path
        stamp(out_dir / "train.json", REPO_ROOT, placement=placement.record(), **({"gate": gate_record} if gate_record else {}))
        for name in TRAIN_FILES:
            Path(outputs[name]).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(out_dir / name, outputs[name])


def run_eval(mode: str, model_path, val_dir, tokenizer, cfg: dict, device: str, out_json, log_path, nproc: int,
             threads: int, placement: Placement = CPU_JOB) -> None:
    """The eval stage with `nproc` ranks. One rank runs in this process (the CPU path: no start-up cost);
    more run under torchrun. Either writes a scratch file that becomes out_json only if every rank succeeded."""
    with _scratch(Path(out_json).parent, ".eval.", cfg) as scratch:
        if nproc <= 1:
            from pgolf.evaluate import evaluate_files

            os.environ.update(placement.env())  # before this process first touches CUDA
            evaluate_files(mode, model_path, val_dir, tokenizer, cfg, device, scratch / "eval.json")
        else:
            cmd = torchrun_command(nproc, "pgolf.evaluate", ["--mode", mode, "--model", model_path, "--val-dir",
                                                             val_dir, "--tokenizer", tokenizer, "--config",
                                                             scratch / "params.json", "--device", device,
                                                             "--out", scratch / "eval.json"])
            _run_logged(cmd, log_path, threads, nproc, "evaluation", placement)
        stamp(scratch / "eval.json", REPO_ROOT, placement=placement.record())
        from pgolf.ttt import DOC_TABLE_NAME

        if (scratch / DOC_TABLE_NAME).exists():  # TTT's per-document table, beside eval.json
            shutil.move(scratch / DOC_TABLE_NAME, Path(out_json).with_name(DOC_TABLE_NAME))
        shutil.move(scratch / "eval.json", out_json)
