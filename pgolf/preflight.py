"""Pre-flight: check every ablation and grid cell before any job starts, so a mistake costs nothing.

- the data and tokenizer files the config names exist, and published shards come with the
  published tokenizer;
- the model fits the 16,000,000-byte artifact budget, by an estimate from the parameter count,
  the quantization bit widths and the code size (printed, so the user sees the margin);
- a local CUDA run asks for no more GPUs than this machine lets the workflow use.

The Snakefile calls check_runs() once, in the main Snakemake process, whatever the executor, and
check_local_gpu_runs() before the first job when jobs run on this machine."""

import functools
import logging
import math
from pathlib import Path
from typing import Mapping

import torch

from pgolf import ARTIFACT_LIMIT_BYTES as LIMIT_BYTES
from pgolf import gpus

log = logging.getLogger(__name__)

# The estimate is only an estimate: refuse a config only when it is clearly over the limit, and
# warn when it lands within a few percent of it.
ERROR_ABOVE_FRACTION = 1.05
WARN_ABOVE_FRACTION = 0.97
# Brotli lands a little above the entropy of the quantized values.
CODER_OVERHEAD = 1.03
# One fp16 scale per output row of every quantized matrix; small tensors pass through in fp16.
SCALE_BYTES = 2
PASSTHROUGH_BYTES = 2


class PreflightError(ValueError):
    """The config cannot make a valid run; raised before any pod is rented."""


def estimate_param_count(train_cfg: Mapping, vocab_size: int) -> dict:
    """Exact parameter counts by kind, from pgolf's own GPT built on the meta device (no memory,
    no arithmetic), so the estimate follows every model switch without a second formula."""
    from pgolf.model import GPT, ModelConfig

    try:
        with torch.device("meta"):
            model = GPT(ModelConfig.from_train_cfg(dict(train_cfg), int(vocab_size)))
    except (ValueError, KeyError) as e:
        raise PreflightError(f"train: cannot build the model: {e}") from None
    counts = {"embedding": 0, "block_matrices": 0, "block_matrix_rows": 0, "small": 0}
    for name, param in model.named_parameters():
        if name == "tok_emb.weight":
            counts["embedding"] += param.numel()
        elif param.ndim == 2:
            counts["block_matrices"] += param.numel()
            counts["block_matrix_rows"] += param.shape[0]
        else:
            counts["small"] += param.numel()
    counts["total"] = counts["embedding"] + counts["block_matrices"] + counts["small"]
    return counts


def bits_per_weight(bits: int, clip_sigmas: float) -> float:
    """Entropy, in bits, of a Gaussian row quantized with SDClip's step (clip_sigmas * std / qmax).

    A step of Δ standard deviations leaves about log2(sqrt(2πe) / Δ) bits per value, which is why
    int6 with a 12.85σ clip compresses to ~3.3 bits and a 36M-parameter record fits 16 MB; never
    more than the bit width itself."""
    qmax = 2 ** (int(bits) - 1) - 1
    step_sigmas = float(clip_sigmas) / qmax
    return min(float(bits), max(0.0, math.log2(math.sqrt(2 * math.pi * math.e) / step_sigmas)))


@functools.lru_cache(maxsize=1)
def packed_code_bytes() -> int:
    """The bytes of the code.py the compress stage writes: pgolf's modules packed, measured here."""
    from pgolf.artifact import pack_code

    return len(pack_code())


def estimate_artifact_bytes(train_cfg: Mapping, quant_cfg: Mapping, vocab_size: int,
                            code_bytes: int | None = None) -> dict:
    """Compressed artifact bytes expected from the parameter count, bit widths and clip rules:
    quantized weights at their entropy (bits_per_weight) plus the coder's overhead, fp16 row
    scales, fp16 small tensors, and the code (by default pgolf's packed code, measured)."""
    code_bytes = packed_code_bytes() if code_bytes is None else code_bytes
    p = estimate_param_count(train_cfg, vocab_size)
    block_bits = bits_per_weight(quant_cfg["bits"], quant_cfg["clip_sigmas"])
    embed_bits = bits_per_weight(quant_cfg["embed_bits"], quant_cfg["embed_clip_sigmas"])
    weights = (p["block_matrices"] * block_bits + p["embedding"] * embed_bits) / 8 * CODER_OVERHEAD
    model = weights + (p["block_matrix_rows"] + int(vocab_size)) * SCALE_BYTES + p["small"] * PASSTHROUGH_BYTES
    total = int(model) + int(code_bytes)
    return {"params": p["total"], "block_bits_per_weight": block_bits, "embed_bits_per_weight": embed_bits,
            "model_bytes": int(model), "code_bytes": int(code_bytes), "total_bytes": total,
            "limit_bytes": LIMIT_BYTES, "margin_bytes": LIMIT_BYTES - total}


def _check_paths(config: Mapping) -> list:
    errors = []
    docs = config.get("docs", {})
    if docs.get("source") == "jsonl":
        if not docs.get("path"):
            errors.append("docs.source is jsonl but docs.path is not set")
        elif not Path(docs["path"]).is_file():
            errors.append(f"docs.path {docs['path']} does not exist")
    tokenizer = config.get("tokenizer", {})
    model = tokenizer.get("model")
    if model and not Path(model).is_file():
        errors.append(f"tokenizer.model {model} does not exist")
    if config.get("shards", {}).get("source") == "hf" and not (model or tokenizer.get("hf_repo")):
        errors.append("shards.source is hf but the tokenizer would be trained here: published shards hold the "
                      "published tokenizer's ids; set tokenizer.hf_repo (or tokenizer.model to that .model file)")
    return errors


def check_local_gpus(train_cfg: Mapping, visible: list) -> None:
    """A local CUDA run needs train.nproc of the GPU ids pgolf may hand out (`visible`, pgolf.gpus)."""
    if train_cfg.get("device") != "cuda":
        return
    if train_cfg["nproc"] > len(visible):
        raise PreflightError(f"train.nproc is {train_cfg['nproc']} but this machine lets the workflow use "
                             f"{len(visible)} GPU(s) ({','.join(visible) or 'none'}); lower train.nproc "
                             f"(raise train.grad_accum_steps to keep the batch) or run on a bigger machine")


def check(config: Mapping, code_bytes: int | None = None, where: str = "config") -> dict:
    """Run every check; raise PreflightError listing all problems, else return the estimate."""
    errors = _check_paths(config)
    estimate = None
    try:
        estimate = estimate_artifact_bytes(config["train"], config["quant"],
                                           config["tokenizer"]["vocab_size"], code_bytes)
        print(f"pgolf pre-flight, {where}: {estimate['params']:,} parameters, estimated artifact "
              f"{estimate['total_bytes']:,} bytes of {LIMIT_BYTES:,} (margin {estimate['margin_bytes']:,})")
        if estimate["total_bytes"] > ERROR_ABOVE_FRACTION * LIMIT_BYTES:
            errors.append(f"estimated artifact of {estimate['total_bytes']:,} bytes exceeds the {LIMIT_BYTES:,}-byte "
                          f"limit (shrink train.* or quant.bits / quant.embed_bits, or widen the clip)")
        elif estimate["total_bytes"] > WARN_ABOVE_FRACTION * LIMIT_BYTES:
            log.warning("pre-flight: the estimated artifact is within %.0f%% of the limit; the compress stage "
                        "measures the real size", 100 * (1 - WARN_ABOVE_FRACTION))
    except (KeyError, TypeError) as e:
        errors.append(f"config lacks a key the size estimate needs: {e}")
    except PreflightError as e:
        errors.append(str(e))
    if errors:
        raise PreflightError(f"pre-flight failed for {where}:\n  - " + "\n  - ".join(errors))
    return estimate


def _refuse(failures: list) -> None:
    if failures:
        raise PreflightError("\n".join(failures) + "\nNo job was started; fix the config and run again.")


def check_runs(ablations: Mapping[str, Mapping]) -> None:
    """check() every ablation and grid cell ({name: resolved config}); one error naming every failing
    cell, so nothing starts."""
    failures = []
    for name, cfg in ablations.items():
        try:
            check(cfg, where=f"ablation {name!r}")
        except PreflightError as e:
            failures.append(str(e))
    _refuse(failures)


def check_local_gpu_runs(ablations: Mapping[str, Mapping], env=None) -> None:
    """Every cell's GPU request against the GPUs pgolf may hand out on this machine (jobs run here)."""
    if not any(cfg["train"].get("device") == "cuda" for cfg in ablations.values()):
        return  # a CPU run: no need to look for GPUs
    visible = gpus.available_ids(env)
    failures = []
    for name, cfg in ablations.items():
        try:
            check_local_gpus(cfg["train"], visible)
        except PreflightError as e:
            failures.append(f"pre-flight failed for ablation {name!r}:\n  - {e}")
    _refuse(failures)
