"""LeakyReLU(0.5)² MLP with the activation fused into Triton GEMM epilogues (CUDA; train.fused_mlp).

The plain MLP (pgolf.layers.MLP) moves the 4·dim-wide hidden activation through device memory five
times per call besides the matmuls: fc writes h, the activation reads h and writes a = f(h)², and in
backward proj's dgrad writes grad_a, the activation backward reads grad_a and h and writes grad_h.
Here

  forward:  h, a = epilogue(x @ fc^T)                      (one Triton GEMM writes both; h is saved)
            y = a @ proj^T                                 (cuBLAS)
  backward: grad_h = (grad_y @ proj) · 2 f(h) f'(h)         (one Triton GEMM, h read in the epilogue)
            grad_x = grad_h @ fc, grad_fc = grad_hᵀ x, grad_proj = grad_yᵀ a   (cuBLAS)

f(h) = h (h > 0) else h/2, so a = f(h)² and 2 f(h) f'(h) = 2h (h > 0) else h/2. That removes one read
of h in forward and the write + read of grad_a in backward (3 of the 8 hidden-sized passes).

The whole MLP (without its input norm) is one torch.library custom op with a fake implementation
and a registered backward (another custom op), so torch.compile keeps it as an opaque node in both
graphs. Without Triton or off CUDA the ops run a PyTorch emulation of the two kernels (CPU tests
check the op's plumbing with it); pgolf.layers.MLP only takes this path on CUDA, while training
(grad enabled, train mode: GPTQ's forward hooks on fc/proj still see the plain path).
"""
import torch
from torch import Tensor

MODES = ("off", "auto", "on")
_STATE = {"mode": "off"}

try:  # Triton ships with CUDA builds of torch and is in the test extras; elsewhere it may be missing
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    triton = tl = None
    HAVE_TRITON = False


def set_fused_mlp(mode: str) -> None:
    """off: always the plain MLP; auto: the fused kernels on CUDA when Triton imports; on: the same,
    but an error if a CUDA forward finds no Triton. CPU always runs the plain MLP."""
    if mode not in MODES:
        raise ValueError(f"train.fused_mlp={mode!r}: expected one of {MODES}")
    _STATE["mode"] = mode


def use_fused(x: Tensor, leaky: bool, training: bool, model_dim: int) -> bool:
    mode = _STATE["mode"]
    if mode == "off" or not leaky or not x.is_cuda or not training or not torch.is_grad_enabled():
        return False
    if not HAVE_TRITON:
        if mode == "on":
            raise RuntimeError("train.fused_mlp=on but Triton is not importable")
        return False
    return model_dim % 64 == 0


# -----------------------------------------------------------------------------------------------
# The kernel: C = A @ B (A: M×K, B: K×N, fp32 accumulation) with a LeakyReLU(0.5)² epilogue.
#   forward  (BACKWARD=0): H = bf16(C), O = f(H)²
#   backward (BACKWARD=1): O = C · (2H if H > 0 else H/2), H read

if HAVE_TRITON:
    _CONFIGS = [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=3, num_warps=8),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=8),
        triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=3, num_warps=8),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=4),
    ]

    @triton.autotune(configs=_CONFIGS, key=["M", "N", "K", "BACKWARD"])
    @triton.jit
    def _mm_leaky2(a_ptr, b_ptr, h_ptr, o_ptr, M, N, K,
                   s_am, s_ak, s_bk, s_bn, s_hm, s_hn, s_om, s_on,
                   BACKWARD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        num_pid_in_group = GROUP_M * num_pid_n
        group_id = pid // num_pid_in_group
        first_pid_m = group_id * GROUP_M
        group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
        pid_n = (pid % num_pid_in_group) // group_size_m
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_am = tl.where(offs_m < M, offs_m, 0)
        offs_bn = tl.where(offs_n < N, offs_n, 0)
        offs_k = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + offs_am[:, None] * s_am + offs_k[None, :] * s_ak
        b_ptrs = b_ptr + offs_k[:, None] * s_bk + offs_bn[None, :] * s_bn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for _ in range(0, K, BLOCK_K):  # the launcher guarantees K % BLOCK_K == 0
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
            acc = tl.dot(a, b, acc=acc)
            a_ptrs += BLOCK_K * s_ak
            b_ptrs += BLOCK_K * s_bk
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        h_ptrs = h_ptr + offs_m[:, None] * s_hm + offs_n[None, :] * s_hn
        o_ptrs = o_ptr + offs_m[:, None] * s_om + offs_n[None, :] * s_on
        if BACKWARD:
            h = tl.load(h_ptrs, mask=mask, other=0.0).to(tl.float32)
            g = acc * tl.where(h > 0, 2.0 * h, 0.5 * h)
            tl.store(o_ptrs, g.to(o_ptr.dtype.element_ty), mask=mask)
        else:
            hq = acc.to(h_ptr.dtype.element_ty)
            tl.store(h_ptrs, hq, mask=mask)
            hf = hq.to(tl.float32)
            f = tl.where(hf > 0, hf, 0.5 * hf)
            tl.store(o_ptrs, (f * f).to(o_ptr.dtype.element_ty), mask=mask)


def _launch_torch(a: Tensor, b: Tensor, h: Tensor, out: Tensor, backward: bool) -> None:
    """PyTorch emulation of _mm_leaky2 (CPU, or no Triton)."""
    acc = torch.promote_types(a.dtype, torch.float32)
    c = a.to(acc) @ b.to(acc)
    if backward:
        hf = h.to(acc)
        out.copy_(c * torch.where(hf > 0, 2.0 * hf, 0.5 * hf))
    else:
        h.copy_(c)
        hf = h.to(acc)
        out.copy_(torch.where(hf > 0, hf, 0.5 * hf).square())


def launch(a: Tensor, b: Tensor, h: Tensor, out: Tensor, backward: bool) -> None:
    """out (and h in forward) <- the fused GEMM + epilogue; a: M×K, b: K×N, h/out: M×N (any strides)."""
    M, K = a.shape
    N = b.shape[1]
    if not (HAVE_TRITON and a.is_cuda and K % 64 == 0):
        _launch_torch(a, b, h, out, backward)
        return
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    with torch.cuda.device(a.device):
        _mm_leaky2[grid](a, b, h, out, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                         h.stride(0), h.stride(1), out.stride(0), out.stride(1), BACKWARD=backward)


# -----------------------------------------------------------------------------------------------
# Custom ops: opaque to torch.compile, with fake (shape) implementations and a registered backward.


@torch.library.custom_op("pgolf::fused_mlp_fwd", mutates_args=())
def fused_mlp_fwd(x: Tensor, wf: Tensor, wp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x: M×D, wf (fc.weight): N×D, wp (proj.weight): D×N, one dtype -> (y: M×D, h: M×N, a: M×N)."""
    h = x.new_empty(x.shape[0], wf.shape[0])
    a = torch.empty_like(h)
    launch(x, wf.t(), h, a, backward=False)
    return a @ wp.t(), h, a


@fused_mlp_fwd.register_fake
def _(x, wf, wp):
    h = x.new_empty(x.shape[0], wf.shape[0])
    return x.new_empty(x.shape[0], wp.shape[0]), h, torch.empty_like(h)


@torch.library.custom_op("pgolf::fused_mlp_bwd", mutates_args=())
def fused_mlp_bwd(gy: Tensor, x: Tensor, wf: Tensor, wp: Tensor, h: Tensor, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """-> (grad_x, grad_wf, grad_wp)."""
    gh = torch.empty_like(h)
    launch(gy, wp, h, gh, backward=True)
    return gh @ wf, gh.t() @ x, gy.t() @ a


@fused_mlp_bwd.register_fake
def _(gy, x, wf, wp, h, a):
    return torch.empty_like(x), torch.empty_like(wf), torch.empty_like(wp)


def _setup_context(ctx, inputs, output):
    x, wf, wp = inputs
    _, h, a = output
    ctx.save_for_backward(x, wf, wp, h, a)


def _backward(ctx, gy, _gh, _ga):
    # h and a leave the op only to be saved; nothing downstream uses them, so their gradients are zero.
    x, wf, wp, h, a = ctx.saved_tensors
    return fused_mlp_bwd(gy.contiguous(), x, wf, wp, h, a)


fused_mlp_fwd.register_autograd(_backward, setup_context=_setup_context)


def fused_mlp(x: Tensor, fc_weight: Tensor, proj_weight: Tensor) -> Tensor:
    """proj(leaky_relu(fc(x), 0.5)²) through the fused op; under CUDA autocast in its dtype (bf16)."""
    dt = torch.get_autocast_dtype("cuda") if x.is_cuda and torch.is_autocast_enabled("cuda") else x.dtype
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).to(dt)
    y, _, _ = fused_mlp_fwd(x2, fc_weight.to(dt), proj_weight.to(dt))
    return y.view(*lead, y.shape[-1])
