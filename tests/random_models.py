"""A tiny GPT with random weights everywhere, for the tests of what runs on a model (eval, TTT, adapters)."""
import torch

from pgolf.model import GPT, ModelConfig

TINY = dict(num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2, rope_base=1e4, logit_softcap=30.0)


def random_gpt(vocab_size: int, seq_len: int, seed: int = 0, **arch) -> GPT:
    """N(0, 0.2) weights everywhere: the model's own init zeroes the output projections, which would hide
    every sublayer and adapter before them. arch: ModelConfig overrides (e.g. loop_layers)."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig.from_train_cfg({**TINY, "seq_len": seq_len, **arch}, vocab_size))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model
