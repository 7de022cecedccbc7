"""Stand-in for FlashAttention 3's ``flash_attn_interface`` (pgolf benchmark shim).

The Parameter Golf record scripts do ``from flash_attn_interface import
flash_attn_func`` and call it as ``flash_attn_func(q, k, v, causal=True)`` with
q of shape [B, T, H, D] and k, v of shape [B, T, Hkv, D] (GQA, H % Hkv == 0),
bf16, and use the single tensor it returns ([B, T, H, D]).  FA3 is not on PyPI,
so for side-by-side timing this module maps that call onto
``torch.nn.functional.scaled_dot_product_attention`` ([B, H, T, D] layout),
by default on the cuDNN backend (the fastest SDPA backend on Hopper).

The 1.0611 record also calls ``flash_attn_varlen_func`` on packed documents:
q [total, H, D], k, v [total, Hkv, D], ``cu_seqlens`` (int32 segment starts plus
the end, padded by repeating the end), causal.  Here every segment is attended
alone with the same SDPA call, inside a custom op (see ``_varlen_forward``).

Environment knobs (read once, at import):
  REF_SDPA_BACKEND  cudnn (default) | flash | efficient | math | any
                    'any' leaves the backend choice to PyTorch's global flags.
  REF_SDPA_CTX      1 (default): wrap the call in torch.nn.attention.sdpa_kernel
                    (dynamo traces it inside torch.compile); 0: rely on global
                    flags only (bench/run_reference.py sets them).
  REF_SDPA_GQA      auto (default) | native | expand
                    native: pass Hkv heads with enable_gqa=True;
                    expand: repeat_interleave k, v to H heads first (what FA3
                    computes: query head h reads kv head h // (H // Hkv)).
                    auto: probe 'native' once on the GPU at import (forward,
                    backward, compare with 'expand'); fall back to 'expand'.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

try:  # torch >= 2.3
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # pragma: no cover - very old torch
    SDPBackend = None
    sdpa_kernel = None

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "SHIM_INFO"]

_BACKEND_NAME = os.environ.get("REF_SDPA_BACKEND", "cudnn").lower()
_USE_CTX = os.environ.get("REF_SDPA_CTX", "1") == "1"
_GQA_MODE = os.environ.get("REF_SDPA_GQA", "auto").lower()

_BACKENDS = {
    "cudnn": "CUDNN_ATTENTION",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "math": "MATH",
}


def _backend_list():
    """Backends to pin, or None to leave PyTorch's global choice alone."""
    if _BACKEND_NAME == "any" or SDPBackend is None:
        return None
    if _BACKEND_NAME not in _BACKENDS:
        raise ValueError(f"REF_SDPA_BACKEND={_BACKEND_NAME!r}: expected one of {sorted(_BACKENDS)} or 'any'")
    if not torch.cuda.is_available():
        return [SDPBackend.MATH]  # CPU: only the math kernel exists
    return [getattr(SDPBackend, _BACKENDS[_BACKEND_NAME])]


_PINNED = _backend_list()


def _sdpa(q, k, v, causal, scale, gqa_native, backends=None):
    """q, k, v already in [B, H, T, D] (k, v with Hkv heads when gqa_native); backends: default the pinned one."""
    kwargs = {"is_causal": causal, "scale": scale}
    if gqa_native and k.size(1) != q.size(1):
        kwargs["enable_gqa"] = True
    backends = backends or _PINNED
    if _USE_CTX and backends is not None and sdpa_kernel is not None:
        with sdpa_kernel(backends):
            return F.scaled_dot_product_attention(q, k, v, **kwargs)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def _attend(q, k, v, causal, scale, gqa_native, backends=None):
    """[B, T, H, D] in and out, as FA3 does."""
    h, hkv = q.size(2), k.size(2)
    if h % hkv != 0:
        raise ValueError(f"query heads ({h}) must be a multiple of kv heads ({hkv})")
    if hkv != h and not gqa_native:
        group = h // hkv
        k = k.repeat_interleave(group, dim=2)
        v = v.repeat_interleave(group, dim=2)
    out = _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal, scale, gqa_native, backends)
    return out.transpose(1, 2)


def _probe_native_gqa() -> bool:
    """One small forward+backward with native GQA on the pinned backend, checked against 'expand'."""
    if not torch.cuda.is_available():
        return False
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    try:
        g = torch.Generator(device=dev).manual_seed(0)
        shape_q, shape_kv = (2, 256, 8, 64), (2, 256, 4, 64)
        q = torch.randn(shape_q, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
        k = torch.randn(shape_kv, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
        v = torch.randn(shape_kv, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
        import contextlib
        ctx = sdpa_kernel(_PINNED) if (_PINNED is not None and sdpa_kernel is not None) else contextlib.nullcontext()
        with ctx:  # probe on the pinned backend even when REF_SDPA_CTX=0
            out_n = _attend(q, k, v, True, None, True)
            grads_n = torch.autograd.grad(out_n.float().square().sum(), (q, k, v))
            out_e = _attend(q, k, v, True, None, False)
            grads_e = torch.autograd.grad(out_e.float().square().sum(), (q, k, v))
        ok = torch.allclose(out_n.float(), out_e.float(), atol=2e-2, rtol=2e-2)
        for a, b in zip(grads_n, grads_e):
            ok = ok and torch.allclose(a.float(), b.float(), atol=5e-2, rtol=5e-2)
        return bool(ok)
    except Exception as exc:  # backend refuses GQA shapes -> expand
        print(f"[flash_attn_interface shim] native GQA probe failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False


if _GQA_MODE == "native":
    _GQA_NATIVE = True
elif _GQA_MODE == "expand":
    _GQA_NATIVE = False
elif _GQA_MODE == "auto":
    _GQA_NATIVE = _probe_native_gqa()
else:
    raise ValueError(f"REF_SDPA_GQA={_GQA_MODE!r}: expected auto, native or expand")

SHIM_INFO = {
    "backend": _BACKEND_NAME if _PINNED is not None else "global-flags",
    "pinned": [str(b) for b in (_PINNED or [])],
    "sdpa_kernel_ctx": _USE_CTX,
    "gqa": "native" if _GQA_NATIVE else "expand",
    "torch": torch.__version__,
}
print(f"[flash_attn_interface shim] {SHIM_INFO}", file=sys.stderr)


def _refuse_unsupported(qv, q_descale, k_descale, v_descale, window_size, attention_chunk, softcap,
                        return_attn_probs) -> None:
    """FA3 options the records do not use: refused rather than silently computed differently."""
    if qv is not None or q_descale is not None or k_descale is not None or v_descale is not None:
        raise NotImplementedError("shim: qv / fp8 descale are not supported")
    if tuple(window_size) != (-1, -1) or attention_chunk or softcap:
        raise NotImplementedError("shim: local windows, attention chunks and softcap are not supported")
    if return_attn_probs:
        raise NotImplementedError("shim: return_attn_probs (softmax LSE) is not supported")


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None,
                    q_descale=None, k_descale=None, v_descale=None,
                    window_size=(-1, -1), attention_chunk=0, softcap=0.0,
                    num_splits=1, pack_gqa=None, deterministic=False,
                    sm_margin=0, return_attn_probs=False):
    """FA3's signature; the subset the records use (q, k, v, causal, softmax_scale) is implemented."""
    _refuse_unsupported(qv, q_descale, k_descale, v_descale, window_size, attention_chunk, softcap, return_attn_probs)
    if causal and q.size(1) != k.size(1):
        # FA aligns the causal band bottom-right, SDPA's is_causal top-left.
        raise NotImplementedError("shim: causal attention with seqlen_q != seqlen_k")
    return _attend(q, k, v, causal, softmax_scale, _GQA_NATIVE)


# --- variable-length (packed documents) attention ---------------------------------------------
# A custom op, so torch.compile(fullgraph=True) sees one opaque call: the segment loop reads
# cu_seqlens on the host, which a traced graph cannot. Backward recomputes each segment.

# Segments come in every length (a document's 7-token tail, a 1-token piece): the pinned backend
# and, in case it refuses a shape, the others (PyTorch picks among them in its own priority order;
# each computes exact attention).
_VARLEN_BACKENDS = None if _PINNED is None else list(dict.fromkeys(
    _PINNED + ([] if not torch.cuda.is_available() else
               [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])))


def _segments(cu_q, cu_k, max_q, max_k, total_q, total_k):
    """[(q_start, q_end, k_start, k_end)] of the non-empty query segments, checked as FA3 assumes them."""
    bq, bk = cu_q.tolist(), cu_k.tolist()
    if len(bq) != len(bk) or len(bq) < 2:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k need the same length >= 2, got {len(bq)} and {len(bk)}")
    for name, b, total in (("cu_seqlens_q", bq, total_q), ("cu_seqlens_k", bk, total_k)):
        if b[0] != 0 or any(y < x for x, y in zip(b, b[1:])) or b[-1] > total:
            raise ValueError(f"{name} must rise from 0 to at most {total} tokens, got {b[:4]}...{b[-2:]}")
    segs = []
    for qa, qb, ka, kb in zip(bq, bq[1:], bk, bk[1:]):
        if qb - qa > max_q or kb - ka > max_k:
            raise ValueError(f"segment of {qb - qa} queries / {kb - ka} keys exceeds max_seqlen {max_q} / {max_k}")
        if qb > qa:
            segs.append((qa, qb, ka, kb))
    return segs


def _segment_attend(q, k, v, seg, causal, scale):
    """One segment, [len, H, D] in and out; a query segment with no keys gives zeros, as in FA3."""
    qa, qb, ka, kb = seg
    if kb == ka:
        return q.new_zeros(qb - qa, q.size(1), v.size(2))
    if causal and qb - qa != kb - ka:
        raise NotImplementedError("shim: causal varlen attention with seqlen_q != seqlen_k in a segment")
    return _attend(q[None, qa:qb], k[None, ka:kb], v[None, ka:kb], causal, scale, _GQA_NATIVE, _VARLEN_BACKENDS)[0]


@torch.library.custom_op("pgolf_fa3_shim::varlen_fwd", mutates_args=())
def _varlen_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                    cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool,
                    softmax_scale: float | None) -> torch.Tensor:
    out = q.new_zeros(q.size(0), q.size(1), v.size(2))  # tokens past cu_seqlens[-1] stay 0
    for seg in _segments(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, q.size(0), k.size(0)):
        out[seg[0]:seg[1]] = _segment_attend(q, k, v, seg, causal, softmax_scale)
    return out


@_varlen_forward.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale):
    return q.new_empty(q.size(0), q.size(1), v.size(2))


def _segment_grads(q, k, v, grad_out, causal, scale):
    """dq, dk, dv of one segment's attention ([len, heads, D]), recomputed in (at least) float32.

    Written out (softmax backward) because a custom op's body runs below autograd.
    """
    ft = torch.promote_types(q.dtype, torch.float32)
    group = q.size(1) // k.size(1)
    qf, do = q.to(ft).transpose(0, 1), grad_out.to(ft).transpose(0, 1)  # [H, L, D]
    kf = k.to(ft).repeat_interleave(group, dim=1).transpose(0, 1)
    vf = v.to(ft).repeat_interleave(group, dim=1).transpose(0, 1)
    scale = scale if scale is not None else q.size(-1) ** -0.5
    scores = (qf @ kf.transpose(1, 2)) * scale
    if causal:
        scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1),
                                    float("-inf"))
    p = scores.softmax(-1)
    dp = do @ vf.transpose(1, 2)
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    dq = (ds @ kf) * scale
    dk = (ds.transpose(1, 2) @ qf) * scale
    dv = p.transpose(1, 2) @ do

    def per_kv_head(t):  # [H, L, D] -> [L, Hkv, D], summing each kv head's query group
        return t.transpose(0, 1).unflatten(1, (k.size(1), group)).sum(2)

    return dq.transpose(0, 1).to(q.dtype), per_kv_head(dk).to(k.dtype), per_kv_head(dv).to(v.dtype)


@torch.library.custom_op("pgolf_fa3_shim::varlen_bwd", mutates_args=())
def _varlen_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int,
                     max_seqlen_k: int, causal: bool, softmax_scale: float | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for qa, qb, ka, kb in _segments(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, q.size(0), k.size(0)):
        if kb > ka:  # the forward refused causal segments of unequal lengths
            dq[qa:qb], dk[ka:kb], dv[ka:kb] = _segment_grads(q[qa:qb], k[ka:kb], v[ka:kb], grad_out[qa:qb],
                                                             causal, softmax_scale)
    return dq, dk, dv


@_varlen_backward.register_fake
def _(grad_out, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _varlen_setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, causal, scale = inputs
    ctx.save_for_backward(q, k, v, cu_q, cu_k)
    ctx.args = (max_q, max_k, causal, scale)


def _varlen_grad(ctx, grad_out):
    q, k, v, cu_q, cu_k = ctx.saved_tensors
    dq, dk, dv = _varlen_backward(grad_out.contiguous(), q, k, v, cu_q, cu_k, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None


_varlen_forward.register_autograd(_varlen_grad, setup_context=_varlen_setup_context)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           seqused_q=None, seqused_k=None, softmax_scale=None, causal=False,
                           qv=None, q_descale=None, k_descale=None, v_descale=None,
                           window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1,
                           pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False):
    """FA3's varlen signature; implemented: q, k, v, cu_seqlens_q/k, max_seqlen_q/k, causal, softmax_scale.

    Segment i holds tokens cu_seqlens[i]:cu_seqlens[i+1] and attends only within itself (causally
    when causal=True); max_seqlen_* must bound every segment, as FA3 requires.
    """
    if seqused_q is not None or seqused_k is not None:
        raise NotImplementedError("shim: seqused_q / seqused_k are not supported")
    _refuse_unsupported(qv, q_descale, k_descale, v_descale, window_size, attention_chunk, softcap, return_attn_probs)
    if q.size(1) % k.size(1) != 0:
        raise ValueError(f"query heads ({q.size(1)}) must be a multiple of kv heads ({k.size(1)})")
    return _varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                           bool(causal), None if softmax_scale is None else float(softmax_scale))
