"""Pre-flight: size estimate, paths, GPU requests; and that the RunPod executor runs it before
its first API call."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from pgolf import ARTIFACT_LIMIT_BYTES as LIMIT_BYTES, preflight

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "config" / "config.yaml").read_text())

# The challenge's naive baseline: 9 layers x 512, 8 heads, 4 KV heads, MLP x2, sp1024,
# about 17.06M parameters (train_gpt.py logs 17,059,912 with its extra per-block gains).
BASELINE_TRAIN = {**BASE["train"], "num_layers": 9, "model_dim": 512, "num_heads": 8, "num_kv_heads": 4,
                  "mlp_mult": 2, "seq_len": 1024}


def test_param_count_matches_the_published_baseline():
    p = preflight.estimate_param_count(BASELINE_TRAIN, 1024)
    assert p["embedding"] == 1024 * 512
    assert p["block_matrices"] == 9 * (2 * 512 * 512 + 2 * 256 * 512 + 2 * 1024 * 512)
    assert p["total"] == pytest.approx(17_059_912, rel=0.002)


def test_param_count_is_the_models_own():
    from pgolf.model import build_model
    from pgolf.model import ModelConfig

    model = build_model(ModelConfig.from_train_cfg(BASE["train"], 512).to_dict())
    assert preflight.estimate_param_count(BASE["train"], 512)["total"] == sum(p.numel() for p in model.parameters())


def test_entropy_rule_matches_measured_compression():
    # int6 with a 12.85-sigma clip: about 3.3 bits per weight; int8 embedding at 20 sigma: about 4.7
    assert preflight.bits_per_weight(6, 12.85) == pytest.approx(3.32, abs=0.01)
    assert preflight.bits_per_weight(8, 20.0) == pytest.approx(4.71, abs=0.01)
    assert preflight.bits_per_weight(4, 1.0) == 4.0  # a tight clip saturates at the bit width


def test_record_stack_estimate_lands_near_its_published_artifact():
    """The 1.0856 record: 35,943,512 parameters, int6 blocks + int8 embedding, artifact 15,985,678
    bytes. The Gaussian entropy estimate must land within a few percent of that (real weights are
    a little more peaked, so it errs high), and pre-flight must let the record's config through."""
    cfg = yaml.safe_load((REPO / "config" / "challenge.yaml").read_text())
    validate(cfg, str(REPO / "config" / "schema.yaml"))
    est = preflight.estimate_artifact_bytes(cfg["train"], cfg["quant"], 8192)
    assert est["params"] == 35_943_512
    assert est["total_bytes"] == pytest.approx(15_985_678, rel=0.03)
    assert preflight.check(cfg)["total_bytes"] == est["total_bytes"]


def test_estimate_scales_with_bits_and_counts_code():
    quant = {"bits": 6, "embed_bits": 8, "clip_sigmas": 3.0, "embed_clip_sigmas": 20.0}
    e6 = preflight.estimate_artifact_bytes(BASELINE_TRAIN, quant, 1024, code_bytes=50_000)
    e5 = preflight.estimate_artifact_bytes(BASELINE_TRAIN, {**quant, "bits": 5}, 1024, code_bytes=50_000)
    assert e5["total_bytes"] < e6["total_bytes"]
    assert e6["total_bytes"] - preflight.estimate_artifact_bytes(
        BASELINE_TRAIN, quant, 1024, code_bytes=0)["total_bytes"] == 50_000


def test_check_passes_the_default_config_and_prints_the_estimate(capsys):
    est = preflight.check(BASE, gpu_count=8, gpu_type="H100 SXM")
    assert est["total_bytes"] < LIMIT_BYTES
    assert "estimated artifact" in capsys.readouterr().out


def test_check_rejects_oversized_model_missing_files_and_bad_gpus(tmp_path):
    cfg = copy.deepcopy(BASE)
    cfg["train"].update(num_layers=30, model_dim=1024, num_heads=8, num_kv_heads=8, mlp_mult=4)
    cfg["docs"].update(source="jsonl", path=str(tmp_path / "nope.jsonl"))
    cfg["tokenizer"]["model"] = str(tmp_path / "nope.model")
    with pytest.raises(preflight.PreflightError) as info:
        preflight.check(cfg, gpu_count=3, gpu_type="H100 SXM")
    msg = str(info.value)
    for part in ("exceeds the 16,000,000-byte limit", "nope.jsonl", "nope.model", "gpu=3"):
        assert part in msg
    with pytest.raises(preflight.PreflightError, match="unknown RunPod GPU type"):
        preflight.check(BASE, gpu_count=8, gpu_type="H1000")
    with pytest.raises(preflight.PreflightError, match="num_kv_heads"):
        preflight.estimate_param_count({**BASELINE_TRAIN, "num_kv_heads": 3}, 1024)
