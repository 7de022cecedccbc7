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

SHIM = Path(__file__).resolve().parents[1] / "bench" / "ref_shim"
sys.path.insert(0, str(SHIM))
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


RECORD_0611 = Path(__file__).resolve().parents[1] / ".ref0611" / "train_gpt.py"

# A tiny instance of the record's own model (its code, this shim), in float32 on CPU: four documents
# packed with the record's _build_cu_seqlens, against each document run alone through flash_attn_func.
PACKED_VS_ALONE = """
import json, sys, torch
sys.path[:0] = [sys.argv[2], sys.argv[1]]  # this repository's shim before the record's folder
import flash_attn_interface
assert flash_attn_interface.__file__.startswith(sys.argv[2])
import train_gpt as ref
torch.manual_seed(0)
m = ref.GPT(ref.Hyperparameters()).float().eval()
with torch.no_grad():
    for p in m.parameters():
        p.copy_(torch.randn_like(p) * 0.05 if p.dim() >= 2 else p + 0.1 * torch.randn_like(p))
ref.BOS_ID, m.looping_active = 1, True
docs = [torch.cat([torch.tensor([1]), torch.randint(4, 64, (n - 1,))]) for n in (7, 13, 5, 9)]
x = torch.cat(docs)
cu, max_seqlen = ref._build_cu_seqlens((x == 1).nonzero(as_tuple=True)[0].tolist(), x.numel(), x.device, 2048, 64)
packed = m.forward_logits(x[None], cu_seqlens=cu, max_seqlen=max_seqlen)[0]
alone = torch.cat([m.forward_logits(d[None])[0] for d in docs])
w = torch.randn(packed.shape)
params = [p for p in m.parameters() if p.requires_grad]
g_packed = torch.autograd.grad((packed * w).sum(), params, allow_unused=True)
g_alone = torch.autograd.grad((alone * w).sum(), params, allow_unused=True)
grad_diff = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                for a, b in zip(g_packed, g_alone) if a is not None and b is not None)
whole = m.forward_logits(x[None])[0]
print(json.dumps({"logits": (packed - alone).abs().max().item(), "grads_rel": grad_diff,
                  "unmasked": (whole - alone).abs().max().item(), "cu_len": cu.numel()}))
"""


@pytest.mark.skipif(not RECORD_0611.is_file(), reason="no .ref0611/ (REF_RECORD=1.0611 bash bench/prepare_reference.sh)")
def test_the_1_0611_records_model_scores_packed_documents_as_if_alone(tmp_path):
    """Its smear gate, gates, XSA, depth recurrence and parallel lanes included (RoPE is relative, so a
    document's offset in the packed stream changes nothing); one unmasked pass shows the check can tell."""
    import json
    import os
    import subprocess

    env = dict(os.environ, CASEOPS_ENABLED="1", NUM_LAYERS="4", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2",
               VOCAB_SIZE="64", LOOP_START="1", LOOP_END="2", PARALLEL_START_LAYER="3", XSA_LAST_N="4",
               SMEAR_GATE_ENABLED="1", SPARSE_ATTN_GATE_ENABLED="1", GATED_ATTN_QUANT_GATE="1", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", PACKED_VS_ALONE, str(RECORD_0611.parent), str(SHIM)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert r["cu_len"] == 64  # padded by repeating the end, as in training
    assert r["logits"] < 1e-5 and r["grads_rel"] < 1e-4, r
    assert r["unmasked"] > 1e-2, r
