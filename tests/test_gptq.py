"""GPTQ must beat round-to-nearest on the layer outputs it is built to protect, at equal bits."""
import pytest
import torch

from pgolf.gptq import (output_error_ratio, quantize_gptq, quantize_model, quantize_rtn, quantize_state_dict,
                        sdclip_scale)
from pgolf.quant_format import dequantize, deserialize

QCFG = {"method": "gptq", "bits": 6, "embed_bits": 8, "clip_sigmas": 12.85, "embed_clip_sigmas": 20.0,
        "block_size": 16, "damp": 0.01, "passthrough_max_numel": 0, "act_order": True}


def calibration(n=2048, d=64, rank=6, seed=0):
    """Activations as a transformer makes them: a few dominant correlated directions plus noise,
    with uneven per-channel energy."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, rank, generator=g) @ torch.randn(rank, d, generator=g)
    X = X + 0.5 * torch.randn(n, d, generator=g)
    return X * torch.linspace(0.3, 2.0, d)


def layer_error(X, W, q, scale):
    return float(((X @ W.T - X @ dequantize(q, scale).T) ** 2).sum())


@pytest.mark.parametrize("bits", [4, 5, 6])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_layer_outputs(bits, act_order):
    X = calibration()
    W = torch.randn(48, 64, generator=torch.Generator().manual_seed(1)) * 0.05
    q_rtn, s_rtn = quantize_rtn(W, bits, clip_sigmas=3.0)
    q_gptq, s_gptq = quantize_gptq(W, X.T @ X, bits, clip_sigmas=3.0, block_size=16, damp=0.01,
                                   act_order=act_order)
    assert torch.equal(s_rtn, s_gptq)  # same grid: only the choice of codes differs
    err_rtn, err_gptq = layer_error(X, W, q_rtn, s_rtn), layer_error(X, W, q_gptq, s_gptq)
    assert err_gptq < 0.5 * err_rtn, (err_gptq, err_rtn)


def test_block_size_does_not_change_the_result():
    # Lazy batch updates are an exact reordering of the same arithmetic, up to float rounding.
    X, W = calibration(), torch.randn(32, 64) * 0.05
    H = X.T @ X
    q1, _ = quantize_gptq(W, H, 5, 3.0, block_size=64, damp=0.01, act_order=False)
    q2, _ = quantize_gptq(W, H, 5, 3.0, block_size=8, damp=0.01, act_order=False)
    assert (q1 != q2).float().mean() < 0.01


def test_identity_hessian_equals_rtn():
    W = torch.randn(40, 32) * 0.1
    for bits in (4, 6, 8):
        q_rtn, s_rtn = quantize_rtn(W, bits, 4.0)
        q_gptq, s_gptq = quantize_gptq(W, torch.eye(32), bits, 4.0, block_size=8, damp=0.01, act_order=False)
        assert torch.equal(q_rtn, q_gptq) and torch.equal(s_rtn, s_gptq)


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_clip_rule_and_range(bits):
    W = torch.randn(16, 256) * 0.02
    W[0, 0] = 1.0  # an outlier far beyond clip_sigmas * std: it must saturate, not stretch the grid
    clip_sigmas = 3.0
    qmax = 2 ** (bits - 1) - 1
    scale = sdclip_scale(W, bits, clip_sigmas)
    expected = (clip_sigmas * W.std(dim=1) / qmax).half()  # sample std, as the record
    assert torch.equal(scale, expected)
    q, s = quantize_rtn(W, bits, clip_sigmas)
    assert q.dtype == torch.int8 and s.dtype == torch.float16
    assert int(q.abs().max()) <= qmax
    assert int(q[0, 0]) == qmax  # saturated at the clip
    Wq = dequantize(q, s)
    clip = qmax * s.float()  # the clip as stored (fp16-rounded scale)
    assert (Wq.abs() <= clip[:, None] + 1e-7).all()
    beyond = W.abs() > clip[:, None] * (1 + 1e-3)
    assert beyond.any() and torch.equal(Wq[beyond].abs(), clip[:, None].expand_as(W)[beyond])
    # Inside the clip, round-to-nearest is within half a step.
    inside = ~beyond
    assert ((W - Wq).abs()[inside] <= (s.float()[:, None] / 2 + 1e-6).expand_as(W)[inside]).all()


def test_dead_columns_get_zero_codes_and_rest_is_fine():
    X = calibration(d=32)
    X[:, [3, 17]] = 0.0  # inputs that never fire: diag(H) == 0
    W = torch.randn(24, 32) * 0.05
    H = X.T @ X
    q, s = quantize_gptq(W, H, 5, 3.0, block_size=8, damp=0.01, act_order=True)
    assert (q[:, [3, 17]] == 0).all()
    assert torch.isfinite(dequantize(q, s)).all()
    q_rtn, s_rtn = quantize_rtn(W, 5, 3.0)
    assert layer_error(X, W, q, s) < layer_error(X, W, q_rtn, s_rtn)


def test_bad_hessian_errors_name_the_tensor():
    W = torch.randn(8, 16)
    H = torch.eye(16)
    H[2, 5] = float("nan")
    with pytest.raises(ValueError, match="blocks.0.mlp.fc.weight.*non-finite"):
        quantize_gptq(W, H, 6, 3.0, 16, 0.01, False, name="blocks.0.mlp.fc.weight")
    with pytest.raises(ValueError, match=r"blocks.1.attn.q.weight.*\[16, 16\]"):
        quantize_gptq(W, torch.eye(8), 6, 3.0, 16, 0.01, False, name="blocks.1.attn.q.weight")
    with pytest.raises(ValueError, match="blocks.2.attn.k.weight.*non-finite"):
        quantize_state_dict({"blocks.2.attn.k.weight": W}, {"blocks.2.attn.k.weight": H}, QCFG)


def test_state_dict_routing_and_stats():
    X = calibration(d=16)
    sd = {"tok_emb.weight": torch.randn(40, 16) * 0.02, "blocks.0.mlp.fc.weight": torch.randn(32, 16) * 0.1,
          "blocks.0.attn_norm.weight": torch.ones(16), "tiny.weight": torch.randn(2, 3)}
    H = X.T @ X
    hess = {"tok_emb.weight": H, "blocks.0.mlp.fc.weight": H}
    out = quantize_state_dict(sd, hess, {**QCFG, "passthrough_max_numel": 6})
    t, st = out["tensors"], out["stats"]
    assert t["tok_emb.weight"]["bits"] == 8 and st["tok_emb.weight"]["clip_sigmas"] == 20.0
    assert t["blocks.0.mlp.fc.weight"]["bits"] == 6 and st["blocks.0.mlp.fc.weight"]["method"] == "gptq"
    assert t["blocks.0.attn_norm.weight"]["kind"] == "fp16" and t["tiny.weight"]["kind"] == "fp16"
    assert t["tiny.weight"]["tensor"].dtype == torch.float16
    fc = st["blocks.0.mlp.fc.weight"]
    W, Wq = sd["blocks.0.mlp.fc.weight"], dequantize(t["blocks.0.mlp.fc.weight"]["q"],
                                                      t["blocks.0.mlp.fc.weight"]["scale"])
    assert fc["rel_output_err"] == pytest.approx(output_error_ratio(W, Wq, H))
    assert 0 < fc["rel_output_err"] < fc["rel_weight_err"] ** 2  # GPTQ trades weight error for output error
    rtn = quantize_state_dict(sd, hess, {**QCFG, "method": "rtn"})["stats"]["blocks.0.mlp.fc.weight"]
    assert fc["rel_output_err"] < rtn["rel_output_err"]


def tiny_model_and_hessians():
    """A tiny GPT and the Hessians of its real activations, gathered as the train stage does."""
    from pgolf.hessians import collect_hessians
    from pgolf.model import build_model
    cfg = {"vocab_size": 64, "num_layers": 1, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2,
           "mlp_mult": 2, "rope_base": 10000.0, "logit_softcap": 30.0, "seq_len": 32}
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, 64, (8, 32), generator=torch.Generator().manual_seed(1))
    hess = collect_hessians(model, lambda: ids, num_batches=1)
    return cfg, model, hess


def test_quantize_model_stage(tmp_path):
    cfg, model, hess = tiny_model_and_hessians()
    torch.save({"model_config": cfg, "state_dict": model.state_dict()}, tmp_path / "model.pt")
    torch.save(hess, tmp_path / "hessians.pt")
    summaries = {}
    for method in ("gptq", "rtn"):
        out_bin, out_json = tmp_path / f"{method}.bin", tmp_path / f"{method}.json"
        summaries[method] = quantize_model(tmp_path / "model.pt", tmp_path / "hessians.pt",
                                           {**QCFG, "method": method, "bits": 4, "clip_sigmas": 3.0},
                                           out_bin, out_json)
        quantized, model_config = deserialize(out_bin.read_bytes())
        assert model_config == cfg and set(quantized) == set(model.state_dict())
        assert summaries[method]["quant_bytes"] == out_bin.stat().st_size
    per_tensor = summaries["gptq"]["tensors"]
    assert all(s["method"] == "gptq" for s in per_tensor.values() if s["kind"] == "quant")
    assert summaries["gptq"]["mean_rel_output_err"] < 0.8 * summaries["rtn"]["mean_rel_output_err"]
    with pytest.raises(KeyError, match="model.pt.*state_dict"):
        torch.save({"model_config": cfg}, tmp_path / "model.pt")
        quantize_model(tmp_path / "model.pt", tmp_path / "hessians.pt", QCFG, tmp_path / "x", tmp_path / "y")
    assert not (tmp_path / "x").exists()
