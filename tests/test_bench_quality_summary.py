"""bench/quality_summary.py: the TTT gain of both sides per seed and the tests on it."""
import json
import sys
from pathlib import Path

import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import quality_summary  # noqa: E402
from test_bench_ref0611 import record_log  # noqa: E402

RECORD = {1: (2.010, 1.995), 2: (2.004, 1.992), 3: (2.013, 1.996)}       # seed: (quantized, post-TTT) val_bpb
PGOLF = {1: (2.009, 1.990), 2: (2.015, 1.993), 3: (2.006, 1.989)}
PGOLF_NATS = {1: (4.010, 3.990), 2: (4.020, 3.999), 3: (4.004, 3.985)}    # seed: (quantized, post-TTT) val_loss


def write_outdir(out: Path, pgolf=PGOLF) -> None:
    for seed, (q, t) in RECORD.items():
        (out / f"ref0611_s{seed}.log").write_text(record_log(q, t))
    for seed, (q, t) in pgolf.items():
        (out / f"pgolf_s{seed}").mkdir()
        q_nats, t_nats = PGOLF_NATS[seed]
        scores = {"quantized_full": {"val_loss": q_nats, "val_bpb": q}, "quantized_ttt": {"val_loss": t_nats, "val_bpb": t}}
        (out / f"pgolf_s{seed}" / "quality.json").write_text(json.dumps({"seed": seed, "scores": scores}))


def test_gains_per_seed_and_welch_tests(tmp_path, capsys):
    write_outdir(tmp_path)
    quality_summary.main(tmp_path)
    got = json.loads((tmp_path / "quality_summary.json").read_text())["ttt_gain"]
    rec = [t - q for q, t in RECORD.values()]
    ours = [t - q for q, t in PGOLF.values()]
    assert got["per_seed"]["record_1.0611"] == {str(k): pytest.approx(v) for k, v in zip(RECORD, rec)}
    assert got["per_seed"]["pgolf"] == {str(k): pytest.approx(v) for k, v in zip(PGOLF, ours)}
    c = got["comparison"]
    assert c["pgolf_minus_record"] == pytest.approx(sum(ours) / 3 - sum(rec) / 3)
    assert c["p_pgolf_gains_more"] == pytest.approx(stats.ttest_ind(ours, rec, equal_var=False, alternative="less").pvalue)
    assert c["p_pgolf_gains_less"] == pytest.approx(stats.ttest_ind(rec, ours, equal_var=False, alternative="less").pvalue)
    assert "TTT gain" in capsys.readouterr().out


def test_a_pgolf_run_without_ttt_score_counts_no_gain(tmp_path):
    write_outdir(tmp_path)
    (tmp_path / "pgolf_s3" / "quality.json").write_text(json.dumps(
        {"seed": 3, "scores": {"quantized_full": {"val_loss": 4.0, "val_bpb": 2.0}}}))
    quality_summary.main(tmp_path)
    got = json.loads((tmp_path / "quality_summary.json").read_text())["ttt_gain"]
    assert sorted(got["per_seed"]["pgolf"]) == ["1", "2"] and got["comparison"]["pgolf"]["n"] == 2


def test_pgolf_with_ttt_against_without_takes_both_rules(tmp_path, capsys):
    """Same tokens on both sides, so the strict rule applies: val_loss 0.005 nats below, Welch p < 0.01."""
    write_outdir(tmp_path)
    quality_summary.main(tmp_path)
    got = json.loads((tmp_path / "quality_summary.json").read_text())["ttt_gain"]["comparison"]["pgolf_ttt_vs_quantized"]
    q_bpb, t_bpb = zip(*PGOLF.values())
    q_nats, t_nats = zip(*PGOLF_NATS.values())
    welch = lambda a, b: stats.ttest_ind(a, b, equal_var=False, alternative="less").pvalue  # noqa: E731
    assert got["n"] == 3
    assert got["delta_nats_vs_quantized"] == pytest.approx(sum(t_nats) / 3 - sum(q_nats) / 3)
    assert got["p_welch_vs_quantized"] == pytest.approx(welch(t_bpb, q_bpb))
    assert got["p_strict_vs_quantized"] == pytest.approx(welch([t + 0.005 for t in t_nats], q_nats))
    assert "strict p" in capsys.readouterr().out
