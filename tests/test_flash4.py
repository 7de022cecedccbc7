"""pgolf.flash4: the FlashAttention 4 custom ops, checked on the CPU through their PyTorch path against SDPA
(values, log-sum-exp and gradients, with grouped K/V heads) and with torch.library.opcheck."""
import pytest
import torch
import torch.nn.functional as F

from pgolf import flash4


def _inputs(batch=2, seq=12, heads=4, kv_heads=2, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq, heads, dim, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(batch, seq, kv_heads, dim, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(batch, seq, kv_heads, dim, generator=g, dtype=torch.float64, requires_grad=True)
    return q, k, v


def _sdpa(q, k, v):
    group = q.size(2) // k.size(2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(group, 1),
                                         v.transpose(1, 2).repeat_interleave(group, 1), is_causal=True)
    return out.transpose(1, 2)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_forward_and_lse_match_sdpa(kv_heads):
    q, k, v = _inputs(kv_heads=kv_heads)
    out, lse = flash4.fa4_forward(q, k, v)
    torch.testing.assert_close(out, _sdpa(q, k, v).to(out.dtype), rtol=1e-5, atol=1e-5)
    group = q.size(2) // k.size(2)
    scores = (q.transpose(1, 2) @ k.transpose(1, 2).repeat_interleave(group, 1).transpose(-1, -2)) / q.size(-1) ** 0.5
    scores = scores.masked_fill(torch.ones(12, 12, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_gradients_match_sdpa(kv_heads):
    q, k, v = _inputs(kv_heads=kv_heads)
    grad = torch.randn(q.shape, dtype=q.dtype, generator=torch.Generator().manual_seed(1))
    mine = torch.autograd.grad(flash4.attention(q, k, v), (q, k, v), grad)
    ref = torch.autograd.grad(_sdpa(q, k, v), (q, k, v), grad)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_ops_pass_opcheck():
    q, k, v = (t.float().detach().requires_grad_(True) for t in _inputs())
    torch.library.opcheck(flash4.fa4_forward, (q, k, v))
    out, lse = flash4.fa4_forward(q, k, v)
    torch.library.opcheck(flash4.fa4_backward, (torch.randn_like(out), q.detach(), k.detach(), v.detach(),
                                                out.detach(), lse.detach()))


def test_sdpa_causal_keeps_sdpa_on_cpu_when_fa4_is_set():
    from pgolf import layers
    q, k, v = (t.transpose(1, 2).float() for t in _inputs())
    try:
        layers.set_attention_backend(None, True, fa4=True)
        out = layers.sdpa_causal(q, k, v)
    finally:
        layers.set_attention_backend(None, True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(out, ref)
