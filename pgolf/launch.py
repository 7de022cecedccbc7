"""Launch the train and eval stages under torchrun and move their files onto the paths Snakemake asked for."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pgolf
from pgolf import io

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


def _run_logged(cmd: list[str], log_path, threads: int, nproc: int, what: str) -> None:
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=launch_env(threads, nproc))
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}); see {log_path}")


def launch_env(threads: int, nproc: int, base: dict | None = None) -> dict:
    """Environment for the ranks: pgolf importable, CPU threads shared out among the ranks."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = str(max(1, threads // nproc))
    return env


def run_train(cfg: dict, train_dir, tokenizer, seed: int, outputs: dict, log_path, nproc: int,
              threads: int) -> None:
    """Run training with `nproc` ranks; `outputs` maps each of TRAIN_FILES to its final path.

    Ranks write into a scratch directory beside the model output; files move to their final paths only
    after every rank exited cleanly, so a failed run leaves no output behind."""
    missing = [name for name in TRAIN_FILES if name not in outputs]
    if missing:
        raise KeyError(f"run_train: no output path for {', '.join(missing)}")
    with _scratch(Path(outputs["model.pt"]).parent, ".train.", cfg) as scratch:
        out_dir = scratch / "out"
        cmd = torchrun_command(nproc, "pgolf.train", ["--config", scratch / "params.json", "--train-dir", train_dir,
                                                      "--tokenizer", tokenizer, "--out-dir", out_dir, "--seed", int(seed)])
        _run_logged(cmd, log_path, threads, nproc, "training")
        for name in TRAIN_FILES:
            Path(outputs[name]).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(out_dir / name, outputs[name])


def run_eval(mode: str, model_path, val_dir, tokenizer, cfg: dict, device: str, out_json, log_path, nproc: int,
             threads: int) -> None:
    """The eval stage with `nproc` ranks. One rank runs in this process (the CPU path: no start-up cost);
    more run under torchrun, writing into a scratch file that becomes out_json only if every rank succeeded."""
    if nproc <= 1:
        from pgolf.evaluate import evaluate_files

        evaluate_files(mode, model_path, val_dir, tokenizer, cfg, device, out_json)
        return
    with _scratch(Path(out_json).parent, ".eval.", cfg) as scratch:
        cmd = torchrun_command(nproc, "pgolf.evaluate", ["--mode", mode, "--model", model_path, "--val-dir", val_dir,
                                                         "--tokenizer", tokenizer, "--config", scratch / "params.json",
                                                         "--device", device, "--out", scratch / "eval.json"])
        _run_logged(cmd, log_path, threads, nproc, "evaluation")
        shutil.move(scratch / "eval.json", out_json)
