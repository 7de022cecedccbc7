"""Launch the train stage under torchrun and move its files onto the paths Snakemake asked for."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pgolf
from pgolf import io

# pgolf.train writes these names into its --out-dir; the rule's outputs may be named anything.
TRAIN_FILES = ("model.pt", "hessians.pt", "train.log", "train.json")
REPO_ROOT = Path(pgolf.__file__).resolve().parents[1]


def torchrun_command(nproc: int, config_json, train_dir, tokenizer, out_dir, seed: int,
                     python: str = sys.executable) -> list[str]:
    """`python -m torch.distributed.run` rather than `torchrun`, so the launcher is the venv's own."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "pgolf.train", "--config", str(config_json), "--train-dir", str(train_dir),
            "--tokenizer", str(tokenizer), "--out-dir", str(out_dir), "--seed", str(int(seed))]


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
    model_dir = Path(outputs["model.pt"]).parent
    model_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".train.", dir=model_dir))
    try:
        config_json = scratch / "params.json"
        io.write_json(config_json, cfg)
        out_dir = scratch / "out"
        cmd = torchrun_command(nproc, config_json, train_dir, tokenizer, out_dir, seed)
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=launch_env(threads, nproc))
        if result.returncode != 0:
            raise RuntimeError(f"training failed (exit {result.returncode}); see {log_path}")
        for name in TRAIN_FILES:
            Path(outputs[name]).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(out_dir / name, outputs[name])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
