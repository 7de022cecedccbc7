import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pgolf import attention_ops
from pgolf.attention_ops import qk_norm_rope, xsa
from pgolf.layers import Rotary, exclusive_self_attention

pytestmark = pytest.mark.usefixtures("one_torch_thread")

B, T, H, HKV, D = 2, 9, 4, 2, 16


def qkv_output(seed=0, scale=3.0):
    """A float64 [B, T, (H + 2·HKV)·D] tensor: q, k and v are strided views of it, as after the q/k/v GEMM."""
    return torch.randn(B, T, (H + 2 * HKV) * D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * scale


def plain_qk(x, gain, rot):
    """pgolf.layers' unfused code: rms_norm over head_dim, Rotary, gain; back to [B, T, heads, D]."""
    out = rot(F.rms_norm(x.transpose(1, 2), (x.size(-1),)))
    return (out if gain is None else out * gain[None, :, None, None]).transpose(1, 2)


def grads(out, inputs, seed=1):
    w = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, inputs, w)


@pytest.mark.parametrize("rope_dims", [4, D])  # partial, and every dim rotated
@pytest.mark.parametrize("with_gain", [True, False])
def test_qk_norm_rope_matches_the_plain_code_and_its_gradients(rope_dims, with_gain):
    rot = Rotary(rope_dims, 10000.0).double()
    x = qkv_output()[..., H * D:2 * H * D].view(B, T, H, D).requires_grad_()  # strided, not contiguous
    assert not x.is_contiguous()
    gain = (torch.rand(H, dtype=torch.float64) + 1).requires_grad_() if with_gain else None
    cos, sin = rot.tables(T, torch.float64)
    fused, plain = qk_norm_rope(x, gain, cos, sin), plain_qk(x, gain, rot)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)  # the op's torch path computes in float32
    inputs = (x, gain) if with_gain else (x,)
    for got, want in zip(grads(fused, inputs), grads(plain, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_xsa_matches_the_plain_code_and_its_gradients():
    qkv = qkv_output(seed=2)
    y = torch.randn(B, H, T, D, dtype=torch.float64).transpose(1, 2).requires_grad_()  # SDPA's output layout
    v = qkv[..., (H + HKV) * D:].view(B, T, HKV, D).clone()
    v[0, 3, 1] = 0.0  # a zero value vector: F.normalize's clamp, whose gradient skips the norm
    v.requires_grad_()
    fused, plain = xsa(y, v), exclusive_self_attention(y, v)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads(fused, (y, v)), grads(plain, (y, v))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_custom_op_registrations():
    rot = Rotary(4, 10000.0)
    qkv = qkv_output(seed=3).float()
    x, v = qkv[..., :H * D].view(B, T, H, D), qkv[..., (H + HKV) * D:].view(B, T, HKV, D)
    cos, sin = rot.tables(T, torch.float32)
    gain = torch.rand(H) + 1
    torch.library.opcheck(attention_ops._qk_op, (x.detach().requires_grad_(), gain.requires_grad_(), cos, sin))
    torch.library.opcheck(attention_ops._qk_op, (x.detach().requires_grad_(), None, cos, sin))
    y = torch.randn(B, T, H, D, requires_grad=True)
    torch.library.opcheck(attention_ops._xsa_op, (y, v.detach().requires_grad_()))


def test_kernels_take_only_power_of_two_tiles():
    """Other head counts or sizes (an ablation's) fall back to the torch path instead of failing to compile."""
    fits = attention_ops._tiles_fit
    assert fits(torch.empty(1, 2, 8, 64), torch.empty(1, 2, 4, 64))
    assert not fits(torch.empty(1, 2, 6, 64))   # 6 heads
    assert not fits(torch.empty(1, 2, 8, 48))   # head_dim 48
    assert not fits(torch.empty(1, 2, 8, 512))


INTERPRETED_CHECK = """
import torch
from pgolf import attention_ops as ops
from pgolf.layers import Rotary
g = torch.Generator().manual_seed(0)
B, T, H, D = 2, 7, 4, 16
base = torch.randn(B, T, 3 * H * D, generator=g) * 3.0
rot = Rotary(8, 10000.0)
ops.KERNEL.update(qk_tokens=4, xsa_tokens=4)  # 14 tokens: the last program has masked lanes
for dtype, tol in ((torch.float32, 2e-5), (torch.bfloat16, 2e-2)):
    cos, sin = rot.tables(T, dtype)
    x = base[..., H * D:2 * H * D].to(dtype).view(B, T, H, D)  # strided like the q/k/v GEMM's output
    gain = torch.rand(H, generator=g).to(dtype) + 1
    dy = torch.randn(B, H, T, D, generator=g).to(dtype).transpose(1, 2)  # cuDNN's gradient layout
    for gn in (gain, None):
        y = ops._qk_triton(x, gn, cos, sin)
        torch.testing.assert_close(y.float(), ops._qk_torch(x, gn, cos, sin).float(), rtol=tol, atol=tol)
        dx, dgain = ops._qk_backward_triton(dy, x, gn, cos, sin)
        rdx, rdgain = ops._qk_backward_torch(dy, x, gn, cos, sin)
        torch.testing.assert_close(dx.float(), rdx.float(), rtol=tol, atol=tol)
        if gn is not None:
            torch.testing.assert_close(dgain, rdgain, rtol=1e-4, atol=1e-4)
    yv = torch.randn(B, H, T, D, generator=g).to(dtype).transpose(1, 2)  # SDPA's output layout
    v = base[..., 2 * H * D:2 * H * D + 2 * D].to(dtype).view(B, T, 2, D)
    v[0, 1, 1] = 0.0  # a zero value vector: F.normalize's clamp
    torch.testing.assert_close(ops._xsa_triton(yv, v).float(), ops._xsa_torch(yv, v).float(), rtol=tol, atol=tol)
    dout = torch.randn(B, T, H, D, generator=g).to(dtype)
    for got, want in zip(ops._xsa_backward_triton(dout, yv, v), ops._xsa_backward_torch(dout, yv, v)):
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
print("kernels ok")
"""


def test_triton_kernels_in_the_interpreter():
    """The CUDA kernels themselves, run by Triton's CPU interpreter (on before Triton is imported, hence
    the subprocess), against the torch path: strided q/k and value views, cuDNN- and SDPA-shaped
    gradient and output layouts, masked lanes, bf16 as in training, a zero value vector."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", INTERPRETED_CHECK], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "kernels ok" in done.stdout, done.stderr[-3000:]
