import pytest
import torch

from pgolf.config import section_defaults
from pgolf.model import GPT, ModelConfig
from pgolf.optim import EMA, build_optimizers, lr_scale, muon_momentum


def test_lr_schedule():
    assert lr_scale(0, 0.0, warmup_steps=4, warmdown_frac=0.5) == 0.25
    assert lr_scale(10, 0.3, warmup_steps=4, warmdown_frac=0.5) == 1.0
    assert lr_scale(10, 0.75, warmup_steps=4, warmdown_frac=0.5) == pytest.approx(0.5)
    assert lr_scale(10, 1.0, warmup_steps=4, warmdown_frac=0.5) == 0.0
    assert lr_scale(10, 0.99, warmup_steps=4, warmdown_frac=0.0) == 1.0


def test_muon_momentum_warmup():
    cfg = dict(section_defaults("train"), muon_momentum=0.99, muon_momentum_warmup_start=0.92, muon_momentum_warmup_steps=1500)
    assert muon_momentum(0, cfg) == pytest.approx(0.92)
    assert muon_momentum(750, cfg) == pytest.approx(0.955)
    assert muon_momentum(3000, cfg) == pytest.approx(0.99)
    assert muon_momentum(0, dict(cfg, muon_momentum_warmup_start=None)) == 0.99


def test_every_parameter_has_exactly_one_optimizer():
    model = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2,
                            rope_base=10000.0, logit_softcap=30.0, seq_len=16))
    cfg = dict(section_defaults("train"), embed_lr=0.05, scalar_lr=0.02, matrix_lr=0.04, muon_momentum=0.95, weight_decay=0.0)
    adam, muon = build_optimizers(model, cfg, torch.device("cpu"))
    owned = [p for opt in (adam, muon) for g in opt.param_groups for p in g["params"]]
    assert sorted(map(id, owned)) == sorted(id(p) for p in model.parameters())
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])


def test_ema_moves_toward_the_weights_by_one_minus_decay():
    layer = torch.nn.Linear(3, 2, bias=False)
    ema = EMA(layer, decay=0.9)
    before = ema.state["weight"].clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    ema.update()
    assert torch.allclose(ema.state["weight"], before + 0.1)
