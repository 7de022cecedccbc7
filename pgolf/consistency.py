"""Rules that tie config keys together, each written once.

pgolf.config.config_errors checks them (and the rules of sections no packed module reads) for every
ablation before any job runs; ModelConfig, the loader and the train process check them again at run
time, since tests and bench/ call them directly and the number of ranks is only known there. Each
function returns the broken rules as messages that name the keys; an empty list means consistent.
No torch here: the Snakefile imports this, and the packed code carries it (pgolf.model imports it).
"""
from __future__ import annotations


def model_shape_errors(model_dim: int, num_heads: int, num_kv_heads: int, num_layers: int, rope_dims: int | None,
                       loop_layers: list) -> list[str]:
    """The `train:` keys that fix the transformer's shape."""
    errors = []
    if model_dim % num_heads:
        errors.append(f"train.model_dim ({model_dim}) must be divisible by train.num_heads ({num_heads})")
    elif (model_dim // num_heads) % 2:
        errors.append(f"train.model_dim / train.num_heads ({model_dim // num_heads}) must be even (RoPE)")
    elif rope_dims is not None and not (0 < rope_dims <= model_dim // num_heads and rope_dims % 2 == 0):
        errors.append(f"train.rope_dims ({rope_dims}) must be even and in 2..head dim "
                      f"(train.model_dim / train.num_heads = {model_dim // num_heads})")
    if num_heads % num_kv_heads:
        errors.append(f"train.num_heads must be divisible by train.num_kv_heads ({num_heads} and {num_kv_heads})")
    loop = list(loop_layers)
    if loop and (loop != list(range(loop[0], loop[-1] + 1)) or loop[0] < 0 or loop[-1] >= num_layers):
        errors.append(f"train.loop_layers {loop} must be contiguous block indices below train.num_layers ({num_layers})")
    return errors


def batch_split_errors(batch_tokens: int, seq_len: int, ranks: int, grad_accum_steps: int) -> list[str]:
    """Each step's tokens split into whole sequences, evenly over the ranks and their micro-batches."""
    if grad_accum_steps < 1 or batch_tokens % (seq_len * ranks * grad_accum_steps):
        return [f"train.batch_tokens={batch_tokens} must be a multiple of train.seq_len={seq_len} * ranks={ranks} "
                f"* train.grad_accum_steps={grad_accum_steps}"]
    return []

