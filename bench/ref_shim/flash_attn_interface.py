"""Stand-in for FlashAttention 3's ``flash_attn_interface`` (pgolf benchmark shim).

The Parameter Golf record scripts do ``from flash_attn_interface import
flash_attn_func`` and call it as ``flash_attn_func(q, k, v, causal=True)`` with
q of shape [B, T, H, D] and k, v of shape [B, T, Hkv, D] (GQA, H % Hkv == 0),
bf16, and use the single tensor it returns ([B, T, H, D]).  FA3 is not on PyPI,
so for side-by-side timing this module maps that call onto
``torch.nn.functional.scaled_dot_product_attention`` ([B, H, T, D] layout),
by default on the cuDNN backend (the fastest SDPA backend on Hopper).

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

__all__ = ["flash_attn_func", "SHIM_INFO"]

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


def _sdpa(q, k, v, causal, scale, gqa_native):
    """q, k, v already in [B, H, T, D] (k, v with Hkv heads when gqa_native)."""
    kwargs = {"is_causal": causal, "scale": scale}
    if gqa_native and k.size(1) != q.size(1):
        kwargs["enable_gqa"] = True
    if _USE_CTX and _PINNED is not None and sdpa_kernel is not None:
        with sdpa_kernel(_PINNED):
            return F.scaled_dot_product_attention(q, k, v, **kwargs)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def _attend(q, k, v, causal, scale, gqa_native):
    """[B, T, H, D] in and out, as FA3 does."""
    h, hkv = q.size(2), k.size(2)
    if h % hkv != 0:
        raise ValueError(f"query heads ({h}) must be a multiple of kv heads ({hkv})")
    if hkv != h and not gqa_native:
        group = h // hkv
        k = k.repeat_interleave(group, dim=2)
        v = v.repeat_interleave(group, dim=2)
    out = _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal, scale, gqa_native)
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


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None,
                    q_descale=None, k_descale=None, v_descale=None,
                    window_size=(-1, -1), attention_chunk=0, softcap=0.0,
                    num_splits=1, pack_gqa=None, deterministic=False,
                    sm_margin=0, return_attn_probs=False):
    """FA3's signature; the subset the records use (q, k, v, causal, softmax_scale) is implemented."""
    if qv is not None or q_descale is not None or k_descale is not None or v_descale is not None:
        raise NotImplementedError("shim: qv / fp8 descale are not supported")
    if tuple(window_size) != (-1, -1) or attention_chunk or softcap:
        raise NotImplementedError("shim: local windows, attention chunks and softcap are not supported")
    if return_attn_probs:
        raise NotImplementedError("shim: return_attn_probs (softmax LSE) is not supported")
    if causal and q.size(1) != k.size(1):
        # FA aligns the causal band bottom-right, SDPA's is_causal top-left.
        raise NotImplementedError("shim: causal attention with seqlen_q != seqlen_k")
    return _attend(q, k, v, causal, softmax_scale, _GQA_NATIVE)
