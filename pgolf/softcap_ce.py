"""Tied head + softcapped cross-entropy with the logits' gradient written in the forward pass
(train.fused_ce).

The loss is training's last op, so d loss / d logits can be computed while the logits are read for
the log-sum-exp: one read and one write of the [tokens, vocab] logits, against three passes when the
backward is left to autograd (forward reduction; backward read + write). The head's two backward GEMMs
take that gradient as it is; the per-row scale of the incoming gradient (1/tokens for a mean) is applied
to their small [tokens, dim] operands, never to the [tokens, vocab] tensor. On CUDA the per-row work is
a persistent Triton kernel (each program takes whole rows, its next row's load pipelined under this row's
math); elsewhere the same math in PyTorch, which the CPU tests check against F.cross_entropy.
"""
from __future__ import annotations

import torch

MAX_TRITON_VOCAB = 32768  # one row must fit one program's registers; larger vocabularies use the torch path
# The kernel sums exp(softcapped logit) unshifted: vocab · e^cap and e^-cap stay in float32's normal range
# up to a cap of about 78 at MAX_TRITON_VOCAB; larger caps use the torch path.
MAX_TRITON_CAP = 64.0
# Launch settings of the CUDA kernel, swept by bench/softcap_ce_check.py: warps per program, programs per
# SM of a persistent grid (0: one program per row), pipelining stages of its row loop. On an H200 these take
# 98,304 rows of 8,192 in 1.26 ms (docs/records/2026-12-02_softcap_one_reduction_h200); 16 warps took 1.54.
KERNEL = dict(num_warps=8, programs_per_sm=4, stages=3)


def _rows_torch(logits: torch.Tensor, targets: torch.Tensor, cap: float):
    z = logits.float()
    t = torch.tanh(z / cap)
    logp = torch.log_softmax(cap * t, dim=-1)
    loss = -logp.gather(1, targets[:, None]).squeeze(1)
    grad = logp.exp()
    grad[torch.arange(len(targets), device=grad.device), targets] -= 1.0
    return loss, (grad * (1.0 - t * t)).to(logits.dtype)


try:  # CUDA installs of torch bring Triton; a CPU-only install may not, and then only the torch path exists
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:
    @triton.jit
    def _tanh_over(z, cap):
        return 1.0 - 2.0 / (tl.exp(z * (2.0 / cap)) + 1.0)  # tanh(z / cap); saturates to ±1 without NaN

    @triton.jit
    def _softcap_ce_rows_kernel(logits_ptr, targets_ptr, loss_ptr, grad_ptr, rows, vocab, cap,
                                BLOCK: tl.constexpr, STAGES: tl.constexpr):
        cols = tl.arange(0, BLOCK)
        mask = cols < vocab
        # Persistent: each program walks rows with a stride, so the next row's load overlaps this row's math.
        # int64 rows: row * vocab passes 2^31 at 262,144 rows of 8,192.
        for row in tl.range(tl.program_id(0).to(tl.int64), rows, tl.num_programs(0), num_stages=STAGES):
            base = row * vocab
            target = tl.load(targets_ptr + row)
            t = _tanh_over(tl.load(logits_ptr + base + cols, mask=mask, other=0.0).to(tl.float32), cap)
            # The softcap bounds each logit to [-cap, cap], so exp needs no max subtracted (MAX_TRITON_CAP keeps
            # the row's sum in float32's normal range): one row reduction, where max-then-sum took two.
            e = tl.where(mask, tl.exp(cap * t), 0.0)
            s = tl.sum(e, axis=0)
            # The target's logit read once more (a cached word) instead of a third row reduction.
            t_target = _tanh_over(tl.load(logits_ptr + base + target).to(tl.float32), cap)
            tl.store(loss_ptr + row, tl.log(s) - cap * t_target)
            g = (e * (1.0 / s) - (cols == target).to(tl.float32)) * (1.0 - t * t)
            tl.store(grad_ptr + base + cols, g.to(grad_ptr.dtype.element_ty), mask=mask)


def _rows_triton(logits: torch.Tensor, targets: torch.Tensor, cap: float, num_warps: int = 16,
                 programs: int | None = None, stages: int = 1):
    """programs: None for one program per row, else that many programs, each taking every programs-th row."""
    rows, vocab = logits.shape
    loss = torch.empty(rows, device=logits.device, dtype=torch.float32)
    grad = torch.empty_like(logits)
    grid = min(rows, programs or rows)
    _softcap_ce_rows_kernel[(grid,)](logits, targets, loss, grad, rows, vocab, float(cap),
                                     BLOCK=triton.next_power_of_2(vocab), STAGES=stages, num_warps=num_warps)
    return loss, grad


@torch.library.custom_op("pgolf::softcap_ce_rows", mutates_args=())
def softcap_ce_rows(logits: torch.Tensor, targets: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [rows, vocab] before the softcap, targets [rows] -> (loss [rows] float32 in nats,
    d loss_row / d logits_row [rows, vocab] in logits' dtype) for cap · tanh(logits / cap)."""
    logits, targets = logits.contiguous(), targets.contiguous()
    if logits.is_cuda and triton is not None and logits.size(1) <= MAX_TRITON_VOCAB and cap <= MAX_TRITON_CAP:
        sms = torch.cuda.get_device_properties(logits.device).multi_processor_count
        return _rows_triton(logits, targets, cap, KERNEL["num_warps"], KERNEL["programs_per_sm"] * sms or None,
                            KERNEL["stages"])
    return _rows_torch(logits, targets, cap)


@softcap_ce_rows.register_fake
def _(logits, targets, cap):
    return logits.new_empty(logits.size(0), dtype=torch.float32), torch.empty_like(logits)


class _HeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, cap):
        loss, grad = softcap_ce_rows(hidden @ weight.t(), targets, cap)
        ctx.save_for_backward(hidden, weight, grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, grad = ctx.saved_tensors
        scale = grad_loss.float()[:, None]  # float32: 1/tokens rounded to bf16 would bias every gradient
        grad_hidden = ((grad @ weight).float() * scale).to(hidden.dtype)
        return grad_hidden, grad.t() @ (hidden.float() * scale).to(hidden.dtype), None, None


def head_loss_rows(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-token cross-entropy (nats, float32) of cap · tanh(hidden @ weightᵀ / cap) against targets.
    hidden [rows, dim], weight [vocab, dim] in one dtype; gradients flow to both."""
    return _HeadLoss.apply(hidden, weight, targets, cap)
