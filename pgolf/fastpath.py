"""GPU-path helpers for the train stage: TF32, the attention backend (cuDNN SDPA first), bf16 autocast
and torch.compile. Nothing here changes the CPU path, which the tests exercise."""
from __future__ import annotations

import sys
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from pgolf.layers import set_attention_backend

BACKEND_NAMES = ("auto", "fa4", "cudnn", "flash", "efficient", "math")


def _backend(name: str):
    from torch.nn.attention import SDPBackend
    return {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]


def _attention_works(device: torch.device, attend, name: str) -> bool:
    """One small causal GQA forward + backward in bf16 through attend(q, k, v) ([batch, heads, seq, dim],
    k/v with half the heads) matches fp32 SDPA; False if it does not or raises."""
    try:
        g = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(2, 8, 256, 64, device=device, dtype=torch.bfloat16, generator=g, requires_grad=True)
        k = torch.randn(2, 4, 256, 64, device=device, dtype=torch.bfloat16, generator=g, requires_grad=True)
        v = torch.randn(2, 4, 256, 64, device=device, dtype=torch.bfloat16, generator=g, requires_grad=True)
        out = attend(q, k, v)
        out.float().square().sum().backward()
        ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(2, 1),
                                             v.float().repeat_interleave(2, 1), is_causal=True)
        torch.cuda.synchronize(device)
        return bool(torch.allclose(out.float(), ref, atol=3e-2, rtol=3e-2))
    except Exception as exc:  # the backend refuses this shape or dtype, or has no kernel for this GPU
        print(f"[pgolf.fastpath] {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False


def _sdpa_works(device: torch.device, backend, gqa_native: bool) -> bool:
    from torch.nn.attention import sdpa_kernel

    def attend(q, k, v):
        kk, vv = (k, v) if gqa_native else (k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa_native)
    return _attention_works(device, attend, f"{backend} gqa_native={gqa_native}")


def _fa4_works(device: torch.device) -> bool:
    """FlashAttention 4 imports, and passes the same check as the SDPA backends."""
    from pgolf import flash4
    if not flash4.available():
        print(f"[pgolf.fastpath] fa4: package {flash4.FA4_PACKAGE} not importable; using cuDNN", file=sys.stderr)
        return False

    def attend(q, k, v):
        return flash4.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    return _attention_works(device, attend, "fa4")


def configure_cuda(device: torch.device, attention_backend: str = "auto") -> str:
    """TF32 matmuls, and the fastest attention backend that works here; returns a description.
    fa4 falls back to auto (cuDNN, else flash) where FlashAttention 4 is missing or fails its check."""
    if attention_backend not in BACKEND_NAMES:
        raise ValueError(f"train.attention_backend={attention_backend!r}: expected one of {BACKEND_NAMES}")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if attention_backend == "fa4":
        if _fa4_works(device):
            set_attention_backend(None, True, fa4=True)
            return "fa4 (FlashAttention 4, native GQA)"
        attention_backend = "auto"
    names = ["cudnn", "flash"] if attention_backend == "auto" else [attention_backend]
    for name in names:
        for native in (True, False):
            if _sdpa_works(device, _backend(name), native):
                set_attention_backend([_backend(name)], native)
                return f"{name} ({'native' if native else 'repeated'} GQA)"
    set_attention_backend(None, True)
    return "pytorch default"


def autocast_ctx(device: torch.device):
    """bf16 autocast on CUDA (matmuls and attention in bf16, loss in fp32); nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def maybe_compile(module, enabled: bool):
    """torch.compile with static shapes (every batch has the same shape); the module itself if disabled."""
    if not enabled:
        return module
    return torch.compile(module, dynamic=False)


class StepProfiler:
    """torch.profiler over the training steps named by PGOLF_PROFILE_STEPS="first:last" (1-based,
    inclusive; benchmarks only): prints the top kernels by device time on rank 0 after `last`."""

    def __init__(self, spec: str | None, enabled: bool):
        self.first = self.last = None
        self.prof = None
        if spec and enabled:
            first, _, last = spec.partition(":")
            self.first, self.last = int(first), int(last or first)

    def before(self, step: int) -> None:
        if self.first is not None and step == self.first:
            from torch.profiler import ProfilerActivity, profile
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.prof = profile(activities=acts)
            self.prof.__enter__()

    def after(self, step: int) -> None:
        if self.prof is not None and step == self.last:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.prof.__exit__(None, None, None)
            table = self.prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=50, max_name_column_width=110)
            print(f"# profile of steps {self.first}..{self.last}\n{table}", flush=True)
            self.prof = None
