"""A small GPT in the nanoGPT style, with the SP8192 record stack's techniques as config switches.

Token embedding -> residual blocks (pgolf.layers) in a schedule -> final RMSNorm -> tied output head
(logits = h @ tok_emb.weight^T) -> logit softcap.

The block schedule: blocks 0..N-1 once, or, with depth recurrence on (`loop_layers`, `loop_repeats`),
the loop segment run `loop_repeats` times in place ([0,1,2,3,4,5,4,5,4,5,6,...]). With `unet_skips` the
schedule's first half pushes its outputs on a stack and the second half pops them (LIFO) and mixes
them in before each block: x <- lerp(w ⊙ skip, x, sigmoid(gate)).

Parameter names are an interface: GPTQ Hessians, quantization and the artifact key off them
(blocks.{i}.attn.{q,k,v,proj}.weight, blocks.{i}.mlp.{fc,proj}.weight, tok_emb.weight, ...).
Every Linear is bias-free.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.consistency import model_shape_errors
from pgolf.layers import Block, RMSNorm
from pgolf.softcap_ce import head_loss_rows

MLP_ACTIVATIONS = ("relu2", "leaky_relu2")


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
    # Record-stack switches; the defaults are the plain model.
    mlp_activation: str = "relu2"           # relu2 | leaky_relu2 (slope 0.5, then squared)
    rope_dims: int | None = None            # rotary dims per head (partial RoPE); None: all of head_dim
    qk_gain_init: float | None = None       # per-head learned gain on normalized queries; None: off
    layer_norm_scale: bool = False          # normed sublayer inputs times 1/sqrt(block index + 1)
    norm_weight: bool = True                # learned RMSNorm gains (the record has none)
    resid_mix: bool = False                 # per-block x0 mix + attn/mlp output scales (record: on)
    embed_norm: bool = False                # RMS-normalize the embedding output (record: on)
    unet_skips: bool = False                # U-Net skips between schedule halves, learned sigmoid gates
    xsa: bool = False                       # exclusive self-attention on every layer
    loop_layers: list = field(default_factory=list)  # contiguous block indices to repeat, e.g. [4, 5]
    loop_repeats: int = 1                   # passes over loop_layers when looping is on (record: 3)
    embed_init_std: float = 0.02            # tied embedding init (record: 0.005)
    orthogonal_init: bool = False           # orthogonal init of q, k, v, fc (record: on); else PyTorch's

    def __post_init__(self):
        self.loop_layers = [int(i) for i in self.loop_layers]
        errors = model_shape_errors(self.model_dim, self.num_heads, self.num_kv_heads, self.num_layers,
                                    self.rope_dims, self.loop_layers)
        if self.logit_softcap <= 0:
            errors.append(f"logit_softcap={self.logit_softcap} must be > 0")
        if self.mlp_activation not in MLP_ACTIVATIONS:
            errors.append(f"mlp_activation={self.mlp_activation!r}: expected one of {MLP_ACTIVATIONS}")
        if self.loop_repeats < 1:
            errors.append(f"loop_repeats={self.loop_repeats} must be >= 1")
        if errors:
            raise ValueError("; ".join(errors))

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_mult * self.model_dim)

    @property
    def loops(self) -> bool:
        return bool(self.loop_layers) and self.loop_repeats > 1

    def schedule(self, looping: bool) -> list[int]:
        """Physical block index of each layer application, in order."""
        if not (looping and self.loops):
            return list(range(self.num_layers))
        first, last = self.loop_layers[0], self.loop_layers[-1]
        return list(range(first)) + self.loop_layers * self.loop_repeats + list(range(last + 1, self.num_layers))

    @classmethod
    def from_train_cfg(cls, train_cfg: dict, vocab_size: int) -> "ModelConfig":
        """Pick the model keys out of the `train:` config section; keys with a default may be absent."""
        fields = [f for f in dataclasses.fields(cls) if f.name != "vocab_size"]
        required = [f.name for f in fields if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in train_cfg]
        if missing:
            raise KeyError(f"train config is missing model keys: {', '.join(missing)}")
        return cls(vocab_size=int(vocab_size), **{f.name: train_cfg[f.name] for f in fields if f.name in train_cfg})

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
# The model


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.final_norm = RMSNorm(cfg.model_dim, cfg.norm_weight)
        # Depth recurrence on: the trained model's final state (training may switch it on part-way).
        self.looping = cfg.loops
        self.fused_loss = False  # how the loss is computed, not what: set by the train stage, never saved
        if cfg.unet_skips:
            # Sized for the longest (looped) schedule; the plain schedule uses the first ones.
            n = len(cfg.schedule(True))
            num_skips = min(n // 2, n - n // 2)
            self.skip_weights = nn.Parameter(torch.ones(num_skips, cfg.model_dim))
            self.skip_gates = nn.Parameter(torch.zeros(num_skips, cfg.model_dim))
        else:
            self.skip_weights = self.skip_gates = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.tok_emb.weight, std=self.config.embed_init_std)
        for block in self.blocks:
            if self.config.orthogonal_init:
                for linear in (block.attn.q, block.attn.k, block.attn.v, block.mlp.fc):
                    nn.init.orthogonal_(linear.weight)
            # Zero-init output projections: every block starts as the identity on the residual stream.
            nn.init.zeros_(block.attn.proj.weight)
            nn.init.zeros_(block.mlp.proj.weight)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[batch, seq] token ids -> [batch, seq, dim] final-normed hidden states (the head's input)."""
        x = self.tok_emb(input_ids)
        # The residual stream: bf16 under autocast (half the bytes for every elementwise op, as the record
        # does), fp32 otherwise (embed_bf16 stores E in bf16, so cast it up on the CPU path).
        dev = x.device.type
        x = x.to(torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.float32)
        if self.config.embed_norm:
            x = F.rms_norm(x, (x.size(-1),))
        x0 = x
        order = self.config.schedule(self.looping)
        if self.skip_weights is None:
            for i in order:
                x = self.blocks[i](x, x0)
            return self.final_norm(x)
        half = len(order) // 2
        skips = []
        for i in order[:half]:
            x = self.blocks[i](x, x0)
            skips.append(x)
        # Rows by unbind, not one select per skip: on the H100, select's zero-filled backward let Inductor
        # fuse each gate's gradient into a mixed row/column reduction of 6.3 ms per micro-batch.
        weights = self.skip_weights.to(x.dtype).unbind(0)
        gates = torch.sigmoid(self.skip_gates).to(x.dtype).unbind(0)
        for j, i in enumerate(order[half:]):
            if skips:
                x = torch.lerp(weights[j] * skips.pop(), x, gates[j])
            x = self.blocks[i](x, x0)
        return self.final_norm(x)

    def head(self, hidden: torch.Tensor, logit_delta: torch.Tensor | None = None) -> torch.Tensor:
        """Tied output head plus softcap, in float32: logits = cap · tanh((h Eᵀ + delta) / cap); `logit_delta`
        is a TTT head adapter's output (pgolf.lora)."""
        weight = self.tok_emb.weight
        if not torch.is_autocast_enabled(hidden.device.type):
            weight = weight.to(hidden.dtype)
        logits = F.linear(hidden, weight).float()
        if logit_delta is not None:
            logits = logits + logit_delta.float()
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap)

    def forward(self, input_ids: torch.Tensor, target_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits, or with targets the mean cross-entropy (the form DDP and torch.compile wrap)."""
        if target_ids is None:
            return self.head(self.hidden_states(input_ids))
        return self.loss(input_ids, target_ids)

    def loss(self, input_ids: torch.Tensor, target_ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy in nats (float32). reduction="none" gives per-token losses shaped like target_ids.
        With `fused_loss` set (train.fused_ce) the head and loss run as pgolf.softcap_ce: same values."""
        if self.fused_loss:
            hidden = self.hidden_states(input_ids)
            hidden = hidden.reshape(-1, hidden.size(-1))
            losses = head_loss_rows(hidden, self.tok_emb.weight.to(hidden.dtype), target_ids.reshape(-1),
                                    self.config.logit_softcap)
            return losses.view_as(target_ids) if reduction == "none" else losses.mean()
        logits = self.head(self.hidden_states(input_ids))
        losses = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target_ids.reshape(-1), reduction=reduction
        )
        return losses.view_as(target_ids) if reduction == "none" else losses

    def scored_losses(self, input_ids: torch.Tensor, target_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Per-token cross-entropy (nats, float32) of the targets where `keep` is true, in row-major order.
        The head runs on those positions only: a sliding window scores `stride` of its `seq_len` targets,
        and the [batch, seq, vocab] logits of the rest would be most of the evaluation's memory traffic."""
        hidden = self.hidden_states(input_ids)[keep]
        return F.cross_entropy(self.head(hidden), target_ids[keep], reduction="none")


def build_model(model_config: dict) -> GPT:
    return GPT(ModelConfig.from_dict(model_config))
