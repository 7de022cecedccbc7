import math

import pytest
import torch
import torch.nn.functional as F

from pgolf.model import GPT, ModelConfig, build_model

TRAIN_CFG = dict(num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2, rope_base=10000.0,
                 logit_softcap=30.0, seq_len=16, matrix_lr=0.04)  # extra keys are ignored
VOCAB = 97


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_model(seed: int = 0, **overrides) -> GPT:
    """A model with every weight random: zero-init projections would hide attention/MLP bugs."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig.from_train_cfg({**TRAIN_CFG, **overrides}, VOCAB))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def test_config_roundtrip_and_validation():
    cfg = ModelConfig.from_train_cfg(TRAIN_CFG, VOCAB)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.head_dim == 8 and cfg.mlp_hidden == 64
    with pytest.raises(KeyError, match="num_kv_heads"):
        ModelConfig.from_train_cfg({k: v for k, v in TRAIN_CFG.items() if k != "num_kv_heads"}, VOCAB)
    with pytest.raises(KeyError, match="bogus"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig.from_train_cfg({**TRAIN_CFG, "num_kv_heads": 3}, VOCAB)


def test_parameter_names_are_the_interface():
    names = set(build_model(ModelConfig.from_train_cfg(TRAIN_CFG, VOCAB).to_dict()).state_dict())
    per_block = {"attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.proj.weight", "mlp.fc.weight",
                 "mlp.proj.weight", "attn_norm.weight", "mlp_norm.weight"}
    expected = {f"blocks.{i}.{n}" for i in range(2) for n in per_block} | {"tok_emb.weight", "final_norm.weight"}
    assert names == expected


def test_shapes_and_zero_init_projections():
    model = GPT(ModelConfig.from_train_cfg(TRAIN_CFG, VOCAB))
    logits = model(torch.randint(0, VOCAB, (3, 16)))
    assert logits.shape == (3, 16, VOCAB) and logits.dtype == torch.float32
    assert model.blocks[0].attn.k.weight.shape == (2 * 8, 32)  # num_kv_heads * head_dim
    assert not model.blocks[1].attn.proj.weight.any() and not model.blocks[1].mlp.proj.weight.any()
    assert all(not hasattr(m, "bias") or m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_causal_future_tokens_do_not_change_earlier_logits():
    model = random_model()
    ids = torch.randint(0, VOCAB, (2, 16))
    changed = ids.clone()
    changed[:, 10] = (changed[:, 10] + 1) % VOCAB
    a, b = model(ids), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-3)  # and the change does reach later positions


def test_grouped_query_attention_matches_repeated_kv_heads():
    model = random_model()
    attn = model.blocks[0].attn
    x = torch.randn(2, 16, 32)
    q = attn.q(x).view(2, 16, 4, 8).transpose(1, 2)
    k = attn.k(x).view(2, 16, 2, 8).transpose(1, 2)
    v = attn.v(x).view(2, 16, 2, 8).transpose(1, 2)
    q = attn.rotary(F.rms_norm(q, (8,)))
    k = attn.rotary(F.rms_norm(k, (8,)))
    # query heads 0,1 share KV head 0; heads 2,3 share KV head 1
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(16, 16, dtype=torch.bool).triu(1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 16, 32)
    torch.testing.assert_close(attn(x), attn.proj(y), atol=1e-5, rtol=1e-4)


def test_softcap_bounds_logits():
    model = random_model(logit_softcap=5.0)
    with torch.no_grad():
        model.tok_emb.weight.mul_(100.0)
    logits = model(torch.randint(0, VOCAB, (2, 16)))
    assert logits.abs().max() <= 5.0 + 1e-5
    assert logits.abs().max() > 4.0  # the cap is actually reached, not just never approached


def test_tied_embedding_is_the_output_head():
    model = random_model()
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in model.state_dict().values())
    ids = torch.zeros(1, 16, dtype=torch.long)  # only token 0 is ever embedded
    model.loss(ids, torch.randint(0, VOCAB, (1, 16))).backward()
    # rows of tokens never seen as input still get gradient: through the head
    assert model.tok_emb.weight.grad[1:].abs().sum() > 0
    hidden = model.hidden_states(ids)
    expected = 30.0 * torch.tanh(hidden @ model.tok_emb.weight.T / 30.0)
    torch.testing.assert_close(model(ids), expected)


def test_loss_equals_manual_cross_entropy():
    model = random_model()
    ids, targets = torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16))
    logp = model(ids).double().log_softmax(-1)
    manual = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    per_token = model.loss(ids, targets, reduction="none")
    assert per_token.shape == (2, 16) and per_token.dtype == torch.float32
    torch.testing.assert_close(per_token.double(), manual, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.loss(ids, targets).double(), manual.mean(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"loop_layers": [1], "loop_repeats": 3, "unet_skips": True}])
def test_scored_losses_are_the_per_token_losses_of_the_kept_positions(overrides):
    model = random_model(**overrides)
    model.looping = bool(overrides)
    ids, targets = torch.randint(0, VOCAB, (3, 16)), torch.randint(0, VOCAB, (3, 16))
    keep = torch.zeros(3, 16, dtype=torch.bool)
    keep[0, :] = True   # a first window scores everything
    keep[1, 12:] = True  # a later one only its last stride
    keep[2, 15] = True
    scored = model.scored_losses(ids, targets, keep)
    assert scored.shape == (16 + 4 + 1,) and scored.dtype == torch.float32
    torch.testing.assert_close(scored, model.loss(ids, targets, reduction="none")[keep], atol=1e-6, rtol=1e-6)


def test_fused_loss_is_the_same_loss_and_gradients():
    """train.fused_ce changes how GPT.loss is computed (pgolf.softcap_ce), not what."""
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    tgt = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(4))
    results = []
    for fused in (False, True):
        model = random_model(seed=5, logit_softcap=2.0)  # a small cap saturates: tanh' matters
        model.fused_loss = fused
        loss = model.loss(ids, tgt)
        loss.backward()
        results.append((loss.detach(), model.loss(ids, tgt, reduction="none").detach(),
                        {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l0, rows0, g0), (l1, rows1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rows1, rows0, rtol=1e-5, atol=1e-5)
    assert rows1.shape == tgt.shape
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_attention_ops_are_the_same_loss_and_gradients():
    """train.fused_qk / fused_xsa change how attention's elementwise work runs (pgolf.attention_ops), not what."""
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(6))
    tgt = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(7))
    results = []
    for fused in (False, True):
        model = random_model(seed=8, xsa=True, qk_gain_init=4.0, rope_dims=4, resid_mix=True)
        for block in model.blocks:
            block.attn.fused_qk = block.attn.fused_xsa = fused
        loss = model.loss(ids, tgt)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-6)
    assert g0["blocks.0.attn.q_gain"].abs().sum() > 0
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)
