"""The elementwise work around attention as two fused ops with hand-written backwards (train.fused_qk,
train.fused_xsa): same values as pgolf.layers' plain code, fewer passes over memory.

- `qk_norm_rope`: per-head RMS norm, partial RoPE (rotate-half) and an optional per-head gain, applied
  to q or k straight from the q/k/v GEMM's output. Inductor splits this and its backward into several
  kernels per layer (norm statistics, rotation, and the gain's column reduction fused into row
  reductions); here one kernel reads each [heads, head_dim] row once and writes it once, both ways.
- `xsa`: exclusive self-attention, y − (y·v̂)v̂ for each query head with its KV head's unit value v̂.
  Forward and backward each read y, v (and the incoming gradient) once.

On CUDA both are Triton kernels that take each token's heads as one [tokens, heads, head_dim] tile;
elsewhere the same formulas in PyTorch (float32), which the CPU tests check against autograd of the
plain code and against the kernels run by Triton's CPU interpreter.
"""
from __future__ import annotations

import torch

NORM_EPS = torch.finfo(torch.float32).eps  # what F.rms_norm(eps=None) uses for bf16/fp16/fp32 input
NORMALIZE_EPS = 1e-12                       # F.normalize's default
# Tokens per program and warps of each kernel (bench/attention_ops_check.py sweeps them). On the H100 the
# sweep preferred 32 × 8 for q/k alone, but training steps were no faster with it
# (docs/records/2026-11-23_fused_attention_ops).
KERNEL = dict(qk_tokens=8, qk_warps=4, xsa_tokens=8, xsa_warps=4)

try:  # CUDA installs of torch bring Triton; a CPU-only install may not, and then only the torch path exists
    import triton
    import triton.language as tl
except ImportError:
    triton = None


def _tiles_fit(*tensors: torch.Tensor) -> bool:
    """The kernels tile [heads, head_dim] with tl.arange, which needs powers of two (head_dim 16..256)."""
    return all(t.size(2) & (t.size(2) - 1) == 0 and t.size(3) in (16, 32, 64, 128, 256) for t in tensors)


def _use_triton(*tensors: torch.Tensor) -> bool:
    """[batch, seq, heads, head_dim] tensors -> whether the Triton kernels take them (else the torch path)."""
    return triton is not None and all(t.is_cuda for t in tensors) and _tiles_fit(*tensors)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


# -----------------------------------------------------------------------------------------------
# q/k: RMS norm over head_dim, rotate-half RoPE on the first 2·half dims, times gain[head]


def _rope_signed(cos: torch.Tensor, sin: torch.Tensor, head_dim: int):
    """[seq, half] tables -> [seq, head_dim] (c, s) with y = n·c + partner(n)·s, partner(d) = d ± half."""
    half = cos.size(-1)
    ones, zeros = cos.new_ones(cos.size(0), head_dim - 2 * half), cos.new_zeros(cos.size(0), head_dim - 2 * half)
    return torch.cat((cos, cos, ones), -1), torch.cat((-sin, sin, zeros), -1)


def _partner(t: torch.Tensor, half: int) -> torch.Tensor:
    return torch.cat((t[..., half:2 * half], t[..., :half], t[..., 2 * half:]), -1)


def _qk_normed(x, cos, sin):
    """float32 (1/rms, normed x, signed tables shaped [1, seq, 1, head_dim]) of x [batch, seq, heads, head_dim]."""
    xf = x.float()
    r = torch.rsqrt(xf.square().mean(-1, keepdim=True) + NORM_EPS)
    c, s = _rope_signed(cos.float(), sin.float(), x.size(-1))
    return r, xf * r, c[None, :, None, :], s[None, :, None, :]


def _qk_torch(x, gain, cos, sin):
    _, n, c, s = _qk_normed(x, cos, sin)
    y = n * c + _partner(n, cos.size(-1)) * s
    if gain is not None:
        y = y * gain.float()[:, None]
    return y.to(x.dtype)


def _qk_backward_torch(dy, x, gain, cos, sin):
    half = cos.size(-1)
    r, n, c, s = _qk_normed(x, cos, sin)
    dyf = dy.float()
    dgain = None
    if gain is not None:
        dgain = (dyf * (n * c + _partner(n, half) * s)).sum((0, 1, 3))
        dyf = dyf * gain.float()[:, None]
    dn = dyf * c - _partner(dyf, half) * s  # the rotation's transpose: partner's s has the opposite sign
    dx = r * (dn - n * (dn * n).mean(-1, keepdim=True))
    return dx.to(x.dtype), dgain


if triton is not None:
    @triton.jit
    def _qk_tile(n_idx, seq_len, h, d, HALF: tl.constexpr):
        """Token -> (batch, position); each dim's rotation partner (itself past the rotated dims)."""
        b = (n_idx // seq_len).to(tl.int64)
        t = n_idx % seq_len
        partner = tl.where(d < HALF, d + HALF, tl.where(d < 2 * HALF, d - HALF, d))
        return b, t, partner

    @triton.jit
    def _qk_tables(cos_ptr, sin_ptr, t, d, HALF: tl.constexpr):
        """[tokens, head_dim] float32 (c, s) with y = n·c + partner(n)·s."""
        rot = d < 2 * HALF
        j = tl.where(d < HALF, d, d - HALF)
        at = t[:, None] * HALF + j[None, :]
        cos = tl.load(cos_ptr + at, mask=rot[None, :], other=1.0).to(tl.float32)
        sin = tl.load(sin_ptr + at, mask=rot[None, :], other=0.0).to(tl.float32)
        return cos, tl.where((d < HALF)[None, :], -sin, sin)

    @triton.jit
    def _qk_fwd_kernel(x_ptr, gain_ptr, cos_ptr, sin_ptr, y_ptr, tokens, seq_len, sxb, sxt, sxh, eps,
                       H: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr, HAS_GAIN: tl.constexpr,
                       BLOCK: tl.constexpr):
        n_idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        h, d = tl.arange(0, H), tl.arange(0, D)
        b, t, partner = _qk_tile(n_idx, seq_len, h, d, HALF)
        row = (b * sxb + t.to(tl.int64) * sxt)[:, None, None] + (h * sxh)[None, :, None]
        m = (n_idx < tokens)[:, None, None]
        x = tl.load(x_ptr + row + d[None, None, :], mask=m, other=0.0).to(tl.float32)
        xp = tl.load(x_ptr + row + partner[None, None, :], mask=m, other=0.0).to(tl.float32)
        r = tl.rsqrt(tl.sum(x * x, axis=2) / D + eps)[:, :, None]
        cos, sin = _qk_tables(cos_ptr, sin_ptr, t, d, HALF)
        y = (x * cos[:, None, :] + xp * sin[:, None, :]) * r
        if HAS_GAIN:
            y = y * tl.load(gain_ptr + h).to(tl.float32)[None, :, None]
        out = n_idx.to(tl.int64)[:, None, None] * (H * D) + (h * D)[None, :, None] + d[None, None, :]
        tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _qk_bwd_kernel(dy_ptr, x_ptr, gain_ptr, cos_ptr, sin_ptr, dx_ptr, dgain_ptr, tokens, seq_len,
                       sdb, sdt, sdh, sxb, sxt, sxh, eps,
                       H: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr, HAS_GAIN: tl.constexpr,
                       BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        n_idx = pid * BLOCK + tl.arange(0, BLOCK)
        h, d = tl.arange(0, H), tl.arange(0, D)
        b, t, partner = _qk_tile(n_idx, seq_len, h, d, HALF)
        t64 = t.to(tl.int64)
        xrow = (b * sxb + t64 * sxt)[:, None, None] + (h * sxh)[None, :, None]
        drow = (b * sdb + t64 * sdt)[:, None, None] + (h * sdh)[None, :, None]
        m = (n_idx < tokens)[:, None, None]
        x = tl.load(x_ptr + xrow + d[None, None, :], mask=m, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + drow + d[None, None, :], mask=m, other=0.0).to(tl.float32)
        dyp = tl.load(dy_ptr + drow + partner[None, None, :], mask=m, other=0.0).to(tl.float32)
        r = tl.rsqrt(tl.sum(x * x, axis=2) / D + eps)[:, :, None]
        n = x * r
        cos, sin = _qk_tables(cos_ptr, sin_ptr, t, d, HALF)
        cos, sin = cos[:, None, :], sin[:, None, :]
        if HAS_GAIN:
            xp = tl.load(x_ptr + xrow + partner[None, None, :], mask=m, other=0.0).to(tl.float32)
            y_hat = n * cos + xp * r * sin
            # One partial sum per program and head; the host adds the programs' rows (deterministic).
            tl.store(dgain_ptr + pid * H + h, tl.sum(tl.sum(dy * y_hat, axis=2), axis=0))
            g = tl.load(gain_ptr + h).to(tl.float32)[None, :, None]
            dy, dyp = dy * g, dyp * g
        dn = dy * cos - dyp * sin
        dx = r * (dn - n * (tl.sum(dn * n, axis=2) / D)[:, :, None])
        out = n_idx.to(tl.int64)[:, None, None] * (H * D) + (h * D)[None, :, None] + d[None, None, :]
        tl.store(dx_ptr + out, dx.to(dx_ptr.dtype.element_ty), mask=m)


def _qk_launch(x: torch.Tensor) -> tuple[int, int, int]:
    tokens = x.size(0) * x.size(1)
    block = KERNEL["qk_tokens"]
    return tokens, block, triton.cdiv(tokens, block)


def _qk_triton(x, gain, cos, sin):
    tokens, block, grid = _qk_launch(x)
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    _qk_fwd_kernel[(grid,)](x, gain if gain is not None else x, cos, sin, y, tokens, x.size(1),
                            x.stride(0), x.stride(1), x.stride(2), NORM_EPS, H=x.size(2), D=x.size(3),
                            HALF=cos.size(-1), HAS_GAIN=gain is not None, BLOCK=block, num_warps=KERNEL["qk_warps"])
    return y


def _qk_backward_triton(dy, x, gain, cos, sin):
    tokens, block, grid = _qk_launch(x)
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    partial = torch.empty(grid, x.size(2), device=x.device, dtype=torch.float32) if gain is not None else dx
    _qk_bwd_kernel[(grid,)](dy, x, gain if gain is not None else x, cos, sin, dx, partial, tokens, x.size(1),
                            dy.stride(0), dy.stride(1), dy.stride(2), x.stride(0), x.stride(1), x.stride(2),
                            NORM_EPS, H=x.size(2), D=x.size(3), HALF=cos.size(-1), HAS_GAIN=gain is not None,
                            BLOCK=block, num_warps=KERNEL["qk_warps"])
    return dx, (partial.sum(0) if gain is not None else None)


@torch.library.custom_op("pgolf::qk_norm_rope", mutates_args=())
def _qk_op(x: torch.Tensor, gain: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x = _last_dim_contiguous(x)
    if _use_triton(x):
        return _qk_triton(x, gain, cos.contiguous(), sin.contiguous())
    return _qk_torch(x, gain, cos, sin)


@_qk_op.register_fake
def _(x, gain, cos, sin):
    return x.new_empty(x.shape)


@torch.library.custom_op("pgolf::qk_norm_rope_backward", mutates_args=())
def _qk_backward_op(dy: torch.Tensor, x: torch.Tensor, gain: torch.Tensor | None, cos: torch.Tensor,
                    sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (dx, dgain); dgain is empty without a gain (a custom op returns tensors, not None)."""
    dy, x = _last_dim_contiguous(dy), _last_dim_contiguous(x)
    if _use_triton(x):
        dx, dgain = _qk_backward_triton(dy, x, gain, cos.contiguous(), sin.contiguous())
    else:
        dx, dgain = _qk_backward_torch(dy, x, gain, cos, sin)
    return dx, (dgain.to(gain.dtype) if gain is not None else x.new_empty(0))


@_qk_backward_op.register_fake
def _(dy, x, gain, cos, sin):
    return x.new_empty(x.shape), (gain.new_empty(gain.shape) if gain is not None else x.new_empty(0))


def _qk_setup(ctx, inputs, output):
    x, gain, cos, sin = inputs
    ctx.has_gain = gain is not None
    ctx.save_for_backward(x, gain, cos, sin)


def _qk_backward(ctx, dy):
    x, gain, cos, sin = ctx.saved_tensors
    dx, dgain = _qk_backward_op(dy, x, gain, cos, sin)
    return dx, (dgain if ctx.has_gain else None), None, None


_qk_op.register_autograd(_qk_backward, setup_context=_qk_setup)


def qk_norm_rope(x: torch.Tensor, gain: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [batch, seq, heads, head_dim] (any strides) -> rms_norm over head_dim, rotate-half RoPE of the
    first 2·half dims with cos/sin [seq, half], times gain[heads] if given; contiguous, in x's dtype."""
    return _qk_op(x, gain, cos, sin)


# -----------------------------------------------------------------------------------------------
# XSA: y_h − (y_h·v̂) v̂ with v̂ = v_g / max(|v_g|, eps), g = h // (heads / kv_heads)


def _xsa_unit(vf: torch.Tensor):
    norm = vf.norm(dim=-1, keepdim=True)
    inv = 1.0 / norm.clamp_min(NORMALIZE_EPS)
    return norm, inv, vf * inv


def _grouped(t: torch.Tensor, kv_heads: int) -> torch.Tensor:
    b, s, h, d = t.shape
    return t.reshape(b, s, kv_heads, h // kv_heads, d)


def _xsa_torch(y, v):
    _, _, u = _xsa_unit(v.float())
    yg = _grouped(y.float(), v.size(2))
    u = u.unsqueeze(3)
    return (yg - (yg * u).sum(-1, keepdim=True) * u).reshape(y.shape).to(y.dtype)


def _xsa_backward_torch(dout, y, v):
    norm, inv, u = _xsa_unit(v.float())
    yg, dg = _grouped(y.float(), v.size(2)), _grouped(dout.float(), v.size(2))
    u4 = u.unsqueeze(3)
    a, c = (dg * u4).sum(-1, keepdim=True), (yg * u4).sum(-1, keepdim=True)
    dy = dg - a * u4
    grad_u = -(a * yg + c * dg).sum(3)
    # Through v / max(|v|, eps): the norm's gradient only where it was not clamped.
    dv = inv * (grad_u - torch.where(norm > NORMALIZE_EPS, u * (u * grad_u).sum(-1, keepdim=True), 0.0))
    return dy.reshape(y.shape).to(y.dtype), dv.to(v.dtype)


if triton is not None:
    @triton.jit
    def _xsa_unit_tile(v_ptr, vrow, d, m, eps):
        v = tl.load(v_ptr + vrow + d[None, None, :], mask=m, other=0.0).to(tl.float32)
        norm = tl.sqrt(tl.sum(v * v, axis=2))[:, :, None]
        inv = 1.0 / tl.maximum(norm, eps)
        return norm, inv, v * inv

    @triton.jit
    def _xsa_fwd_kernel(y_ptr, v_ptr, out_ptr, tokens, seq_len, syb, syt, syh, svb, svt, svh, eps,
                        HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
        n_idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        kv, d = tl.arange(0, HKV), tl.arange(0, D)
        b, t = (n_idx // seq_len).to(tl.int64), (n_idx % seq_len).to(tl.int64)
        m = (n_idx < tokens)[:, None, None]
        _, _, u = _xsa_unit_tile(v_ptr, (b * svb + t * svt)[:, None, None] + (kv * svh)[None, :, None], d, m, eps)
        for gi in tl.static_range(G):
            h = kv * G + gi
            yrow = (b * syb + t * syt)[:, None, None] + (h * syh)[None, :, None]
            y = tl.load(y_ptr + yrow + d[None, None, :], mask=m, other=0.0).to(tl.float32)
            out = y - tl.sum(y * u, axis=2)[:, :, None] * u
            at = n_idx.to(tl.int64)[:, None, None] * (HKV * G * D) + (h * D)[None, :, None] + d[None, None, :]
            tl.store(out_ptr + at, out.to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _xsa_bwd_kernel(dout_ptr, y_ptr, v_ptr, dy_ptr, dv_ptr, tokens, seq_len, sob, sot, soh,
                        syb, syt, syh, svb, svt, svh, eps,
                        HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
        n_idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        kv, d = tl.arange(0, HKV), tl.arange(0, D)
        b, t = (n_idx // seq_len).to(tl.int64), (n_idx % seq_len).to(tl.int64)
        m = (n_idx < tokens)[:, None, None]
        norm, inv, u = _xsa_unit_tile(v_ptr, (b * svb + t * svt)[:, None, None] + (kv * svh)[None, :, None],
                                      d, m, eps)
        grad_u = tl.zeros([BLOCK, HKV, D], dtype=tl.float32)
        for gi in tl.static_range(G):
            h = kv * G + gi
            y = tl.load(y_ptr + (b * syb + t * syt)[:, None, None] + (h * syh)[None, :, None] + d[None, None, :],
                        mask=m, other=0.0).to(tl.float32)
            do = tl.load(dout_ptr + (b * sob + t * sot)[:, None, None] + (h * soh)[None, :, None] + d[None, None, :],
                         mask=m, other=0.0).to(tl.float32)
            a = tl.sum(do * u, axis=2)[:, :, None]
            c = tl.sum(y * u, axis=2)[:, :, None]
            at = n_idx.to(tl.int64)[:, None, None] * (HKV * G * D) + (h * D)[None, :, None] + d[None, None, :]
            tl.store(dy_ptr + at, (do - a * u).to(dy_ptr.dtype.element_ty), mask=m)
            grad_u -= a * y + c * do
        radial = tl.where(norm > eps, u * tl.sum(u * grad_u, axis=2)[:, :, None], 0.0)
        at = n_idx.to(tl.int64)[:, None, None] * (HKV * D) + (kv * D)[None, :, None] + d[None, None, :]
        tl.store(dv_ptr + at, (inv * (grad_u - radial)).to(dv_ptr.dtype.element_ty), mask=m)


def _xsa_launch(y: torch.Tensor, v: torch.Tensor):
    tokens, block = y.size(0) * y.size(1), KERNEL["xsa_tokens"]
    return tokens, triton.cdiv(tokens, block), dict(HKV=v.size(2), G=y.size(2) // v.size(2), D=y.size(3),
                                                    BLOCK=block, num_warps=KERNEL["xsa_warps"])


def _xsa_triton(y, v):
    tokens, grid, meta = _xsa_launch(y, v)
    out = torch.empty(y.shape, device=y.device, dtype=y.dtype)
    _xsa_fwd_kernel[(grid,)](y, v, out, tokens, y.size(1), *y.stride()[:3], *v.stride()[:3], NORMALIZE_EPS, **meta)
    return out


def _xsa_backward_triton(dout, y, v):
    tokens, grid, meta = _xsa_launch(y, v)
    dy = torch.empty(y.shape, device=y.device, dtype=y.dtype)
    dv = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    _xsa_bwd_kernel[(grid,)](dout, y, v, dy, dv, tokens, y.size(1), *dout.stride()[:3], *y.stride()[:3],
                             *v.stride()[:3], NORMALIZE_EPS, **meta)
    return dy, dv


@torch.library.custom_op("pgolf::xsa", mutates_args=())
def _xsa_op(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    y, v = _last_dim_contiguous(y), _last_dim_contiguous(v)
    return _xsa_triton(y, v) if _use_triton(y, v) else _xsa_torch(y, v)


@_xsa_op.register_fake
def _(y, v):
    return y.new_empty(y.shape)


@torch.library.custom_op("pgolf::xsa_backward", mutates_args=())
def _xsa_backward_op(dout: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dout, y, v = _last_dim_contiguous(dout), _last_dim_contiguous(y), _last_dim_contiguous(v)
    return _xsa_backward_triton(dout, y, v) if _use_triton(y, v) else _xsa_backward_torch(dout, y, v)


@_xsa_backward_op.register_fake
def _(dout, y, v):
    return y.new_empty(y.shape), v.new_empty(v.shape)


def _xsa_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _xsa_backward(ctx, dout):
    return _xsa_backward_op(dout, *ctx.saved_tensors)


_xsa_op.register_autograd(_xsa_backward, setup_context=_xsa_setup)


def xsa(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """y [batch, seq, heads, head_dim], v [batch, seq, kv_heads, head_dim] (any strides) -> each query
    head's output minus its component along its KV head's unit value vector; contiguous, y's dtype."""
    return _xsa_op(y, v)
