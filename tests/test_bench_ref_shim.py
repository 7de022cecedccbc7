"""bench/ref_shim/flash_attn_interface.py: the FA3 stand-in the record scripts import, on CPU.

Both entry points are checked against a dense float64 attention written out per document: values
and gradients, GQA, the padded cu_seqlens the 1.0611 record builds, and tracing under
torch.compile(fullgraph=True) (aot_eager: the custom ops' fake and autograd registrations, no codegen).
"""
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "ref_shim"))
import flash_attn_interface as fa  # noqa: E402  (the stand-in, imported as the record scripts do)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, HKV, D = 4, 2, 8


def dense(q, k, v, causal, scale=None):
    """[L, H, D] attention of one document in float64, query head h reading kv head h // (H // Hkv)."""
    group = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * (scale if scale is not None else 1 / math.sqrt(q.size(-1)))
    if causal:
        lq, lk = q.size(0), k.size(0)
        scores = scores.masked_fill(torch.ones(lq, lk, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def dense_varlen(q, k, v, bounds, causal, scale=None):
    """The reference: each segment attended alone, concatenated."""
    return torch.cat([dense(q[a:b], k[a:b], v[a:b], causal, scale) for a, b in zip(bounds, bounds[1:]) if b > a])


def qkv(total, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(total, h, D, generator=g, dtype=torch.float64).requires_grad_() for h in (H, HKV, HKV)]


# Segments of 5, 1, 0 (empty), 7 and 3 tokens, then padding that repeats the end, as the record's
# _build_cu_seqlens pads cu_seqlens to a bucket of 64 entries.
BOUNDS = [0, 5, 6, 6, 13, 16]
PADDED = BOUNDS + [16] * 11


@pytest.mark.parametrize("causal", [True, False])
def test_varlen_matches_dense_per_document_values_and_gradients(causal):
    q, k, v = qkv(16)
    cu = torch.tensor(PADDED, dtype=torch.int32)
    got = fa.flash_attn_varlen_func(q, k, v, cu, cu, 7, 7, causal=causal)
    want = dense_varlen(q, k, v, BOUNDS, causal)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    w = torch.randn(got.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g_got = torch.autograd.grad((got * w).sum(), (q, k, v))
    g_want = torch.autograd.grad((want * w).sum(), (q, k, v))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_varlen_keeps_documents_apart_and_honours_softmax_scale():
    """Changing one document's keys and values changes no other document's output."""
    q, k, v = (t.detach() for t in qkv(16))
    cu = torch.tensor(PADDED, dtype=torch.int32)
    before = fa.flash_attn_varlen_func(q, k, v, cu, cu, 7, 7, softmax_scale=0.3, causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[6:13] += 1.0
    v2[6:13] -= 2.0
    after = fa.flash_attn_varlen_func(q, k2, v2, cu, cu, 7, 7, softmax_scale=0.3, causal=True)
    outside = torch.cat([torch.arange(0, 6), torch.arange(13, 16)])
    torch.testing.assert_close(after[outside], before[outside], rtol=0, atol=0)
    assert not torch.allclose(after[6:13], before[6:13])
    torch.testing.assert_close(before, dense_varlen(q, k, v, BOUNDS, True, scale=0.3), rtol=1e-10, atol=1e-10)


def test_varlen_traces_whole_under_torch_compile_fullgraph():
    q, k, v = qkv(16, seed=5)
    cu = torch.tensor(PADDED, dtype=torch.int32)

    def f(q, k, v, cu):
        return fa.flash_attn_varlen_func(q * 2.0, k, v, cu, cu, 7, 7, causal=True).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got, want = compiled(q, k, v, cu), f(q, k, v, cu)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for a, b in zip(torch.autograd.grad(got, (q, k, v)), torch.autograd.grad(want, (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_varlen_refuses_what_fa3_would_compute_differently():
    q, k, v = (t.detach() for t in qkv(16))
    cu = torch.tensor(PADDED, dtype=torch.int32)
    with pytest.raises(ValueError, match="exceeds max_seqlen"):
        fa.flash_attn_varlen_func(q, k, v, cu, cu, 6, 6, causal=True)  # a segment holds 7 tokens
    with pytest.raises(NotImplementedError, match="window"):
        fa.flash_attn_varlen_func(q, k, v, cu, cu, 7, 7, causal=True, window_size=(128, 0))
    with pytest.raises(NotImplementedError, match="seqlen_q != seqlen_k"):
        cu_k = torch.tensor([0, 4, 6, 6, 13, 16], dtype=torch.int32)
        fa.flash_attn_varlen_func(q, k, v, torch.tensor(BOUNDS, dtype=torch.int32), cu_k, 7, 7, causal=True)


def test_flash_attn_func_still_matches_dense_attention():
    """The dense entry point the 1.0856 record calls: [B, T, H, D] in and out, causal, GQA."""
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 9, H, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 9, HKV, D, generator=g, dtype=torch.float64) for _ in range(2))
    got = fa.flash_attn_func(q, k, v, causal=True)
    want = torch.stack([dense(q[b], k[b], v[b], True) for b in range(2)])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
