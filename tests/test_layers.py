"""Each record-stack switch on a tiny model: runs forward + backward and changes what it should."""
import math

import pytest
import torch
import torch.nn.functional as F

from pgolf.layers import Block, MLP, Rotary, exclusive_self_attention
from pgolf.model import GPT, ModelConfig

BASE = dict(vocab_size=61, num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2, rope_base=10000.0,
            logit_softcap=30.0, seq_len=16)
SWITCHES = {
    "mlp_activation": "leaky_relu2", "rope_dims": 4, "qk_gain_init": 4.0, "layer_norm_scale": True,
    "norm_weight": False, "resid_mix": True, "embed_norm": True, "unet_skips": True, "xsa": True,
    "loop_layers": [1, 2], "orthogonal_init": True,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model_with(seed=0, randomize=True, **kw) -> GPT:
    torch.manual_seed(seed)
    extra = dict(loop_repeats=3) if "loop_layers" in kw else {}
    model = GPT(ModelConfig(**{**BASE, **extra, **kw}))
    if randomize:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.ndim == 2 and n.endswith(".weight"):
                    p.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_each_switch_runs_forward_backward_and_changes_the_output(name):
    ids, tgt = torch.randint(0, 61, (2, 16)), torch.randint(0, 61, (2, 16))
    plain, switched = model_with(), model_with(**{name: SWITCHES[name]})
    loss = switched.loss(ids, tgt)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in switched.parameters())
    if name == "norm_weight":  # unit gains at init: the same function, fewer parameters
        assert not any(n.endswith("norm.weight") for n, _ in switched.named_parameters())
    elif name == "resid_mix":  # initialised as the plain residual (mix [1, 0], scales 1): same function
        assert switched.blocks[0].resid_mix.shape == (2, 32) and switched.blocks[0].resid_mix.grad.abs().sum() > 0
        torch.testing.assert_close(plain(ids), switched(ids))
    elif name == "orthogonal_init":  # init only; the fixture randomizes matrices, so check a fresh model
        w = model_with(randomize=False, orthogonal_init=True).blocks[0].mlp.fc.weight.detach()
        torch.testing.assert_close(w.T @ w, torch.eye(32), atol=1e-5, rtol=0)
    else:
        assert not torch.allclose(plain(ids), switched(ids), atol=1e-5), name


def test_all_switches_together_train_a_few_steps():
    model = model_with(randomize=False, **SWITCHES)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 61, (4, 16))
    losses = []
    for _ in range(15):
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_leaky_relu2_squares_a_half_slope_leaky_relu():
    cfg = ModelConfig(**BASE, mlp_activation="leaky_relu2")
    mlp = MLP(cfg)
    x = torch.randn(3, 32)
    expected = mlp.proj(torch.where(mlp.fc(x) > 0, mlp.fc(x), 0.5 * mlp.fc(x)).square())
    torch.testing.assert_close(mlp(x), expected)


def test_partial_rope_rotates_only_the_first_dims_and_keeps_norms():
    rot = Rotary(4, 10000.0)
    x = torch.randn(2, 3, 10, 8)
    y = rot(x)
    torch.testing.assert_close(y[..., 4:], x[..., 4:])  # pass-through dims
    assert not torch.allclose(y[..., :4], x[..., :4])
    torch.testing.assert_close(y[..., :4].norm(dim=-1), x[..., :4].norm(dim=-1))
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])  # position 0: angle 0


def test_qk_gain_is_a_learned_per_head_temperature():
    model = model_with(qk_gain_init=4.0)
    attn = model.blocks[0].attn
    assert attn.q_gain.shape == (4,) and torch.all(attn.q_gain == 4.0)
    model.loss(torch.randint(0, 61, (2, 16)), torch.randint(0, 61, (2, 16))).backward()
    assert attn.q_gain.grad.abs().sum() > 0


def test_xsa_output_is_orthogonal_to_the_tokens_own_value():
    torch.manual_seed(0)
    y, v = torch.randn(2, 7, 8, 16), torch.randn(2, 7, 2, 16)  # 8 query heads, 2 kv heads: groups of 4
    out = exclusive_self_attention(y, v)
    own_v = v.repeat_interleave(4, dim=2)  # query head h reads kv head h // 4
    cos = (out * own_v).sum(-1) / (out.norm(dim=-1) * own_v.norm(dim=-1))
    assert cos.abs().max() < 1e-5
    # and only that component is removed: out + projection == y
    vn = F.normalize(own_v, dim=-1)
    torch.testing.assert_close(out + (y * vn).sum(-1, keepdim=True) * vn, y)


def test_xsa_inside_attention_before_the_projection():
    model = model_with(xsa=True)
    attn = model.blocks[0].attn
    captured = {}
    attn.proj.register_forward_hook(lambda m, inp, out: captured.setdefault("y", inp[0]))
    x = torch.randn(2, 16, 32)
    attn(x)
    v = attn.v(x).view(2, 16, 2, 8).repeat_interleave(2, dim=2)
    y = captured["y"].view(2, 16, 4, 8)
    assert ((y * F.normalize(v, dim=-1)).sum(-1)).abs().max() < 1e-4


def test_layer_norm_scale_uses_the_physical_block_index():
    cfg = ModelConfig(**BASE, layer_norm_scale=True)
    assert [Block(cfg, i).norm_scale for i in range(3)] == pytest.approx([1, 1 / math.sqrt(2), 1 / math.sqrt(3)])
    block = Block(cfg, 3)
    seen = {}
    block.attn.register_forward_pre_hook(lambda m, inp: seen.setdefault("u", inp[0]))
    x = torch.randn(2, 16, 32)
    block(x, x)
    torch.testing.assert_close(seen["u"], block.attn_norm(x) / 2.0)


def test_unet_skips_gate_and_count():
    model = model_with(unet_skips=True)
    assert model.skip_weights.shape == (2, 32) and torch.all(model.skip_gates == 0)  # 4 layers: 2 + 2
    looped = model_with(unet_skips=True, loop_layers=[1, 2])  # schedule of 8: 4 skips
    assert looped.skip_weights.shape == (4, 32)
    ids = torch.randint(0, 61, (2, 16))
    model.loss(ids, ids).backward()
    assert model.skip_gates.grad.abs().sum() > 0 and model.skip_weights.grad.abs().sum() > 0


def test_depth_recurrence_really_reapplies_the_loop_layers():
    model = model_with(loop_layers=[1, 2])  # loop_repeats 3
    assert model.config.schedule(True) == [0, 1, 2, 1, 2, 1, 2, 3]
    calls = {i: 0 for i in range(4)}
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda m, inp, i=i: calls.__setitem__(i, calls[i] + 1))
    ids = torch.randint(0, 61, (2, 16))
    model.looping = False
    plain = model(ids)
    assert calls == {0: 1, 1: 1, 2: 1, 3: 1}
    model.looping = True
    looped = model(ids)
    assert calls == {0: 2, 1: 4, 2: 4, 3: 2}
    # equal to applying the blocks by hand in the looped order
    x = model.tok_emb(ids)
    for i in [0, 1, 2, 1, 2, 1, 2, 3]:
        x = model.blocks[i](x, x)
    torch.testing.assert_close(looped, model.head(model.final_norm(x)))
    assert not torch.allclose(plain, looped)


def test_looping_is_on_by_default_for_a_looped_config_and_parameters_are_shared():
    model = model_with(loop_layers=[1, 2])
    plain = model_with(loop_layers=[])
    assert model.looping and not plain.looping
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())
    with pytest.raises(ValueError, match="loop_layers"):
        ModelConfig(**BASE, loop_layers=[1, 3])


def test_resid_mix_starts_as_the_plain_residual_and_mixes_x0():
    cfg = ModelConfig(**BASE, resid_mix=True)
    block = Block(cfg, 0)
    x, x0 = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    with torch.no_grad():
        block.resid_mix[1].fill_(0.5)
    plain = Block(ModelConfig(**BASE), 0)
    plain.load_state_dict(block.state_dict(), strict=False)
    torch.testing.assert_close(block(x, x0), plain(x + 0.5 * x0, None))
