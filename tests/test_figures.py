import json

import pytest
from matplotlib.colors import to_rgba

from pgolf.aggregate import load_seed_table, write_summary
from pgolf.config import STAGE_SECTIONS
from pgolf.figures import (FIGURES, VERDICT_COLORS, artifact_bytes_figure, delta_vs_noise_figure, logged_losses,
                           loss_curves_figure, val_bpb_figure, verdict, write_figures)

# Three ablations: one clearly better than the baseline, one within the noise, one worse.
BPB = {"baseline": [1.300, 1.310, 1.305], "better": [1.200, 1.205, 1.210], "same": [1.302, 1.309, 1.304],
       "worse": [1.400, 1.390, 1.395]}
REFERENCE = {"name": "record", "val_bpb": {"mean": 1.25, "std": 0.001, "n": 3}}


def train_log(final_loss: float) -> str:
    """Lines as pgolf.train writes them."""
    return "\n".join(f"step {s}/20 loss {final_loss + (20 - s) / 10:.4f} lr_scale 1.000 step_ms 10.0 "
                     f"tokens_per_s 1000 elapsed_s {s / 100:.3f}" for s in (5, 10, 15, 20)) + "\n"


def seed_rows(tmp_path) -> list[dict]:
    rows = []
    for name, values in BPB.items():
        for seed, bpb in enumerate(values):
            base = tmp_path / name / str(seed)
            base.mkdir(parents=True)
            files = {"train": {"steps": 20, "step_ms": 10.0 + seed, "tokens_per_second": 1e5 - seed, "world_size": 1,
                               "train_seconds": 1.0, "device": "cpu"},
                     "artifact": {"total_bytes": 120_000, "model_bytes": 100_000, "code_bytes": 20_000, "fits": True},
                     "eval": {"val_bpb": bpb, "val_loss": 2 * bpb, "eval_seconds": 1.0},
                     "prequant": {"val_bpb": bpb - 0.01, "val_loss": 2 * bpb - 0.02, "eval_seconds": 1.0}}
            # "same" differs from the baseline after training (as quant-only ablations do): one trained model
            train_key = str(list(BPB).index("baseline" if name == "same" else name)) * 10
            keys = {s: train_key if s == "train" else s[:1] * 10 for s in STAGE_SECTIONS}
            row = {"ablation": name, "seed": seed, "keys": keys}
            for kind, content in files.items():
                (base / f"{kind}.json").write_text(json.dumps(content))
                row[kind] = str(base / f"{kind}.json")
            (base / "train.log").write_text(train_log(2 * bpb))
            row["train_log"] = str(base / "train.log")
            rows.append(row)
    return rows


@pytest.fixture
def tables(tmp_path):
    rows = seed_rows(tmp_path)
    out = tmp_path / "out"
    summary = write_summary(rows, "baseline", REFERENCE, 0.0, out / "s.tsv", out / "s.parquet", out / "i.tsv")
    return summary, load_seed_table(rows)


def test_every_figure_is_written_as_a_png(tables, tmp_path):
    summary, seeds = tables
    outputs = {name: tmp_path / "figures" / f"{name}.png" for name in FIGURES}
    write_figures(summary, seeds, "baseline", REFERENCE, outputs)
    for path in outputs.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(f"{n}.png" for n in FIGURES)


def vertical_lines(ax) -> dict[str, float]:
    return {line.get_label(): line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() in ("--", ":")}


def test_val_bpb_figure_draws_baseline_and_reference_means(tables):
    summary, seeds = tables
    lines = vertical_lines(val_bpb_figure(summary, seeds, "baseline", REFERENCE).axes[0])
    assert lines["baseline (baseline) 1.3050"] == pytest.approx(1.305)
    assert lines["reference (record) 1.2500"] == 1.25


def test_loss_curves_have_one_line_per_trained_seed_with_the_logged_points(tables):
    summary, seeds = tables
    ax = loss_curves_figure(seeds).axes[0]
    assert len(seeds) == 12 and len(ax.get_lines()) == 9  # baseline and "same" share their trained models
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["baseline, same", "better", "worse"]
    steps, losses = logged_losses(train_log(2.6))
    assert steps == [5, 10, 15, 20] and losses[-1] == pytest.approx(2.6)
    first = ax.get_lines()[0]
    assert list(first.get_xdata()) == steps and first.get_ydata()[-1] == pytest.approx(2 * BPB["baseline"][0])


def test_artifact_figure_marks_the_decimal_limit(tables):
    summary, _ = tables
    assert vertical_lines(artifact_bytes_figure(summary).axes[0])["limit 16,000,000 B"] == 16_000_000


def test_verdict_against_the_noise_floor():
    assert verdict(-0.02, 0.01) == "beyond noise"
    assert verdict(-0.005, 0.01) == "within noise"
    assert verdict(0.003, 0.01) == "worse"
    assert verdict(-0.5, float("nan")) == "within noise"  # no spread known: nothing is detectable


def test_delta_figure_colours_each_ablation_by_its_verdict(tables):
    summary, _ = tables
    ax = delta_vs_noise_figure(summary, "baseline").axes[0]
    colours = [patch.get_facecolor() for patch in ax.patches if hasattr(patch, "get_height")][:3]
    expected = ["beyond noise", "within noise", "worse"]  # better, same, worse
    assert colours == [to_rgba(VERDICT_COLORS[v]) for v in expected]
