"""Pre-flight: check a config before any GPU is rented, so a mistake costs nothing.

- the data and tokenizer files the config names exist;
- the model fits the 16,000,000-byte artifact budget, by an estimate from the parameter count,
  the quantization bit widths and the code size (printed, so the user sees the margin);
- the GPU type and count asked for exist on RunPod.

The RunPod executor calls executor_hook() before its first API call (setting `preflight`)."""

import logging
from pathlib import Path
from typing import Iterable, Mapping, Optional, Tuple

import torch

from pgolf import ARTIFACT_LIMIT_BYTES as LIMIT_BYTES
from snakemake_executor_plugin_runpod.pods import PodSpecError, canonical_gpu_type, check_gpu_count

log = logging.getLogger(__name__)

# Packed code of a record submission (train_gpt.py-sized): a conservative default.
CODE_BYTES_ESTIMATE = 60_000
# Brotli on GPTQ int-k values (clipped, peaked near 0) stores them below k bits; the best
# records reach roughly 0.7-0.8 of the raw width. Below this fraction a fit is implausible: error.
# Between it and 1.0 the run may fit: warn and go on.
MIN_COMPRESSED_FRACTION = 0.6
# One fp16 scale per output row of every quantized matrix.
SCALE_BYTES = 2
PASSTHROUGH_BYTES = 2  # fp16


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


def estimate_artifact_bytes(train_cfg: Mapping, quant_cfg: Mapping, vocab_size: int,
                            code_bytes: int = CODE_BYTES_ESTIMATE) -> dict:
    """Bytes of the submission if every quantized weight costs its full bit width (total_bytes),
    plus scales, fp16 small tensors and code; best_case_bytes assumes compression down to
    MIN_COMPRESSED_FRACTION of the quantized weights' raw width."""
    p = estimate_param_count(train_cfg, vocab_size)
    model = (p["block_matrices"] * int(quant_cfg["bits"]) / 8
             + p["embedding"] * int(quant_cfg["embed_bits"]) / 8
             + (p["block_matrix_rows"] + int(vocab_size)) * SCALE_BYTES
             + p["small"] * PASSTHROUGH_BYTES)
    weights = (p["block_matrices"] * int(quant_cfg["bits"]) + p["embedding"] * int(quant_cfg["embed_bits"])) / 8
    total = int(model) + int(code_bytes)
    best_case = int(model - weights * (1 - MIN_COMPRESSED_FRACTION)) + int(code_bytes)
    return {"params": p["total"], "model_bytes": int(model), "code_bytes": int(code_bytes),
            "total_bytes": total, "best_case_bytes": best_case, "limit_bytes": LIMIT_BYTES,
            "margin_bytes": LIMIT_BYTES - total}


def _check_paths(config: Mapping) -> list:
    errors = []
    docs = config.get("docs", {})
    if docs.get("source") == "jsonl":
        if not docs.get("path"):
            errors.append("docs.source is jsonl but docs.path is not set")
        elif not Path(docs["path"]).is_file():
            errors.append(f"docs.path {docs['path']} does not exist")
    model = config.get("tokenizer", {}).get("model")
    if model and not Path(model).is_file():
        errors.append(f"tokenizer.model {model} does not exist")
    return errors


def check_gpus(gpu_count, gpu_type: Optional[str]) -> Tuple[int, Optional[str]]:
    """Validate a GPU request; returns (count, RunPod gpuTypeId or None for CPU)."""
    try:
        n = check_gpu_count(gpu_count)
        return n, (canonical_gpu_type(gpu_type) if n and gpu_type else None)
    except PodSpecError as e:
        raise PreflightError(str(e)) from None


def check(config: Mapping, gpu_count=None, gpu_type: Optional[str] = None,
          code_bytes: int = CODE_BYTES_ESTIMATE) -> dict:
    """Run every check; raise PreflightError listing all problems, else return the estimate."""
    errors = _check_paths(config)
    estimate = None
    try:
        estimate = estimate_artifact_bytes(config["train"], config["quant"],
                                           config["tokenizer"]["vocab_size"], code_bytes)
        log.warning("pre-flight estimate: %(params)d params -> %(model_bytes)d model bytes + "
                    "%(code_bytes)d code bytes = %(total_bytes)d of %(limit_bytes)d "
                    "(margin %(margin_bytes)d)", estimate)
        print(f"pgolf pre-flight: {estimate['params']:,} parameters, estimated artifact "
              f"{estimate['total_bytes']:,} bytes of {LIMIT_BYTES:,} (margin {estimate['margin_bytes']:,})")
        if estimate["best_case_bytes"] > LIMIT_BYTES:
            errors.append(f"estimated artifact exceeds the {LIMIT_BYTES:,}-byte limit even if compression "
                          f"stores weights at {MIN_COMPRESSED_FRACTION:.0%} of their bit width "
                          f"({estimate['best_case_bytes']:,} bytes; shrink train.* or quant.bits / quant.embed_bits)")
        elif estimate["total_bytes"] > LIMIT_BYTES:
            log.warning("pre-flight: the artifact fits only if compression stores the quantized weights "
                        "below their bit width (%d bytes at full width)", estimate["total_bytes"])
    except (KeyError, TypeError) as e:
        errors.append(f"config lacks a key the size estimate needs: {e}")
    except PreflightError as e:
        errors.append(str(e))
    if gpu_count is not None:
        try:
            check_gpus(gpu_count, gpu_type)
        except PreflightError as e:
            errors.append(str(e))
    if errors:
        raise PreflightError("pre-flight failed:\n  - " + "\n  - ".join(errors))
    return estimate


def executor_hook(config: Mapping, jobs: Iterable[Tuple[str, Mapping]]):
    """Called by the RunPod executor with the workflow config and (rule, resources) of every job
    that will run on a pod. Checks the base config and every ablation's overridden config is
    the lead's business (pgolf.config); here the base config and each job's GPUs."""
    check(config)
    for rule, resources in jobs:
        try:
            check_gpus(resources.get("gpu", 0) or 0, resources.get("gpu_model"))
        except PreflightError as e:
            raise PreflightError(f"rule {rule}: {e}") from None
