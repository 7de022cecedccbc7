import pytest
import torch

from pgolf.muon import Muon, orthogonalize


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def reference_update_f64(grad, buf, momentum, row_norm, steps=5):
    """Muon(-EqR) update in float64, written out step by step from the record's description."""
    from pgolf.muon import NS_COEFFS
    g, m = grad.double(), buf.double()
    m = momentum * m + g
    u = g + momentum * m
    if row_norm:
        u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-7)
    x = u.T if u.size(0) > u.size(1) else u
    x = x / (x.norm() + 1e-7)
    a, b, c = NS_COEFFS
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    x = x.T if u.size(0) > u.size(1) else x
    return x * max(1.0, u.size(0) / u.size(1)) ** 0.5, m


@pytest.mark.parametrize("row_norm", [False, True])
def test_muon_eq_r_update_matches_a_float64_reference(row_norm):
    torch.manual_seed(1)
    shapes = [(24, 16), (16, 24), (16, 24), (12, 12)]  # two of one shape: batched together
    params = [torch.nn.Parameter(torch.randn(*s, dtype=torch.float32)) for s in shapes]
    start = [p.detach().clone() for p in params]
    opt = Muon(params, lr=0.1, momentum=0.9, weight_decay=0.0, row_norm=row_norm)
    bufs = [torch.zeros(s, dtype=torch.float64) for s in shapes]
    for _ in range(2):  # the second step exercises the momentum buffer
        grads = [torch.randn(*s) * torch.logspace(-1, 1, s[0])[:, None] for s in shapes]  # rows of unequal norm
        for p, g in zip(params, grads):
            p.grad = g
        before = [p.detach().double().clone() for p in params]
        opt.step()
        for k, (p, g) in enumerate(zip(params, grads)):
            upd, bufs[k] = reference_update_f64(g, bufs[k], 0.9, row_norm)
            expected = before[k] - 0.1 * upd
            err = (p.detach().double() - expected).norm() / (0.1 * upd.norm())
            assert err < 1e-4, (shapes[k], float(err))
    assert not torch.equal(params[0].detach(), start[0])


def test_row_norm_changes_the_update_when_rows_differ_in_scale():
    torch.manual_seed(0)
    g = torch.randn(16, 32) * torch.logspace(-2, 2, 16)[:, None]
    out = []
    for row_norm in (False, True):
        w = torch.nn.Parameter(torch.zeros(16, 32))
        w.grad = g.clone()
        Muon([w], lr=1.0, momentum=0.0, nesterov=False, row_norm=row_norm).step()
        out.append(w.detach().clone())
    assert not torch.allclose(out[0], out[1], atol=1e-3)


def _muon_params(seed=0):
    """Three shapes, with 3, 2 and 1 matrices: a rank's share is uneven or empty at world size 2."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 16), (16, 8), (8, 16), (12, 12), (12, 12), (24, 8)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params


def _two_rank_step(rank, world_size, out_dir):
    import torch.distributed as dist
    # A file rendezvous: a TCP port picked in advance can be taken by another process before the ranks bind it.
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        params = _muon_params()
        Muon(params, lr=0.1, momentum=0.9, row_norm=True).step()
        torch.save([p.detach() for p in params], f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_the_work_and_get_every_update(tmp_path):
    """Each rank orthogonalizes its share of every shape and the all_gather hands every rank all updates:
    both ranks end with the one-rank result, uneven shares included."""
    import torch.multiprocessing as mp
    mp.spawn(_two_rank_step, args=(2, str(tmp_path)), nprocs=2)
    params = _muon_params()
    Muon(params, lr=0.1, momentum=0.9, row_norm=True).step()
    for rank in range(2):
        for mine, ref in zip(torch.load(tmp_path / f"rank{rank}.pt"), params):
            torch.testing.assert_close(mine, ref.detach())
