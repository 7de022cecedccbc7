"""The pieces of a block: RMSNorm, (partial) rotary embedding, GQA attention with QK gain and XSA, MLP.

Each technique of the record stack that lives inside a block is a field of ModelConfig (pgolf.model),
read here: rope_dims, qk_gain_init, xsa, mlp_activation, norm_weight, resid_mix, layer_norm_scale.
Parameter names are an interface (GPTQ Hessians, quantization and the artifact key off them).
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.attention_ops import qk_norm_rope, xsa


# -----------------------------------------------------------------------------------------------
# Attention backend. On Hopper the cuDNN SDPA kernel is the fastest PyTorch itself offers; FlashAttention 4
# (pgolf.flash4, an optional package) has a faster backward; flash is the fallback. GQA_NATIVE says whether
# the backend takes fewer K/V heads directly (enable_gqa) or K/V must be repeated to the query heads;
# pgolf.fastpath probes it once on the GPU.

ATTENTION = {"backends": None, "gqa_native": True, "fa4": False}


def set_attention_backend(backends: list | None, gqa_native: bool, fa4: bool = False) -> None:
    """backends: a list of torch.nn.attention.SDPBackend in priority order, or None for PyTorch's choice;
    fa4: CUDA attention through FlashAttention 4 instead of SDPA."""
    ATTENTION["backends"], ATTENTION["gqa_native"], ATTENTION["fa4"] = backends, gqa_native, fa4


def sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention on [batch, heads, seq, head_dim]; k, v may have fewer (grouped) heads."""
    if ATTENTION["fa4"] and q.is_cuda:
        from pgolf import flash4
        return flash4.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    gqa = k.size(1) != q.size(1)
    if gqa and not ATTENTION["gqa_native"]:
        group = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        gqa = False
    backends = ATTENTION["backends"] if q.is_cuda else None
    if backends:
        from torch.nn.attention import sdpa_kernel
        ctx = sdpa_kernel(backends)
    else:
        ctx = nullcontext()
    with ctx:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)


# -----------------------------------------------------------------------------------------------
# Normalization and rotary position embedding


class RMSNorm(nn.Module):
    """RMS normalization, with a learned per-channel gain unless `learnable` is off (the record has none)."""

    def __init__(self, dim: int, learnable: bool = True, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if learnable else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype) if self.weight is not None else None
        return F.rms_norm(x, (x.size(-1),), weight, self.eps)


class Rotary(nn.Module):
    """Rotary position embedding on the first `rope_dims` dims of each head (rotate-half convention);
    the remaining dims carry no position (partial RoPE: rope_dims < head_dim)."""

    def __init__(self, rope_dims: int, base: float):
        super().__init__()
        self.rope_dims = rope_dims
        inv_freq = 1.0 / (base ** (torch.arange(0, rope_dims, 2, dtype=torch.float32) / rope_dims))
        # Non-persistent: derived from the config, so it stays out of the state dict and the artifact.
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def tables(self, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of position × frequency, [seq_len, rope_dims / 2], rounded to `dtype`."""
        positions = torch.arange(seq_len, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq)
        return freqs.cos().to(dtype), freqs.sin().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, heads, seq, head_dim] -> same shape, the first rope_dims dims rotated by position."""
        cos, sin = self.tables(x.size(-2), x.dtype)
        rot, rest = x[..., :self.rope_dims], x[..., self.rope_dims:]
        x1, x2 = rot.chunk(2, dim=-1)
        rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return torch.cat((rotated, rest), dim=-1) if rest.size(-1) else rotated


# -----------------------------------------------------------------------------------------------
# Attention and MLP


def exclusive_self_attention(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """XSA: remove from each head's output its component along the same token's own value vector.

    y: [batch, seq, heads, head_dim]; v: [batch, seq, kv_heads, head_dim]. Query head h reads kv head
    h // (heads / kv_heads), so y is viewed as [batch, seq, kv_heads, group, head_dim]."""
    b, t, h, d = y.shape
    hkv = v.size(2)
    yg = y.view(b, t, hkv, h // hkv, d)
    vn = F.normalize(v, dim=-1).unsqueeze(3)
    yg = yg - (yg * vn).sum(-1, keepdim=True) * vn
    return yg.view(b, t, h, d)


class CausalSelfAttention(nn.Module):
    """GQA causal attention with QK RMS-norm, (partial) RoPE, optional per-head q gain and XSA."""

    def __init__(self, cfg):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        self.q = nn.Linear(cfg.model_dim, cfg.model_dim, bias=False)
        self.k = nn.Linear(cfg.model_dim, kv_dim, bias=False)
        self.v = nn.Linear(cfg.model_dim, kv_dim, bias=False)
        self.proj = nn.Linear(cfg.model_dim, cfg.model_dim, bias=False)
        self.rotary = Rotary(cfg.rope_dims or cfg.head_dim, cfg.rope_base)
        self.xsa = cfg.xsa
        # How, not what: pgolf.attention_ops' fused kernels (train.fused_qk / fused_xsa), set by the train stage.
        self.fused_qk = self.fused_xsa = False
        # Per-head gain on the (normalized) queries: sets the attention temperature per head.
        self.q_gain = (nn.Parameter(torch.full((cfg.num_heads,), float(cfg.qk_gain_init)))
                       if cfg.qk_gain_init is not None else None)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.q._forward_hooks or self.k._forward_hooks or self.v._forward_hooks:
            return self.q(x), self.k(x), self.v(x)  # hooked projections (TTT's adapters) run as modules
        # One GEMM for q, k and v (x read once; one dgrad instead of three plus adds; on the H100 it times
        # the same as three). q, k, v stay separate Linears: GPTQ and the artifact key off their names.
        weight = torch.cat((self.q.weight, self.k.weight, self.v.weight))
        return F.linear(x, weight).split((self.q.out_features, self.k.out_features, self.v.out_features), -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        q, k, v = self._qkv(x)
        q = q.view(batch, seq, self.num_heads, self.head_dim)
        k = k.view(batch, seq, self.num_kv_heads, self.head_dim)
        v = v.view(batch, seq, self.num_kv_heads, self.head_dim)
        gain = self.q_gain.to(q.dtype) if self.q_gain is not None else None
        # QK RMS-norm keeps attention logits bounded whatever the weight scale Muon produces.
        if self.fused_qk:
            cos, sin = self.rotary.tables(seq, q.dtype)
            q = qk_norm_rope(q, gain, cos, sin).transpose(1, 2)
            k = qk_norm_rope(k, None, cos, sin).transpose(1, 2)
        else:
            q = self.rotary(F.rms_norm(q.transpose(1, 2), (self.head_dim,)))
            k = self.rotary(F.rms_norm(k.transpose(1, 2), (self.head_dim,)))
            if gain is not None:
                q = q * gain[None, :, None, None]
        y = sdpa_causal(q, k, v.transpose(1, 2)).transpose(1, 2)  # [batch, seq, heads, head_dim]
        if self.xsa:
            y = xsa(y, v) if self.fused_xsa else exclusive_self_attention(y, v)
        return self.proj(y.reshape(batch, seq, dim))


class MLP(nn.Module):
    """fc (dim -> mlp_mult·dim), relu² or leaky_relu(0.5)², proj back (Inductor fuses the activation)."""

    def __init__(self, cfg):
        super().__init__()
        self.fc = nn.Linear(cfg.model_dim, cfg.mlp_hidden, bias=False)
        self.proj = nn.Linear(cfg.mlp_hidden, cfg.model_dim, bias=False)
        self.leaky = cfg.mlp_activation == "leaky_relu2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        h = F.leaky_relu(h, 0.5) if self.leaky else F.relu(h)
        return self.proj(h.square())


class Block(nn.Module):
    """Pre-norm residual block. With resid_mix: x_in = m0·x + m1·x0 (x0 = embedding output) and learned
    per-channel output scales; with layer_norm_scale: normed sublayer inputs times 1/sqrt(index + 1)."""

    def __init__(self, cfg, index: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.model_dim, cfg.norm_weight)
        self.attn = CausalSelfAttention(cfg)
        self.mlp_norm = RMSNorm(cfg.model_dim, cfg.norm_weight)
        self.mlp = MLP(cfg)
        # The physical index: a looped block keeps its own scale on every pass.
        self.norm_scale = 1.0 / math.sqrt(index + 1) if cfg.layer_norm_scale else 1.0
        if cfg.resid_mix:
            self.resid_mix = nn.Parameter(torch.stack((torch.ones(cfg.model_dim), torch.zeros(cfg.model_dim))))
            self.attn_scale = nn.Parameter(torch.ones(cfg.model_dim))
            self.mlp_scale = nn.Parameter(torch.ones(cfg.model_dim))
        else:
            self.resid_mix = self.attn_scale = self.mlp_scale = None

    def forward(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        s = self.norm_scale
        if self.resid_mix is not None:
            # unbind, not mix[0] / mix[1]: each select's zero-filled backward gives Inductor a column
            # reduction to fuse into a norm's row reduction (the 6 ms kernel of
            # docs/records/2026-11-23_mix_order_reduction_kernel).
            mix_x, mix_x0 = self.resid_mix.to(x.dtype).unbind(0)
            x = mix_x * x + mix_x0 * x0
            x = x + self.attn_scale.to(x.dtype) * self.attn(self.attn_norm(x) * s)
            return x + self.mlp_scale.to(x.dtype) * self.mlp(self.mlp_norm(x) * s)
        x = x + self.attn(self.attn_norm(x) * s)
        return x + self.mlp(self.mlp_norm(x) * s)
