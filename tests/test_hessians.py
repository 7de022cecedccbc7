import torch

from pgolf.hessians import EMBED_KEY, NUM_TOKENS_KEY, collect_hessians
from pgolf.model import GPT, ModelConfig


def test_hessians_are_input_second_moments():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, num_layers=2, model_dim=16, num_heads=2, num_kv_heads=1, mlp_mult=2,
                            rope_base=10000.0, logit_softcap=30.0, seq_len=8))
    batches = [torch.randint(0, 50, (3, 8)) for _ in range(2)]
    it = iter(batches)
    hessians = collect_hessians(model, lambda: next(it), num_batches=2)

    ids = torch.cat(batches)
    x = model.blocks[0].attn_norm(model.tok_emb(ids)).reshape(-1, 16)  # input of block 0's q, k, v
    for name in ("q", "k", "v"):
        torch.testing.assert_close(hessians[f"blocks.0.attn.{name}.weight"], x.T @ x, rtol=1e-4, atol=1e-4)
    h = model.hidden_states(ids).reshape(-1, 16)
    torch.testing.assert_close(hessians[EMBED_KEY], h.T @ h, rtol=1e-4, atol=1e-4)
    assert hessians[NUM_TOKENS_KEY] == 48
    assert hessians["blocks.1.mlp.proj.weight"].shape == (32, 32)
    assert len(hessians) == 2 * 6 + 2
    attn = model.blocks[0].attn
    assert not attn._forward_pre_hooks and not attn.proj._forward_hooks  # hooks removed
