"""Muon: momentum SGD whose update for each 2-D matrix is replaced by its nearest semi-orthogonal matrix.

The update direction is the polar factor U Vᵀ of the (Nesterov) momentum G = U S Vᵀ, approximated by a
few Newton–Schulz iterations of a quintic polynomial that pushes every singular value towards 1. The
quintic's coefficients trade exactness for speed: singular values land in roughly [0.7, 1.2], which is
fine for an update direction and needs only matmuls (bf16 on GPU).

MuonEq-R (`row_norm`): before Newton–Schulz every row of the momentum is scaled to unit L2 norm, so
each output unit gets an equal share of the update.

Speed: matrices of the same (wide-oriented) shape are stacked and orthogonalized together with batched
matmuls, so an 11-layer model costs three batched Newton–Schulz runs instead of 66 small ones. With
several ranks each stack is dealt out: rank r orthogonalizes matrices r, r+W, ... of it, and an
asynchronous all_gather of that shape's updates (bf16 on GPU) starts as soon as they are computed, so it
travels while the next shape is orthogonalized. An all_gather moves half the bytes of the all_reduce of
a zero-filled buffer it replaces. Gradients must already be averaged over ranks before `step()`.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(x: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate polar factor of each matrix of a [..., rows, cols] stack with rows <= cols."""
    a, b, c = NS_COEFFS
    # Frobenius normalization bounds the spectral norm by 1, inside the iteration's basin.
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def orthogonalize(grad: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate polar factor U Vᵀ of a 2-D matrix (bf16 on GPU, fp32 on CPU)."""
    if grad.ndim != 2:
        raise ValueError(f"orthogonalize expects a 2-D matrix, got shape {tuple(grad.shape)}")
    # bf16 matmuls are fast and accurate enough on GPU; CPU bf16 matmul is slow, so keep fp32 there.
    x = grad.to(torch.bfloat16 if grad.is_cuda else torch.float32)
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide orientation so X Xᵀ is the smaller Gram matrix
        x = x.T
    x = newton_schulz(x, steps, eps)
    return x.T if tall else x


def row_normalize(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """MuonEq-R: every row (output unit) of each matrix scaled to unit L2 norm, in fp32."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters. lr is the step size of an orthogonal update (spectral norm ≈ lr).

    compile=True runs the batched Newton–Schulz through torch.compile (GPU path)."""

    def __init__(self, params, lr: float, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, weight_decay: float = 0.0, row_norm: bool = False, compile: bool = False):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        weight_decay=weight_decay, row_norm=row_norm)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon handles 2-D matrices only, got shape {tuple(p.shape)}")
        self._ns = torch.compile(newton_schulz, dynamic=False) if compile else newton_schulz

    @staticmethod
    def _buckets(params: list) -> dict:
        """Indices of params by wide-oriented shape: (rows, cols) with rows <= cols."""
        buckets: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            shape = tuple(sorted(p.shape))
            buckets.setdefault(shape, []).append(i)
        return buckets

    def _orthogonalize_shape(self, group, params, directions, idx, work_dtype, rank, world_size):
        """This rank's share (matrices rank, rank+W, ...) of one shape's stack, orthogonalized, and an async
        all_gather of every rank's share: (idx, [W * per_rank, rows, cols] updates, handle or None).
        Ranks with one matrix fewer send a zero matrix in its place."""
        per_rank = -(-len(idx) // world_size)
        mine = idx[rank::world_size]
        stack = []
        for i in mine:
            d = directions[i]
            if group["row_norm"]:
                d = row_normalize(d)  # rows of the parameter as stored: its output units
            d = d.to(work_dtype)
            stack.append(d.T if d.size(0) > d.size(1) else d)
        rows, cols = sorted(params[idx[0]].shape)
        local = torch.zeros(per_rank, rows, cols, dtype=work_dtype, device=params[idx[0]].device)
        if stack:
            local[:len(stack)] = self._ns(torch.stack(stack), group["ns_steps"])
        if world_size == 1:
            return idx, local, None
        gathered = local.new_empty(world_size * per_rank, rows, cols)
        return idx, gathered, dist.all_gather_into_tensor(gathered, local, async_op=True)

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
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            mu = group["momentum"]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                bufs.append(state["momentum_buffer"])
            grads = [p.grad for p in params]
            torch._foreach_mul_(bufs, mu)
            torch._foreach_add_(bufs, grads)
            # Nesterov: look ahead along the momentum.
            directions = torch._foreach_add(grads, bufs, alpha=mu) if group["nesterov"] else bufs

            work_dtype = torch.bfloat16 if params[0].is_cuda else torch.float32
            pending = [self._orthogonalize_shape(group, params, directions, idx, work_dtype, rank, world_size)
                       for idx in self._buckets(params).values()]
            updates: list = [None] * len(params)
            for idx, gathered, handle in pending:
                if handle is not None:
                    handle.wait()
                for j, i in enumerate(idx):  # matrix j of the shape was orthogonalized by rank j % W
                    o = gathered[(j % world_size) * (len(gathered) // world_size) + j // world_size]
                    p = params[i]
                    o = o.T if p.size(0) > p.size(1) else o
                    # Tall matrices get comparable per-entry steps.
                    updates[i] = o * max(1.0, p.size(0) / p.size(1)) ** 0.5
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])  # decoupled, as in AdamW
            if work_dtype != params[0].dtype:
                updates = [u.to(params[0].dtype) for u in updates]
            torch._foreach_add_(params, updates, alpha=-group["lr"])
        return loss
