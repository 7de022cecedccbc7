"""GPTQ calibration: input second moments H = Σ x xᵀ of every quantized matrix, from training batches.

GPTQ minimizes ‖(W − Ŵ) X‖², whose Hessian in each row of W is X Xᵀ: the sum over calibration tokens
of the outer product of the layer's input. Forward hooks on the blocks' Linears record it; q, k and v
run as one GEMM on the attention's input, so a pre-hook there records their one shared Hessian. The
tied embedding, used as the output head, gets the Hessian of its input there: the final-normed hidden
states. Calibration reads training data, so it runs inside the training time budget.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from pgolf.layers import CausalSelfAttention
from pgolf.model import GPT

EMBED_KEY = "tok_emb.weight"
NUM_TOKENS_KEY = "__num_tokens__"


def _accumulate(hessian: torch.Tensor, x: torch.Tensor) -> None:
    x = x.detach().reshape(-1, x.size(-1)).float()
    hessian.addmm_(x.T, x)


@torch.no_grad()
def collect_hessians(model: GPT, next_inputs: Callable[[], torch.Tensor], num_batches: int) -> dict:
    """Run `num_batches` batches of `next_inputs()` token ids through `model`; return
    {param name: H [in, in] fp32 cpu} summed over all ranks, plus NUM_TOKENS_KEY: the token count."""
    device = model.tok_emb.weight.device
    hessians: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.blocks.named_modules(prefix="blocks"):
        if isinstance(module, CausalSelfAttention):
            # q, k and v run as one GEMM on the attention's input (never called as modules): one
            # Hessian of that input, under three names.
            h = torch.zeros(module.q.in_features, module.q.in_features, device=device)
            for leaf in ("q", "k", "v"):
                hessians[f"{name}.{leaf}.weight"] = h
            hooks.append(module.register_forward_pre_hook(lambda _mod, args, h=h: _accumulate(h, args[0])))
        elif isinstance(module, nn.Linear) and name.rpartition(".")[2] not in ("q", "k", "v"):
            key = f"{name}.weight"
            hessians[key] = torch.zeros(module.in_features, module.in_features, device=device)
            hooks.append(module.register_forward_hook(
                lambda _mod, inputs, _out, h=hessians[key]: _accumulate(h, inputs[0])))
    dim = model.config.model_dim
    hessians[EMBED_KEY] = torch.zeros(dim, dim, device=device)

    num_tokens = 0
    was_training = model.training
    model.eval()
    try:
        for _ in range(num_batches):
            input_ids = next_inputs()
            _accumulate(hessians[EMBED_KEY], model.hidden_states(input_ids))
            num_tokens += input_ids.numel()
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)

    count = torch.tensor([num_tokens], dtype=torch.float64, device=device)
    unique = list({id(h): h for h in hessians.values()}.values())
    if dist.is_available() and dist.is_initialized():
        for h in unique:
            dist.all_reduce(h)
        dist.all_reduce(count)
    on_cpu = {id(h): h.cpu() for h in unique}
    out = {k: on_cpu[id(h)] for k, h in hessians.items()}
    out[NUM_TOKENS_KEY] = int(count.item())
    return out
