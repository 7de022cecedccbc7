"""Muon: momentum SGD whose update for each 2-D matrix is replaced by its nearest semi-orthogonal matrix.

The update direction is the polar factor U Vᵀ of the (Nesterov) momentum G = U S Vᵀ, approximated by a
few Newton–Schulz iterations of a quintic polynomial that pushes every singular value towards 1. The
quintic's coefficients trade exactness for speed: singular values land in roughly [0.7, 1.2], which is
fine for an update direction and needs only matmuls (bf16 on GPU).

With several ranks, parameters are dealt round-robin: each rank orthogonalizes its share, writes it into
a flat buffer of zeros, and one all_reduce (sum) hands every rank every update. Gradients must already
be averaged over ranks before `step()`.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(grad: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate polar factor U Vᵀ of a 2-D matrix by quintic Newton–Schulz iteration."""
    if grad.ndim != 2:
        raise ValueError(f"orthogonalize expects a 2-D matrix, got shape {tuple(grad.shape)}")
    a, b, c = NS_COEFFS
    # bf16 matmuls are fast and accurate enough on GPU; CPU bf16 matmul is slow, so keep fp32 there.
    x = grad.to(torch.bfloat16 if grad.is_cuda else torch.float32)
    # Frobenius normalization bounds the spectral norm by 1, inside the iteration's basin.
    x = x / (x.norm() + eps)
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide orientation so X Xᵀ is the smaller Gram matrix
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters. lr is the step size of an orthogonal update (spectral norm ≈ lr)."""

    def __init__(self, params, lr: float, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, weight_decay: float = 0.0):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon handles 2-D matrices only, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distributed = dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0

        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            flat = torch.zeros(sum(p.numel() for p in params), dtype=torch.float32, device=params[0].device)
            offset = 0
            for i, p in enumerate(params):
                if i % world_size == rank and p.grad is not None:
                    flat[offset:offset + p.numel()] = self._update(p, group).flatten()
                offset += p.numel()
            if world_size > 1:
                dist.all_reduce(flat)

            offset = 0
            for p in params:
                update = flat[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])  # decoupled, as in AdamW
                p.add_(update.to(p.dtype), alpha=-group["lr"])
        return loss

    def _update(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """Momentum, then orthogonalize, then rescale so tall matrices get comparable per-entry steps."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(p.grad)
        grad = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
        update = orthogonalize(grad, steps=group["ns_steps"]).float()
        return update * max(1.0, p.size(0) / p.size(1)) ** 0.5
