"""train.fused_mlp: the switch, its CPU fallback, the fused op's plumbing (PyTorch emulation of the
Triton kernels on CPU), and the Triton kernel itself run by Triton's CPU interpreter (fp32 and fp16:
the interpreter's bf16 dot is wrong, so bf16 and the speed are checked on the GPU by
bench/fused_mlp_check.py)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from pgolf import fused_mlp as fm
from pgolf.config import load_schema, validate_config
from pgolf.layers import MLP
from pgolf.model import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(vocab_size=61, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, mlp_mult=4, rope_base=10000.0,
            logit_softcap=30.0, seq_len=16, mlp_activation="leaky_relu2")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def mode():
    yield fm.set_fused_mlp
    fm.set_fused_mlp("off")


def plain(x, wf, wp):
    return F.linear(F.leaky_relu(F.linear(x, wf), 0.5).square(), wp)


@pytest.mark.parametrize("m", ["off", "auto", "on"])
def test_cpu_fallback_equals_the_plain_activation_and_gradients(mode, m):
    mode(m)
    torch.manual_seed(0)
    mlp = MLP(ModelConfig(**BASE)).train()
    x = torch.randn(2, 8, 64, requires_grad=True)
    assert not fm.use_fused(x, True, True, 64)
    y = mlp(x)
    x2 = x.detach().clone().requires_grad_(True)
    wf, wp = (mlp.fc.weight.detach().clone().requires_grad_(True), mlp.proj.weight.detach().clone().requires_grad_(True))
    ref = plain(x2, wf, wp)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(mlp.fc.weight.grad, wf.grad)
    torch.testing.assert_close(mlp.proj.weight.grad, wp.grad)


def test_fused_op_matches_the_plain_mlp_forward_and_backward():
    torch.manual_seed(1)
    x = torch.randn(3, 5, 64, dtype=torch.float64, requires_grad=True)
    wf = (torch.randn(256, 64, dtype=torch.float64) * 0.1).requires_grad_(True)
    wp = (torch.randn(64, 256, dtype=torch.float64) * 0.1).requires_grad_(True)
    y = fm.fused_mlp(x, wf, wp)
    leaves = (x, wf, wp)
    ref_leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    ref = plain(*ref_leaves)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, g)
    ref_grads = torch.autograd.grad(ref, ref_leaves, g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_fused_op_has_a_fake_implementation():
    torch.library.opcheck(torch.ops.pgolf.fused_mlp_fwd.default,
                          (torch.randn(6, 64), torch.randn(128, 64), torch.randn(64, 128)),
                          test_utils=("test_schema", "test_faketensor"))


def test_unknown_mode_is_refused(mode):
    with pytest.raises(ValueError):
        mode("yes")


def test_schema_accepts_the_key_and_the_configs_set_it():
    schema = load_schema(ROOT / "config" / "schema.yaml")
    spec = schema["properties"]["train"]["properties"]["fused_mlp"]
    assert spec["enum"] == ["off", "auto", "on"] and spec["default"] == "off"
    for name in ("config.yaml", "challenge.yaml"):
        cfg = yaml.safe_load((ROOT / "config" / name).read_text())
        assert cfg["train"]["fused_mlp"] in spec["enum"]
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for value in ("auto", "on", "off"):
        cfg["train"]["fused_mlp"] = value
        validate_config(cfg, schema)
    cfg["train"]["fused_mlp"] = "yes"
    with pytest.raises(ValueError, match="fused_mlp"):
        validate_config(cfg, schema)


# Runs in a fresh interpreter: TRITON_INTERPRET must be set before triton.jit wraps the kernel.
INTERPRETED_KERNEL = textwrap.dedent("""
    import sys, torch, triton
    from pgolf import fused_mlp as fm
    assert fm.HAVE_TRITON
    dtype, M, K, N, bm, bn, bk, transposed_b = sys.argv[1], *map(int, sys.argv[2:])
    dtype = getattr(torch, dtype)
    torch.manual_seed(M * N)
    a = torch.randn(M, K).to(dtype)
    # forward passes fc.weight.t() (a transposed view), backward passes proj.weight (contiguous)
    b = torch.randn(N, K).to(dtype).t() if transposed_b else torch.randn(K, N).to(dtype)
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    def run(h, out, backward):
        fm._mm_leaky2.fn[grid](a, b, h, out, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                               h.stride(0), h.stride(1), out.stride(0), out.stride(1), BACKWARD=backward,
                               BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=2)
    exact = a.double() @ b.double()
    tol = dict(rtol=2e-3, atol=2e-3) if dtype == torch.float16 else dict(rtol=1e-5, atol=1e-4)
    # forward: h = GEMM rounded to the dtype, out = leaky_relu(h, 0.5)^2 computed from that rounded h
    h, out = torch.full((M, N), float("nan"), dtype=dtype), torch.full((M, N), float("nan"), dtype=dtype)
    run(h, out, False)
    torch.testing.assert_close(h.double(), exact.to(dtype).double(), **tol)
    hf = h.float()
    torch.testing.assert_close(out.float(), torch.where(hf > 0, hf, 0.5 * hf).square().to(dtype).float(), rtol=0, atol=0)
    # backward: out = GEMM * (2h if h > 0 else h/2) with h read from memory (h > 0 and h <= 0 both occur)
    h = torch.randn(M, N).to(dtype)
    assert (h > 0).any() and (h < 0).any()
    out = torch.full((M, N), float("nan"), dtype=dtype)
    run(h, out, True)
    hd = h.double()
    torch.testing.assert_close(out.double(), (exact * torch.where(hd > 0, 2 * hd, 0.5 * hd)).to(dtype).double(), **tol)
    print("ok")
""")


@pytest.mark.skipif(sys.platform != "linux", reason="Triton wheels are Linux-only")
@pytest.mark.parametrize("dtype, M, K, N, bm, bn, bk, transposed_b", [
    ("float32", 64, 64, 128, 64, 128, 64, 1),     # one tile, exact fit
    ("float32", 100, 128, 200, 64, 64, 32, 1),    # ragged M and N: masked tile edges, several K steps
    ("float16", 130, 64, 96, 32, 64, 64, 0),      # fp16 storage, contiguous B, more M tiles than GROUP_M
])
def test_triton_kernel_under_the_interpreter_matches_the_epilogue_formulas(dtype, M, K, N, bm, bn, bk, transposed_b):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    args = [str(v) for v in (dtype, M, K, N, bm, bn, bk, transposed_b)]
    done = subprocess.run([sys.executable, "-c", INTERPRETED_KERNEL, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
