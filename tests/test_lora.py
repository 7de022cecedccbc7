import functools

import pytest
import torch

from pgolf.lora import TARGETS, BatchedLoRA
from random_models import random_gpt


tiny_model = functools.partial(random_gpt, 64, 16)  # arch: ModelConfig overrides


@pytest.mark.parametrize("target", sorted(t for t in TARGETS if t != "head"))
def test_each_target_adapter_changes_the_model_and_a_fresh_one_does_not(target):
    model = tiny_model()
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        plain = model.hidden_states(ids)
        lora = BatchedLoRA(model, [target], rank=2, alpha=None, batch=2)
        fresh = model.hidden_states(ids)
        for b in lora.b:
            b.fill_(0.1)
        adapted = model.hidden_states(ids)
        lora.active = False
        off = model.hidden_states(ids)
    lora.remove()
    assert torch.allclose(fresh, plain, atol=1e-6)
    assert not torch.allclose(adapted, plain, atol=1e-3)  # the projection's adapter is on the model's path
    assert torch.equal(off, plain)


def test_each_row_has_its_own_adapter():
    model = tiny_model()
    ids = torch.randint(0, 64, (1, 16)).expand(2, -1)
    lora = BatchedLoRA(model, ["q", "v", "mlp_fc"], rank=2, alpha=None, batch=2)
    with torch.no_grad():
        for b in lora.b:
            b[1].fill_(0.1)  # row 1's adapters only
        out = model.hidden_states(ids)
    lora.remove()
    assert torch.allclose(out[0], tiny_model().hidden_states(ids[:1])[0], atol=1e-6)
    assert not torch.allclose(out[1], out[0], atol=1e-3)


def test_the_head_adapter_changes_the_logits_per_row_and_a_fresh_or_inactive_one_does_not():
    model = tiny_model()
    ids = torch.randint(0, 64, (1, 16)).expand(2, -1)
    lora = BatchedLoRA(model, ["q", "head"], rank=2, alpha=None, batch=2)
    with torch.no_grad():
        hidden = model.hidden_states(ids)
        plain = model.head(hidden)
        fresh = model.head(hidden, lora.logit_delta(hidden))
        lora.b[-1][1].fill_(0.1)  # the head adapter (last) of row 1 only
        adapted = model.head(hidden, lora.logit_delta(hidden))
        lora.active = False
        off = lora.logit_delta(hidden)
    lora.remove()
    assert lora.b[-1].shape == (2, 64, 2)  # vocab x rank
    assert torch.allclose(fresh, plain, atol=1e-6)
    assert torch.allclose(adapted[0], plain[0], atol=1e-6)
    assert not torch.allclose(adapted[1], plain[1], atol=1e-3)
    assert off is None
    assert BatchedLoRA(model, ["q"], rank=2, alpha=None, batch=2).logit_delta(hidden) is None


def test_reset_keeping_a_zeroes_b_alone_and_a_full_reset_restores_the_draw():
    model = tiny_model()
    lora = BatchedLoRA(model, ["q", "head"], rank=2, alpha=None, batch=2)
    drawn = [a.detach().clone() for a in lora.a]
    with torch.no_grad():
        for a, b in zip(lora.a, lora.b):
            a.add_(0.5)
            b.fill_(0.1)
    trained = [a.detach().clone() for a in lora.a]
    lora.reset(keep_a=True)
    assert all(torch.equal(a, t) for a, t in zip(lora.a, trained))
    assert all(not b.any() for b in lora.b)
    lora.reset()
    assert all(torch.equal(a, d) for a, d in zip(lora.a, drawn))
    lora.remove()


def test_per_pass_gives_each_pass_of_a_looped_block_its_own_adapter():
    """Schedule [0, 1, 1]: with per_pass, q's adapters are block 0's, block 1's first pass's and its second's;
    each changes the output alone, differently, and every forward starts again at the first pass."""
    model = tiny_model(loop_layers=[1], loop_repeats=2)
    ids = torch.randint(0, 64, (2, 16))
    shared = BatchedLoRA(model, ["q"], rank=2, alpha=None, batch=2)
    assert len(shared.a) == 2  # one per block
    shared.remove()
    lora = BatchedLoRA(model, ["q"], rank=2, alpha=None, batch=2, per_pass=True)
    assert lora.slots == [[0], [1, 2]]
    outputs = []
    with torch.no_grad():
        plain = model.hidden_states(ids)
        for slot in (1, 2):
            lora.b[slot].fill_(0.1)
            outputs.append(model.hidden_states(ids))
            assert torch.equal(model.hidden_states(ids), outputs[-1])  # the next forward: the same passes
            lora.b[slot].zero_()
    lora.remove()
    assert not torch.allclose(outputs[0], plain, atol=1e-3)
    assert not torch.allclose(outputs[1], plain, atol=1e-3)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)


@pytest.mark.parametrize("target", ["attn", "mlp"])
def test_a_sublayer_adapter_adds_a_low_rank_map_of_its_input_to_its_output(target):
    """attn / mlp (the 1.0611 record's o and MLP adapters): the sublayer's output plus (n Aᵀ) Bᵀ · alpha/rank
    of its own (normed) input n, row by row."""
    model = tiny_model()
    sublayer = model.blocks[1].get_submodule(target)
    n = torch.randn(2, 16, 32)
    with torch.no_grad():
        plain = sublayer(n)
        lora = BatchedLoRA(model, [target], rank=2, alpha=3.0, batch=2)
        lora.b[1].normal_()
        adapted = sublayer(n)
        delta = torch.bmm(torch.bmm(n, lora.a[1].transpose(1, 2)), lora.b[1].transpose(1, 2)) * 1.5
    lora.remove()
    assert lora.a[1].shape == (2, 2, 32) and lora.b[1].shape == (2, 32, 2)
    torch.testing.assert_close(adapted, plain + delta)


def test_per_pass_adapters_follow_the_schedule_in_order():
    """Schedule [0, 1, 1] with per-pass adapters computes what three blocks [0, 1, 1'] with one adapter each
    do, block 1's first pass taking the first of its adapters (the same draws, in the same order)."""
    looped = tiny_model(loop_layers=[1], loop_repeats=2)
    unrolled = tiny_model(num_layers=3)
    state = looped.state_dict()
    state.update({k.replace("blocks.1.", "blocks.2."): v for k, v in state.items() if k.startswith("blocks.1.")})
    unrolled.load_state_dict(state)
    ids = torch.randint(0, 64, (2, 16))
    per_pass = BatchedLoRA(looped, ["q"], rank=2, alpha=None, batch=2, per_pass=True)
    one_each = BatchedLoRA(unrolled, ["q"], rank=2, alpha=None, batch=2)
    with torch.no_grad():
        for lora in (per_pass, one_each):
            lora.b[1].fill_(0.1)
            lora.b[2].fill_(-0.2)
        torch.testing.assert_close(looped.hidden_states(ids), unrolled.hidden_states(ids))


def test_the_mlp_adapter_is_added_inside_the_blocks_output_scale():
    """With resid_mix, a block's MLP output is scaled by mlp_scale before the residual add; the mlp adapter's
    delta is part of that output, as the record's (scaled with it)."""
    model = tiny_model(resid_mix=True)
    block = model.blocks[0]
    x, x0 = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    with torch.no_grad():
        block.mlp_scale.normal_()
        plain = block(x, x0)
        lora = BatchedLoRA(model, ["mlp"], rank=2, alpha=None, batch=2)
        lora.b[0].normal_()
        adapted = block(x, x0)
        mix_x, mix_x0 = block.resid_mix.unbind(0)
        x_in = mix_x * x + mix_x0 * x0
        x_mid = x_in + block.attn_scale * block.attn(block.attn_norm(x_in))
        n = block.mlp_norm(x_mid)
        delta = torch.bmm(torch.bmm(n, lora.a[0].transpose(1, 2)), lora.b[0].transpose(1, 2))
    lora.remove()
    torch.testing.assert_close(adapted, plain + block.mlp_scale * delta)
