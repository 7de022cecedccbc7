import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pgolf.aggregate import write_summary
from pgolf.config import PGOLF_STAGES

BPB = {"baseline": [1.2250, 1.2240, 1.2246], "better": [1.2150, 1.2160, 1.2148]}
LOSS_PER_BPB = 2.0  # any fixed ratio: val_loss tracks val_bpb for one tokenizer and val set


def write_seed(tmp_path, ablation, seed, bpb, total_bytes=15_000_000, step_ms=40.0):
    base = tmp_path / ablation / str(seed)
    base.mkdir(parents=True)
    files = {
        "train": {"steps": 100, "step_ms": step_ms, "tokens_per_second": 1e6, "train_seconds": 600.0,
                  "world_size": 8, "device": "cuda"},
        "artifact": {"total_bytes": total_bytes, "model_bytes": total_bytes - 50_000, "code_bytes": 50_000,
                     "limit_bytes": 16_000_000, "fits": total_bytes <= 16_000_000},
        "eval": {"val_bpb": bpb, "val_loss": bpb * LOSS_PER_BPB, "eval_seconds": 120.0},
        "prequant": {"val_bpb": bpb - 0.01, "val_loss": (bpb - 0.01) * LOSS_PER_BPB, "eval_seconds": 100.0},
    }
    row = {"ablation": ablation, "seed": seed}
    for kind, content in files.items():
        path = base / f"{kind}.json"
        path.write_text(json.dumps(content))
        row[kind] = str(path)
    train_key = "a" * 10 if ablation == "baseline" else "b" * 10
    row["keys"] = {stage: (train_key if stage == "train" else stage[:1] * 10) for stage in PGOLF_STAGES}
    return row


def summary_of(tmp_path, rows, **kwargs):
    out = tmp_path / "out"
    write_summary(rows, "baseline", kwargs.pop("reference", None), 3.0, out / "s.tsv", out / "s.parquet",
                  out / "i.tsv", **kwargs)
    return pd.read_csv(out / "s.tsv", sep="\t").set_index("ablation")


def test_statistics_and_tests_match_scipy(tmp_path):
    rows = [write_seed(tmp_path, name, seed, v) for name, values in BPB.items() for seed, v in enumerate(values)]
    summary = summary_of(tmp_path, rows)
    better, base = summary.loc["better"], summary.loc["baseline"]
    assert better["val_bpb_mean"] == pytest.approx(sum(BPB["better"]) / 3)
    assert better["val_bpb_std"] == pytest.approx(pd.Series(BPB["better"]).std(ddof=1))
    welch = stats.ttest_ind(BPB["better"], BPB["baseline"], equal_var=False, alternative="less").pvalue
    assert better["p_welch_vs_baseline"] == pytest.approx(welch)
    loss_b = [v * LOSS_PER_BPB + 0.005 for v in BPB["better"]]
    strict = stats.ttest_ind(loss_b, [v * LOSS_PER_BPB for v in BPB["baseline"]], equal_var=False,
                             alternative="less").pvalue
    assert better["p_strict_vs_baseline"] == pytest.approx(strict)
    assert better["delta_nats_vs_baseline"] == pytest.approx(better["delta_bpb_vs_baseline"] * LOSS_PER_BPB)
    assert better["quant_gap_bpb"] == pytest.approx(0.01)
    assert math.isnan(base["p_welch_vs_baseline"]) and base["delta_bpb_vs_baseline"] == 0
    # GPU-hours estimate: (600 s x 8 GPUs + 120 s eval) per seed
    assert better["gpu_hours"] == pytest.approx(3 * (600 * 8 + 120) / 3600)
    assert better["cost_usd"] == pytest.approx(better["gpu_hours"] * 3.0)
    assert better["fits_16mb"] and pd.isna(better["flags"])


def test_reference_columns_and_flags(tmp_path):
    rows = [write_seed(tmp_path, name, seed, v, total_bytes=16_000_001 if (name, seed) == ("better", 2) else 15_000_000)
            for name, values in BPB.items() for seed, v in enumerate(values)]
    reference = {"name": "ref", "val_bpb": {"mean": 1.2244, "std": 0.0005, "n": 3}}
    summary = summary_of(tmp_path, rows, reference=reference, expect={"step_ms_max": 30.0})
    better = summary.loc["better"]
    mine = pd.Series(BPB["better"])
    expected = stats.ttest_ind_from_stats(mine.mean(), mine.std(ddof=1), 3, 1.2244, 0.0005, 3,
                                          equal_var=False, alternative="less").pvalue
    assert better["p_welch_vs_reference"] == pytest.approx(expected, rel=1e-6)  # TSV keeps 8 digits
    assert not better["fits_16mb"]
    assert "seed 2: over_size" in better["flags"] and "slow_steps" in better["flags"]


def test_pod_reports_replace_the_cost_estimate(tmp_path):
    rows = [write_seed(tmp_path, name, seed, v) for name, values in BPB.items() for seed, v in enumerate(values)]
    pods = tmp_path / "pods"
    pods.mkdir()
    for i, (key, seed, hours) in enumerate([("a" * 10, 0, 1.0), ("a" * 10, 1, 2.0), ("b" * 10, 0, 4.0)]):
        (pods / f"run-{i}.json").write_text(json.dumps(
            {"wildcards": {"train_key": key, "seed": str(seed)}, "gpu_hours": hours, "cost_usd": hours * 2.5}))
    summary = summary_of(tmp_path, rows, pods_dir=pods)
    assert summary.loc["baseline", "gpu_hours"] == 3.0 and summary.loc["baseline", "cost_usd"] == 7.5
    assert summary.loc["better", "gpu_hours"] == 4.0 and summary.loc["better", "cost_source"] == "pods"


def test_group_pod_report_counts_once_for_the_ablations_it_served(tmp_path):
    """A group job (one pod for a seed's train → eval) reports no wildcards of its own, only its jobs':
    its cost counts once toward each ablation one of its jobs served, and not toward the others."""
    rows = [write_seed(tmp_path, name, seed, v) for name, values in BPB.items() for seed, v in enumerate(values)]
    pods = tmp_path / "pods"
    pods.mkdir()
    jobs = [{"rule": "train", "wildcards": {"train_key": "a" * 10, "seed": "1"}},
            {"rule": "eval", "wildcards": {"eval_key": "f" * 10, "seed": "1"}}]  # an eval key no row has
    (pods / "run-5b1c.json").write_text(json.dumps(
        {"rule": "gpu_seed", "wildcards": {}, "jobs": jobs, "gpu_hours": 2.0, "cost_usd": 5.0}))
    summary = summary_of(tmp_path, rows, pods_dir=pods)
    assert summary.loc["baseline", "gpu_hours"] == 2.0 and summary.loc["baseline", "cost_usd"] == 5.0
    assert summary.loc["better", "gpu_hours"] == 0.0


def test_noise_floor_matches_a_hand_computation_with_scipy(tmp_path):
    rows = [write_seed(tmp_path, name, seed, v) for name, values in BPB.items() for seed, v in enumerate(values)]
    summary = summary_of(tmp_path, rows)
    # pooled variance: the two groups' squared deviations over their summed degrees of freedom (2 + 2)
    squares = sum(((np.array(v) - np.mean(v)) ** 2).sum() for v in BPB.values())
    std_bpb = math.sqrt(squares / 4)
    for column in ("noise_std_bpb", "noise_std_nats", "min_improvement_bpb_practised", "min_improvement_nats_strict"):
        assert summary[column].nunique() == 1  # one noise floor for the whole table
    row = summary.loc["better"]
    assert row["noise_std_bpb"] == pytest.approx(std_bpb)
    assert row["noise_std_nats"] == pytest.approx(std_bpb * LOSS_PER_BPB)
    # at exactly the detectable improvement, scipy's one-sided Welch test sits on the rule's alpha (3 seeds a side)
    d_bpb = row["min_improvement_bpb_practised"]
    p = stats.ttest_ind_from_stats(1.0 - d_bpb, std_bpb, 3, 1.0, std_bpb, 3, equal_var=False, alternative="less").pvalue
    assert p == pytest.approx(0.25)
    d_nats, std_nats = row["min_improvement_nats_strict"], std_bpb * LOSS_PER_BPB
    p = stats.ttest_ind_from_stats(2.0 - d_nats + 0.005, std_nats, 3, 2.0, std_nats, 3, equal_var=False,
                                   alternative="less").pvalue
    assert p == pytest.approx(0.01)
    assert d_nats > 0.005 and d_bpb > 0


def test_provenance_of_every_seed_reaches_the_summary(tmp_path):
    rows = [write_seed(tmp_path, name, seed, v) for name, values in BPB.items() for seed, v in enumerate(values)]
    for i, row in enumerate(rows[:3]):  # the baseline's seeds, one from a dirty checkout on another pod
        train = json.loads(open(row["train"]).read())
        train["provenance"] = {"git_commit": "abc", "git_dirty": i == 2, "torch_version": "2.8.0",
                               "host_id": f"runpod:pod{i % 2}", "gpu_model": "NVIDIA H100 80GB HBM3"}
        open(row["train"], "w").write(json.dumps(train))
    summary = summary_of(tmp_path, rows)
    base = summary.loc["baseline"]
    assert base["git_commit"] == "abc" and bool(base["git_dirty"]) is True
    assert base["hosts"] == "runpod:pod0;runpod:pod1" and base["gpu_model"] == "NVIDIA H100 80GB HBM3"
    assert pd.isna(summary.loc["better"]["git_commit"])  # no record: empty, not invented


def abort_seed(row, reason="step_ms_above: 150.0 ms per step > 130 at step 50"):
    train = json.loads(open(row["train"]).read())
    open(row["train"], "w").write(json.dumps(dict(train, aborted=True, abort_reason=reason)))


def test_an_aborted_seed_is_flagged_and_left_out_while_the_other_seeds_count(tmp_path):
    rows = [write_seed(tmp_path, name, seed, v) for name, values in BPB.items() for seed, v in enumerate(values)]
    abort_seed(rows[3])  # better, seed 0
    summary = summary_of(tmp_path, rows)
    better = summary.loc["better"]
    assert better["n_seeds"] == 2 and better["n_aborted"] == 1 and better["seeds"] == "1,2"
    assert better["val_bpb_mean"] == pytest.approx(sum(BPB["better"][1:]) / 2)
    assert "seed 0: aborted (step_ms_above" in better["flags"]
    assert summary.loc["baseline"]["n_seeds"] == 3 and summary.loc["baseline"]["n_aborted"] == 0


def test_an_ablation_with_every_seed_aborted_keeps_a_row_without_statistics(tmp_path):
    rows = [write_seed(tmp_path, name, seed, v) for name, values in BPB.items() for seed, v in enumerate(values)]
    for row in rows[3:]:
        abort_seed(row)
    better = summary_of(tmp_path, rows).loc["better"]
    assert better["n_seeds"] == 0 and better["n_aborted"] == 3 and math.isnan(better["val_bpb_mean"])
    assert not better["significant_practised_vs_baseline"] and better["flags"].count("aborted") == 3
    for row in rows[:3]:
        abort_seed(row)
    with pytest.raises(ValueError, match="every seed aborted"):
        summary_of(tmp_path, rows)


def test_gate_columns_give_the_slowest_device_over_seeds(tmp_path):
    rows = [write_seed(tmp_path, name, seed, v) for name, values in BPB.items() for seed, v in enumerate(values)]
    for i, row in enumerate(rows[:3]):
        train = json.loads(open(row["train"]).read())
        devices = [{"device": f"cuda:{d}", "tflops": 600.0 - 10 * i - d, "gbps": 2900.0 - i - d} for d in range(8)]
        open(row["train"], "w").write(json.dumps(dict(train, gate={"devices": devices})))
    summary = summary_of(tmp_path, rows)
    assert summary.loc["baseline"]["gate_tflops_min"] == 600.0 - 20 - 7
    assert summary.loc["baseline"]["gate_gbps_min"] == 2900.0 - 2 - 7
    assert math.isnan(summary.loc["better"]["gate_tflops_min"])  # no gate ran: no figure


def write_external_seed(tmp_path, ablation, seed, bpb, wall_seconds=700.0):
    """One seed of an external script as pgolf.external writes it (external.json)."""
    path = tmp_path / ablation / str(seed) / "external.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "val_bpb": bpb, "val_loss": bpb * LOSS_PER_BPB, "score_line": "sliding_window", "pre_quant_bpb": None,
        "total_bytes": 15_500_000, "model_bytes": 15_480_000, "code_bytes": 20_000, "steps": 90, "step_ms": 44.0,
        "tokens_per_second": None, "train_seconds": 600.0, "eval_seconds": 100.0, "wall_seconds": wall_seconds,
        "world_size": 8, "device": "cuda"}))
    keys = {"docs": "d" * 10, "tokenizer": "t" * 10, "shards": "s" * 10, "external": "e" * 10}
    return {"ablation": ablation, "seed": seed, "keys": keys, "external": str(path)}


def test_external_rows_are_tested_like_any_and_flagged_script_eval(tmp_path):
    rows = [write_seed(tmp_path, "baseline", seed, v) for seed, v in enumerate(BPB["baseline"])]
    rows += [write_external_seed(tmp_path, "record", seed, v) for seed, v in enumerate(BPB["better"])]
    pods = tmp_path / "pods"
    pods.mkdir()  # the baseline's training pod: its train key must not be billed to the external cell
    (pods / "train.json").write_text(json.dumps({"wildcards": {"train_key": "a" * 10, "seed": "0"}, "gpu_hours": 1.0}))
    (pods / "ext.json").write_text(json.dumps({"wildcards": {"external_key": "e" * 10, "seed": "1"}, "gpu_hours": 2.0}))
    summary = summary_of(tmp_path, rows, expect={"step_ms_max": 40.0}, pods_dir=pods)
    record = summary.loc["record"]
    assert record["script_eval"] and record["score_line"] == "sliding_window"
    assert "script_eval: sliding_window" in record["flags"] and "slow_steps: step_ms 44.00" in record["flags"]
    assert not summary.loc["baseline", "script_eval"] and summary.loc["baseline", "score_line"] == "pgolf_eval"
    welch = stats.ttest_ind(BPB["better"], BPB["baseline"], equal_var=False, alternative="less").pvalue
    assert record["p_welch_vs_baseline"] == pytest.approx(welch)
    assert record["artifact_bytes_max"] == 15_500_000 and record["code_bytes"] == 20_000
    assert math.isnan(record["pre_quant_bpb_mean"]) and record["steps_mean"] == 90
    assert record["gpu_hours"] == 2.0 and summary.loc["baseline", "gpu_hours"] == 1.0
