"""A small GPT in the nanoGPT style: one screen per concept.

Token embedding -> N residual blocks (RMSNorm -> grouped-query rotary attention, RMSNorm -> relu² MLP)
-> final RMSNorm -> tied output head (logits = h @ tok_emb.weight^T) -> logit softcap.

Parameter names are an interface: GPTQ Hessians, quantization and the artifact key off them
(blocks.{i}.attn.{q,k,v,proj}.weight, blocks.{i}.mlp.{fc,proj}.weight, blocks.{i}.{attn,mlp}_norm.weight,
final_norm.weight, tok_emb.weight). Every Linear is bias-free.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Tied embeddings also act as the output head, so they start small: large initial logits would
# saturate the softcap and slow the first steps.
EMBED_INIT_STD = 0.02


# -----------------------------------------------------------------------------------------------
# Configuration


@dataclass
class ModelConfig:
    vocab_size: int
    num_layers: int
    model_dim: int
    num_heads: int
    num_kv_heads: int
    mlp_mult: float
    rope_base: float
    logit_softcap: float
    seq_len: int

    def __post_init__(self):
        if self.model_dim % self.num_heads:
            raise ValueError(f"model_dim={self.model_dim} is not divisible by num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.logit_softcap <= 0:
            raise ValueError(f"logit_softcap={self.logit_softcap} must be > 0")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_mult * self.model_dim)

    @classmethod
    def from_train_cfg(cls, train_cfg: dict, vocab_size: int) -> "ModelConfig":
        """Pick the model keys out of the `train:` config section."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "vocab_size"]
        missing = [n for n in names if n not in train_cfg]
        if missing:
            raise KeyError(f"train config is missing model keys: {', '.join(missing)}")
        return cls(vocab_size=int(vocab_size), **{n: train_cfg[n] for n in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise KeyError(f"unknown model_config keys: {', '.join(unknown)}")
        return cls(**d)


# -----------------------------------------------------------------------------------------------
# Normalization and rotary position embedding


class RMSNorm(nn.Module):
    """RMS normalization with a learned per-channel gain (trained by Adam at scalar_lr)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight.to(x.dtype), self.eps)


class Rotary(nn.Module):
    """Rotary position embedding over the full head dimension (rotate-half convention)."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        # Non-persistent: derived from the config, so it stays out of the state dict and the artifact.
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, heads, seq, head_dim] -> same shape, rotated by position."""
        positions = torch.arange(x.size(-2), device=x.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq)
        cos, sin = freqs.cos().to(x.dtype), freqs.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# -----------------------------------------------------------------------------------------------
# Attention and MLP


class CausalSelfAttention(nn.Module):
    """Grouped-query causal attention: num_kv_heads K/V heads shared by num_heads query heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        self.q = nn.Linear(cfg.model_dim, cfg.model_dim, bias=False)
        self.k = nn.Linear(cfg.model_dim, kv_dim, bias=False)
        self.v = nn.Linear(cfg.model_dim, kv_dim, bias=False)
        self.proj = nn.Linear(cfg.model_dim, cfg.model_dim, bias=False)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        q = self.q(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        # QK RMS-norm keeps attention logits bounded whatever the weight scale Muon produces.
        q = self.rotary(F.rms_norm(q, (self.head_dim,)))
        k = self.rotary(F.rms_norm(k, (self.head_dim,)))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads
        )
        return self.proj(y.transpose(1, 2).reshape(batch, seq, dim))


class MLP(nn.Module):
    """relu² feed-forward: fc (dim -> mlp_mult·dim), square of ReLU, proj back."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.model_dim, cfg.mlp_hidden, bias=False)
        self.proj = nn.Linear(cfg.mlp_hidden, cfg.model_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    """Pre-norm residual block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.model_dim)
        self.attn = CausalSelfAttention(cfg)
        self.mlp_norm = RMSNorm(cfg.model_dim)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


# -----------------------------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = RMSNorm(cfg.model_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.tok_emb.weight, std=EMBED_INIT_STD)
        for block in self.blocks:
            # Zero-init output projections: every block starts as the identity on the residual stream.
            nn.init.zeros_(block.attn.proj.weight)
            nn.init.zeros_(block.mlp.proj.weight)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[batch, seq] token ids -> [batch, seq, dim] final-normed hidden states (the head's input)."""
        x = self.tok_emb(input_ids)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Tied output head plus softcap, in float32: logits = cap · tanh(h Eᵀ / cap)."""
        logits = F.linear(hidden, self.tok_emb.weight).float()
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden_states(input_ids))

    def loss(self, input_ids: torch.Tensor, target_ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy in nats (float32). reduction="none" gives per-token losses shaped like target_ids."""
        logits = self(input_ids)
        losses = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target_ids.reshape(-1), reduction=reduction
        )
        return losses.view_as(target_ids) if reduction == "none" else losses


def build_model(model_config: dict) -> GPT:
    return GPT(ModelConfig.from_dict(model_config))
