"""What an exported submission's train_gpt.py runs: train → quantize → compress → eval with the config
packed into it (module pgolf.submission_config), under torchrun, on the challenge's data layout and
environment variables (DATA_DIR or DATA_PATH, TOKENIZER_PATH, SEED, RUN_ID, MAX_WALLCLOCK_SECONDS).
It prints its scores in the records' log format and writes logs/<RUN_ID>.txt and final_model.pgolf.ptz.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch.distributed as dist

from pgolf import io
from pgolf.artifact import compress, resolve_level
from pgolf.evaluate import evaluate_files
from pgolf.gptq import quantize_model
from pgolf.train import train

ARTIFACT_NAME = "final_model.pgolf.ptz"


def data_paths(vocab_size: int, rank: int, work: Path) -> tuple[Path, Path, str]:
    """(train dir, val dir, tokenizer): the challenge keeps both splits in one directory, pgolf's stages read
    one directory per split, so each rank links the shards into two of its own."""
    data_dir = os.environ.get("DATA_DIR", "./data/")
    datasets = Path(os.environ.get("DATA_PATH", os.path.join(data_dir, "datasets", f"fineweb10B_sp{vocab_size}")))
    tokenizer = os.environ.get("TOKENIZER_PATH", os.path.join(data_dir, "tokenizers", f"fineweb_{vocab_size}_bpe.model"))
    splits = []
    for split in ("train", "val"):
        shards = sorted(datasets.glob(f"fineweb_{split}_*.bin"))
        if not shards:
            raise FileNotFoundError(f"no {datasets}/fineweb_{split}_*.bin shards (set DATA_DIR or DATA_PATH)")
        directory = work / f"rank{rank}" / split
        directory.mkdir(parents=True, exist_ok=True)
        for shard in shards:
            link = directory / shard.name
            if not link.exists():
                link.symlink_to(shard.resolve())
        splits.append(directory)
    return splits[0], splits[1], tokenizer


def quantize_and_compress(work: Path, cfg: dict) -> int:
    """Rank 0: GPTQ with the training run's Hessians, then the codec; the artifact's model bytes."""
    quantize_model(work / "model.pt", work / "hessians.pt", cfg["quant"], work / "quant.bin", work / "quant.json")
    codec = cfg["compress"]["codec"]
    blob = compress((work / "quant.bin").read_bytes(), codec, resolve_level(codec, cfg["compress"]["level"]))
    io.write_bytes(ARTIFACT_NAME, blob)
    return os.path.getsize(ARTIFACT_NAME)


def log_lines(lines: list[str], run_id: str) -> None:
    """Print and append to logs/<RUN_ID>.txt, as the records do."""
    Path("logs").mkdir(exist_ok=True)
    with open(f"logs/{run_id}.txt", "a", encoding="utf-8") as f:
        for line in lines:
            print(line, flush=True)
            print(line, file=f)


def main() -> None:
    from pgolf.submission_config import CONFIG  # packed beside the code by pgolf.submission

    seed, rank = int(os.environ.get("SEED", 1337)), int(os.environ.get("RANK", 0))
    run_id = os.environ.get("RUN_ID", f"seed{seed}")
    train_cfg = dict(CONFIG["train"], max_wallclock_seconds=float(
        os.environ.get("MAX_WALLCLOCK_SECONDS", CONFIG["train"]["max_wallclock_seconds"])))
    work = Path(f"pgolf_{run_id}")
    train_dir, val_dir, tokenizer = data_paths(CONFIG["tokenizer"]["vocab_size"], rank, work)
    summary = train(train_cfg, train_dir, tokenizer, work, seed)
    if rank == 0:
        log_lines((work / "train.log").read_text().splitlines(), run_id)
        model_bytes = quantize_and_compress(work, CONFIG)
        code_bytes = os.path.getsize(sys.argv[0])
        log_lines([f"stopping: step:{summary['steps']} train_time:{1000 * summary['train_seconds']:.0f}ms "
                   f"step_avg:{summary['step_ms']:.2f}ms",
                   f"Serialized model {CONFIG['compress']['codec']}: {model_bytes} bytes",
                   f"Code size: {code_bytes} bytes",
                   f"Total submission size {CONFIG['compress']['codec']}: {model_bytes + code_bytes} bytes"], run_id)
    if dist.is_initialized():
        dist.barrier()  # the artifact is on disk before any rank reads it
    started = time.perf_counter()
    result = evaluate_files("artifact", ARTIFACT_NAME, val_dir, tokenizer, CONFIG["eval"], CONFIG["train"]["device"],
                            work / "eval.json")
    if rank == 0:
        log_lines([f"quantized_sliding_window val_loss:{result['val_loss']:.8f} val_bpb:{result['val_bpb']:.8f} "
                   f"eval_time:{1000 * (time.perf_counter() - started):.0f}ms"], run_id)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
