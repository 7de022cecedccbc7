"""Causal GQA attention through FlashAttention 4 (the CuTe DSL kernels of PyPI's `flash-attn-4`), as two
torch custom ops so torch.compile keeps them in its graph instead of tracing into the DSL.

Layout: q [batch, seq, heads, head_dim], k and v [batch, seq, kv_heads, head_dim], the layout the q/k/v
GEMM produces, so no transpose is copied. `lse` is the row log-sum-exp [batch, heads, seq] in fp32, which
the backward reuses. On the CPU (tests, or a machine without the package) the same two functions are
computed in PyTorch in fp32, so the op registration, shapes and gradients are exercised without a GPU.
"""
from __future__ import annotations

import math

import torch

FA4_PACKAGE = "flash-attn-4"


def available() -> bool:
    """True when the FA4 package imports here (its CUDA kernels compile on first use)."""
    try:
        import flash_attn.cute.interface  # noqa: F401
    except Exception:
        return False
    return True


def _scores(q, k):
    """fp32 causal scores [batch, heads, seq, seq] with K repeated over each group of query heads."""
    group = q.size(2) // k.size(2)
    qf = q.float().transpose(1, 2)
    kf = k.float().transpose(1, 2).repeat_interleave(group, 1)
    s = qf @ kf.transpose(-1, -2) / math.sqrt(q.size(-1))
    seq = q.size(1)
    mask = torch.ones(seq, seq, dtype=torch.bool, device=q.device).triu(1)
    return s.masked_fill(mask, float("-inf"))


def _fold_groups(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """[batch, heads, seq, dim] summed over each group of query heads -> [batch, kv_heads, seq, dim]."""
    b, h, s, d = x.shape
    return x.view(b, kv_heads, h // kv_heads, s, d).sum(2)


def _reference_forward(q, k, v):
    s = _scores(q, k)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None])
    vf = v.float().transpose(1, 2).repeat_interleave(q.size(2) // v.size(2), 1)
    return (p @ vf).transpose(1, 2).contiguous().to(q.dtype), lse


def _reference_backward(dout, q, k, v, out, lse):
    kv_heads, group = k.size(2), q.size(2) // k.size(2)
    p = torch.exp(_scores(q, k) - lse[..., None])
    do = dout.float().transpose(1, 2)
    vf = v.float().transpose(1, 2).repeat_interleave(group, 1)
    kf = k.float().transpose(1, 2).repeat_interleave(group, 1)
    dv = _fold_groups(p.transpose(-1, -2) @ do, kv_heads)
    dp = do @ vf.transpose(-1, -2)
    delta = (do * out.float().transpose(1, 2)).sum(-1, keepdim=True)
    ds = p * (dp - delta) / math.sqrt(q.size(-1))
    dq = ds @ kf
    dk = _fold_groups(ds.transpose(-1, -2) @ q.float().transpose(1, 2), kv_heads)
    back = lambda g, like: g.transpose(1, 2).contiguous().to(like.dtype)  # noqa: E731
    return back(dq, q), back(dk, k), back(dv, v)


@torch.library.custom_op("pgolf::fa4_forward", mutates_args=())
def fa4_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if q.is_cuda:
        from flash_attn.cute.interface import _flash_attn_fwd
        out, lse = _flash_attn_fwd(q, k, v, causal=True, return_lse=True)[:2]
        return out.contiguous(), lse.contiguous()  # the strides register_fake promises the compiler
    return _reference_forward(q, k, v)


@fa4_forward.register_fake
def _(q, k, v):
    b, s, h, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((b, h, s), dtype=torch.float32)


@torch.library.custom_op("pgolf::fa4_backward", mutates_args=())
def fa4_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if q.is_cuda:
        from flash_attn.cute.interface import _flash_attn_bwd
        dq, dk, dv = _flash_attn_bwd(q, k, v, out, dout.contiguous(), lse, causal=True)[:3]
        return dq.contiguous(), dk.contiguous(), dv.contiguous()
    return _reference_backward(dout, q, k, v, out, lse)


@fa4_backward.register_fake
def _(dout, q, k, v, out, lse):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    q, k, v = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse = ctx.saved_tensors
    return fa4_backward(dout, q, k, v, out, lse)


fa4_forward.register_autograd(_backward, setup_context=_setup_context)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention on [batch, seq, heads, head_dim] inputs; k, v may have fewer (grouped) heads."""
    return fa4_forward(q, k, v)[0]
