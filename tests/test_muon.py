import pytest
import torch

from pgolf.muon import Muon, orthogonalize


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48)])
def test_orthogonalize_approximates_the_polar_factor(shape):
    torch.manual_seed(0)
    g = torch.randn(*shape)
    out = orthogonalize(g).double()
    assert out.shape == g.shape
    singular = torch.linalg.svdvals(out)
    assert singular.min() > 0.3 and singular.max() < 1.2  # the quintic's band around 1
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    polar = u @ vh
    cosine = (out * polar).sum() / (out.norm() * polar.norm())
    assert cosine > 0.97


def test_orthogonalize_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        orthogonalize(torch.randn(3, 4, 5))


def test_update_scale_for_tall_matrices():
    w = torch.nn.Parameter(torch.zeros(64, 16))
    w.grad = torch.randn(64, 16)
    Muon([w], lr=0.1, momentum=0.0).step()
    # orthogonal update (spectral norm ~1) scaled by sqrt(rows / cols) = 2, times lr
    assert 0.1 * 2 * 0.7 < torch.linalg.matrix_norm(w.detach(), ord=2) < 0.1 * 2 * 1.2


def test_weight_decay_is_decoupled():
    w = torch.nn.Parameter(torch.ones(8, 8))
    w.grad = torch.zeros(8, 8)  # zero gradient: the only change is decay
    Muon([w], lr=0.1, weight_decay=0.5).step()
    torch.testing.assert_close(w.detach(), torch.full((8, 8), 1 - 0.1 * 0.5))


def test_steps_decrease_loss_on_a_toy_regression():
    torch.manual_seed(0)
    x, target = torch.randn(256, 32), torch.randn(32, 16)
    y = x @ target
    w = torch.nn.Parameter(torch.zeros(32, 16))
    opt = Muon([w], lr=0.05)
    losses = []
    for _ in range(30):
        loss = (x @ w - y).square().mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0]
