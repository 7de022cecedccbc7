"""Optimizers and schedules of the train stage: Muon for block matrices, AdamW for the rest,
the wall-clock-aware LR schedule, Muon's momentum warm-up, and the EMA of the weights."""
from __future__ import annotations

import torch

from pgolf.model import GPT
from pgolf.muon import Muon

ADAM_BETAS = (0.9, 0.95)


def build_optimizers(model: GPT, cfg: dict, device: torch.device) -> list[torch.optim.Optimizer]:
    """Muon for the block Linear weights; AdamW for the tied embedding and for every other (small) tensor."""
    linear_ids = {id(m.weight) for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)}
    matrices = [p for p in model.parameters() if id(p) in linear_ids]
    scalars = [p for n, p in model.named_parameters() if n != "tok_emb.weight" and id(p) not in linear_ids]
    assert len(matrices) + len(scalars) + 1 == len(list(model.parameters())), "unassigned parameters"
    adam = torch.optim.AdamW(
        [dict(params=[model.tok_emb.weight], lr=cfg["embed_lr"], weight_decay=cfg["embed_weight_decay"]),
         dict(params=scalars, lr=cfg["scalar_lr"], weight_decay=cfg["scalar_weight_decay"])],
        betas=ADAM_BETAS, eps=1e-8, fused=device.type == "cuda")
    muon = Muon(matrices, lr=cfg["matrix_lr"], momentum=cfg["muon_momentum"], weight_decay=cfg["weight_decay"],
                row_norm=cfg["muon_row_norm"], ns_steps=cfg["muon_ns_steps"],
                compile=cfg["compile"] and device.type == "cuda")
    optimizers = [adam, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers


def lr_scale(step: int, progress: float, warmup_steps: int, warmdown_frac: float) -> float:
    """Linear warmup over warmup_steps, flat, then linear decay to 0 over the last warmdown_frac of progress."""
    warmup = (step + 1) / warmup_steps if step < warmup_steps else 1.0
    warmdown = (1.0 - progress) / warmdown_frac if warmdown_frac > 0 and progress > 1 - warmdown_frac else 1.0
    return max(0.0, min(warmup, warmdown))


def muon_momentum(step: int, cfg: dict) -> float:
    """Linear ramp from muon_momentum_warmup_start to muon_momentum over muon_momentum_warmup_steps."""
    start, steps = cfg["muon_momentum_warmup_start"], cfg["muon_momentum_warmup_steps"]
    if start is None or steps <= 0:
        return cfg["muon_momentum"]
    f = min(step / steps, 1.0)
    return (1 - f) * start + f * cfg["muon_momentum"]


def set_schedules(optimizers: list, scale: float, momentum: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * scale
            if "momentum" in group:
                group["momentum"] = momentum


class EMA:
    """Exponential moving average of the weights (fp32); the saved model is this average."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
        live = model.state_dict()
        # Same-dtype pairs go through one foreach lerp; others (a bf16 embedding) one by one.
        pairs = [(self.state[k], live[k]) for k in self.state]
        self.fast = [(e, v) for e, v in pairs if v.dtype == e.dtype]
        self.slow = [(e, v) for e, v in pairs if v.dtype != e.dtype]

    @torch.no_grad()
    def update(self) -> None:
        if self.fast:
            torch._foreach_lerp_([e for e, _ in self.fast], [v for _, v in self.fast], 1.0 - self.decay)
        for e, v in self.slow:
            e.lerp_(v.float(), 1.0 - self.decay)
