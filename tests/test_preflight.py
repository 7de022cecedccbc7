"""Pre-flight: size estimate, paths, GPU requests; and that the workflow runs it for every cell
before any job starts, under the local executor and before the RunPod executor's first API call."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from pgolf import ARTIFACT_LIMIT_BYTES as LIMIT_BYTES, gpus, preflight

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
    est = preflight.check(BASE)
    assert est["total_bytes"] < LIMIT_BYTES
    assert "estimated artifact" in capsys.readouterr().out


def test_check_rejects_oversized_model_and_missing_files(tmp_path):
    cfg = copy.deepcopy(BASE)
    cfg["train"].update(num_layers=30, model_dim=1024, num_heads=8, num_kv_heads=8, mlp_mult=4)
    cfg["docs"].update(source="jsonl", path=str(tmp_path / "nope.jsonl"))
    cfg["tokenizer"]["model"] = str(tmp_path / "nope.model")
    with pytest.raises(preflight.PreflightError) as info:
        preflight.check(cfg, where="ablation 'big'")
    msg = str(info.value)
    for part in ("ablation 'big'", "exceeds the 16,000,000-byte limit", "nope.jsonl", "nope.model"):
        assert part in msg
    with pytest.raises(preflight.PreflightError, match="num_kv_heads"):
        preflight.estimate_param_count({**BASELINE_TRAIN, "num_kv_heads": 3}, 1024)


def test_published_shards_need_the_published_tokenizer():
    cfg = copy.deepcopy(BASE)
    cfg["shards"] = {"source": "hf"}
    cfg["tokenizer"].update(model=None, hf_repo=None)
    with pytest.raises(preflight.PreflightError, match="shards.source is hf .* tokenizer.hf_repo"):
        preflight.check(cfg)
    cfg["tokenizer"]["hf_repo"] = "kevclark/parameter-golf"
    preflight.check(cfg)


def test_local_cuda_runs_need_enough_visible_gpus():
    cuda = {**BASE["train"], "device": "cuda", "nproc": 2}
    two, one = copy.deepcopy(BASE), copy.deepcopy(BASE)
    two["train"], one["train"] = cuda, {**cuda, "nproc": 1, "batch_tokens": BASE["train"]["batch_tokens"]}
    cells = {"one_gpu": one, "two_gpus": two}
    preflight.check_local_gpu_runs(cells, env={gpus.IDS_ENV: "0,1"})
    with pytest.raises(preflight.PreflightError) as info:
        preflight.check_local_gpu_runs(cells, env={gpus.IDS_ENV: "0"})
    msg = str(info.value)
    assert "ablation 'two_gpus'" in msg and "train.nproc is 2" in msg and "ablation 'one_gpu'" not in msg
    preflight.check_local_gpu_runs({"cpu": BASE}, env={gpus.IDS_ENV: ""})


def test_a_local_cuda_run_needing_more_gpus_than_visible_starts_no_job(tmp_path):
    """The GPU check runs once the executor is known (local here), before the first job."""
    wd = workflow_copy(tmp_path, {"train.device": "cuda", "train.nproc": 2, "train.batch_tokens": 4096})
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1"], cwd=wd, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO), **{gpus.IDS_ENV: "0"}))
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "train.nproc is 2 but this machine lets the workflow use 1 GPU(s)" in out, out[-3000:]
    assert not (wd / "results").exists()
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-n"], cwd=wd, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO), **{gpus.IDS_ENV: "0"}))
    assert dry.returncode == 0, dry.stderr[-3000:]  # a dry run (e.g. on a laptop) starts nothing: not checked


# One grid cell far over 16 MB among cells that fit.
OVERSIZED_GRID = {"grids": {"wide": {"train.model_dim": [64, 4096]}}}


def workflow_copy(tmp_path: Path, base_overrides: dict | None = None) -> Path:
    """The repo's workflow in a scratch directory: the embedded default with dotted overrides, and the
    oversized grid unless overrides are given."""
    wd = tmp_path / "wf"
    wd.mkdir()
    for item in ("Snakefile", "rules", "workflow", "config"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wd / item)
    cfg = copy.deepcopy(BASE)
    for dotted, value in (base_overrides or {}).items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    if base_overrides is None:
        cfg.update(OVERSIZED_GRID)
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return wd


def assert_refused_naming_the_cell(run: subprocess.CompletedProcess, wd: Path) -> None:
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert "pre-flight failed for ablation 'wide__model_dim=4096'" in out, out[-3000:]
    assert "wide__model_dim=64'" not in out.split("pre-flight failed")[1]  # only the bad cell is named
    assert not (wd / "results").exists()  # no job started


def test_an_oversized_grid_cell_stops_a_local_run_before_any_job(tmp_path):
    wd = workflow_copy(tmp_path)
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1"], cwd=wd, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert_refused_naming_the_cell(run, wd)


def test_an_oversized_grid_cell_rents_nothing(tmp_path):
    """Under the RunPod executor the same pre-flight stops the run before the fake API sees any request."""
    sys.path.insert(0, str(REPO / "plugins" / "snakemake-executor-plugin-runpod" / "tests"))
    from fake_runpod import FakeRunPod

    wd = workflow_copy(tmp_path)
    with FakeRunPod(tmp_path / "pods") as fake:
        env = dict(os.environ, RUNPOD_API_BASE_URL=fake.url, RUNPOD_API_KEY="rpa_x_0123456789",
                   PYTHONPATH=str(REPO), HOME=str(tmp_path))
        run = subprocess.run([sys.executable, "-m", "snakemake", "--executor", "runpod", "--jobs", "1",
                              "--default-storage-provider", "fs", "--default-storage-prefix", str(tmp_path / "s")],
                             cwd=wd, env=env, capture_output=True, text=True, timeout=300)
        assert_refused_naming_the_cell(run, wd)
        assert fake.requests == []
