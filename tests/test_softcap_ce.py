import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pgolf.softcap_ce import head_loss_rows, softcap_ce_rows

CAP = 30.0

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def plain_rows(logits, targets, cap=CAP):
    """The unfused path of GPT.loss: softcap in float32, then cross-entropy per row."""
    return F.cross_entropy(cap * torch.tanh(logits.float() / cap), targets, reduction="none")


def case(rows=24, vocab=50, dim=16, seed=0, scale=40.0):
    g = torch.Generator().manual_seed(seed)
    # Logits up to ~±80 so the softcap saturates for some entries: the tanh' factor is exercised.
    logits = torch.randn(rows, vocab, generator=g) * scale
    return logits, torch.randint(0, vocab, (rows,), generator=g), torch.randn(rows, dim, generator=g), \
        torch.randn(vocab, dim, generator=g) * 2.0


def test_rows_match_cross_entropy_and_its_gradient():
    logits, targets, _, _ = case()
    loss, grad = softcap_ce_rows(logits, targets, CAP)
    x = logits.clone().requires_grad_(True)
    ref = plain_rows(x, targets)
    ref.sum().backward()
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, x.grad, rtol=1e-5, atol=1e-6)
    assert grad.dtype == logits.dtype and loss.dtype == torch.float32


def test_head_loss_gradients_with_uneven_row_weights():
    """The incoming gradient's per-row scale is moved onto the small operands: check it lands right."""
    _, targets, hidden, weight = case()
    row_weights = torch.rand(len(targets), generator=torch.Generator().manual_seed(1)) + 0.1
    h1, w1 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    (head_loss_rows(h1, w1, targets, CAP) * row_weights).sum().backward()
    h2, w2 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    (plain_rows(h2 @ w2.t(), targets) * row_weights).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-4, atol=1e-5)


def test_custom_op_registration():
    logits, targets, _, _ = case(rows=6, vocab=11)
    torch.library.opcheck(softcap_ce_rows, (logits, targets, CAP))


INTERPRETED_CHECK = """
import torch
from pgolf import softcap_ce
g = torch.Generator().manual_seed(0)
# Rows of large logits (the softcap saturates) and of small ones (where a padding lane counted in the
# row's sum would show).
logits, targets = torch.randn(6, 37, generator=g) * 40.0, torch.randint(0, 37, (6,), generator=g)
logits[3:] /= 40.0
for dtype, tol, programs in ((torch.float32, 1e-6, None), (torch.bfloat16, 8e-3, None), (torch.float32, 1e-6, 2)):
    x = logits.to(dtype)
    loss, grad = softcap_ce._rows_triton(x, targets, 30.0, programs=programs)
    ref_loss, ref_grad = softcap_ce._rows_torch(x, targets, 30.0)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=tol, atol=tol)
# Rows whose every logit saturates the softcap at the largest cap the kernel takes, at its largest
# vocabulary: the unshifted sum of exp must stay finite and nonzero.
vocab, cap = softcap_ce.MAX_TRITON_VOCAB, softcap_ce.MAX_TRITON_CAP
for fill in (-1e4, 1e4):
    x = torch.full((2, vocab), fill)
    x[1, :vocab // 2] = -fill
    t = torch.tensor([3, vocab - 1])
    loss, grad = softcap_ce._rows_triton(x, t, cap, programs=1)
    ref_loss, ref_grad = softcap_ce._rows_torch(x, t, cap)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-8)
print("kernel ok")
"""


def test_triton_kernel_in_the_interpreter():
    """The CUDA kernel itself, run by Triton's CPU interpreter (which must be on before Triton is imported,
    hence the subprocess): same rows and gradient as the torch path, with a vocabulary that is not a power
    of two (masked lanes), bf16 logits as in training, a persistent grid of fewer programs than rows, and
    rows saturated at the largest cap and vocabulary the kernel takes."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", INTERPRETED_CHECK], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "kernel ok" in done.stdout, done.stderr[-3000:]
