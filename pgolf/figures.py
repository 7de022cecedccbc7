"""The report's figures (matplotlib, Agg backend: no display needed), one function per figure.

Each takes the summary (one row per ablation) and/or the per-seed table (pgolf.aggregate.load_seed_table)
and returns a Figure; write_figures saves them as PNGs, each written whole or not at all. The
workflow's aggregate rule marks them for `snakemake --report`, with captions in docs/report/.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)
import pandas as pd  # noqa: E402

from pgolf import ARTIFACT_LIMIT_BYTES  # noqa: E402
from pgolf.io import atomic_path  # noqa: E402

# pgolf.train logs "step <n>/<max> loss <nats> ..." every log_every steps.
LOSS_LINE = re.compile(r"^step (\d+)/\d+ loss (\S+)", flags=re.M)
VERDICT_COLORS = {"beyond noise": "tab:green", "within noise": "tab:gray", "worse": "tab:red"}
# Output name -> figure function; the aggregate rule names the same files.
FIGURES = ("val_bpb", "loss_curves", "artifact_bytes", "throughput", "quant_gap", "delta_vs_noise")


def _ablation_axis(ax, names: list[str]) -> None:
    """Ablations down the y axis (long grid-cell names stay readable), the first at the top."""
    ax.set_yticks(range(len(names)), names)
    if not ax.yaxis_inverted():  # axes sharing y are inverted once, not back again
        ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)


def _height(n_ablations: int) -> float:
    return 1.6 + 0.45 * n_ablations


def val_bpb_figure(summary: pd.DataFrame, seeds: pd.DataFrame, baseline: str, reference: dict | None):
    """Mean val_bpb with its 95% interval per ablation, every seed as a dot, baseline and reference lines."""
    names = list(summary["ablation"])
    fig, ax = plt.subplots(figsize=(8, _height(len(names))))
    for i, row in enumerate(summary.itertuples()):
        low, high = row.val_bpb_ci95_low, row.val_bpb_ci95_high
        if not math.isnan(low):
            ax.plot([low, high], [i, i], color="tab:blue", lw=2)
        ax.plot(row.val_bpb_mean, i, "o", color="tab:blue", ms=7)
        mine = seeds[seeds["ablation"] == row.ablation]
        for aborted, marker in ((False, "."), (True, "x")):  # aborted seeds are shown, not counted
            dots = mine.loc[mine["aborted"] == aborted, "val_bpb"]
            ax.plot(dots, [i + 0.2] * len(dots), marker, color="black", alpha=0.6, ms=5)
    base_mean = float(summary.loc[summary["ablation"] == baseline, "val_bpb_mean"].iloc[0])
    ax.axvline(base_mean, color="tab:orange", ls="--", label=f"baseline ({baseline}) {base_mean:.4f}")
    if reference:
        ref = reference["val_bpb"]["mean"]
        ax.axvline(ref, color="tab:purple", ls=":", label=f"reference ({reference['name']}) {ref:.4f}")
    _ablation_axis(ax, names)
    ax.set_xlabel("val_bpb after quantization (lower is better): mean, 95% t interval, seeds as dots (x: aborted)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def logged_losses(log_text: str) -> tuple[list[int], list[float]]:
    """(steps, training losses in nats) from a train.log."""
    points = [(int(step), float(loss)) for step, loss in LOSS_LINE.findall(log_text)]
    return [p[0] for p in points], [p[1] for p in points]


def loss_curves_figure(seeds: pd.DataFrame):
    """Training loss against step, one line per seed, one colour per trained model (train.log); ablations
    that share a trained model (e.g. differ only in quantization) share a colour and a legend entry."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (_, group) in enumerate(seeds.groupby("key_train", sort=False)):
        label = ", ".join(dict.fromkeys(group["ablation"]))
        for j, row in enumerate(group.drop_duplicates("seed").itertuples()):
            steps, losses = logged_losses(Path(row.train_log).read_text())
            ax.plot(steps, losses, color=colors[k % len(colors)], alpha=0.8, lw=1.2, label=label if j == 0 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats per token, mean over ranks)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="ablations (one line per seed)", title_fontsize=8)
    fig.tight_layout()
    return fig


def artifact_bytes_figure(summary: pd.DataFrame):
    """Largest artifact per ablation (model + code bytes) against the 16,000,000-byte limit, log scale."""
    names = list(summary["ablation"])
    fig, ax = plt.subplots(figsize=(8, _height(len(names))))
    totals = summary["artifact_bytes_max"].to_numpy()
    # Log scale: a CPU-sized model and the 16 MB limit on one axis; bars start at 1 KB.
    colors = ["tab:blue" if total <= ARTIFACT_LIMIT_BYTES else "tab:red" for total in totals]
    ax.barh(range(len(names)), totals - 1e3, left=1e3, color=colors)
    for i, row in enumerate(summary.itertuples()):
        ax.text(row.artifact_bytes_max * 1.15, i, f"{row.artifact_bytes_max:,} B = model {row.model_bytes_max:,} "
                f"+ code {row.code_bytes:,} ({100 * row.artifact_bytes_max / ARTIFACT_LIMIT_BYTES:.1f}% of limit)",
                va="center", fontsize=8)
    ax.axvline(ARTIFACT_LIMIT_BYTES, color="tab:red", ls="--", label=f"limit {ARTIFACT_LIMIT_BYTES:,} B")
    ax.set_xscale("log")
    ax.set_xlim(1e3, ARTIFACT_LIMIT_BYTES * 100)
    _ablation_axis(ax, names)
    ax.set_xlabel("artifact bytes (model + code), largest over seeds, log scale; red: over the limit")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def throughput_figure(summary: pd.DataFrame, seeds: pd.DataFrame):
    """Training tokens per second and step time per ablation, seeds as dots."""
    names = list(summary["ablation"])
    fig, axes = plt.subplots(1, 2, figsize=(10, _height(len(names))), sharey=True)
    for ax, column, label in ((axes[0], "tokens_per_second", "training tokens / s"),
                              (axes[1], "step_ms", "step time (ms)")):
        ax.barh(range(len(names)), summary[f"{column}_mean"], color="tab:blue", alpha=0.6)
        for i, name in enumerate(names):
            dots = seeds.loc[seeds["ablation"] == name, column]
            ax.plot(dots, [i] * len(dots), ".", color="black", ms=5)
        ax.set_xlabel(f"{label}: mean (bar), seeds (dots)")
        _ablation_axis(ax, names)
    fig.tight_layout()
    return fig


def quant_gap_figure(summary: pd.DataFrame):
    """Mean val_bpb before and after quantization per ablation; the line between them is the gap."""
    names = list(summary["ablation"])
    fig, ax = plt.subplots(figsize=(8, _height(len(names))))
    for i, row in enumerate(summary.itertuples()):
        ax.plot([row.pre_quant_bpb_mean, row.val_bpb_mean], [i, i], color="gray", lw=2)
        ax.annotate(f"gap {row.quant_gap_bpb:+.4f}", (max(row.pre_quant_bpb_mean, row.val_bpb_mean), i),
                    xytext=(8, 0), textcoords="offset points", va="center", fontsize=8)
    ax.plot(summary["pre_quant_bpb_mean"], range(len(names)), "o", color="tab:green", label="pre-quant (EMA model)")
    ax.plot(summary["val_bpb_mean"], range(len(names)), "o", color="tab:blue", label="artifact (after GPTQ)")
    _ablation_axis(ax, names)
    ax.set_xlabel("mean val_bpb over seeds")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def verdict(delta: float, min_improvement: float) -> str:
    """Where a delta against the baseline (negative is better) falls against the noise floor."""
    if delta > 0:
        return "worse"
    if not math.isnan(min_improvement) and -delta >= min_improvement:
        return "beyond noise"
    return "within noise"


def delta_vs_noise_figure(summary: pd.DataFrame, baseline: str):
    """Each ablation's delta to the baseline against the smallest improvement each rule detects."""
    rows = summary[summary["ablation"] != baseline]
    names = list(rows["ablation"])
    fig, axes = plt.subplots(1, 2, figsize=(10, _height(max(len(names), 1))), sharey=True)
    panels = ((axes[0], "delta_bpb_vs_baseline", "min_improvement_bpb_practised", "bpb, practised rule (p < 0.25)"),
              (axes[1], "delta_nats_vs_baseline", "min_improvement_nats_strict", "nats, strict rule (0.005 margin, p < 0.01)"))
    for ax, delta_col, floor_col, label in panels:
        floor = float(summary[floor_col].iloc[0])
        colors = [VERDICT_COLORS[verdict(d, floor)] for d in rows[delta_col]]
        ax.barh(range(len(names)), rows[delta_col], color=colors)
        for i, delta in enumerate(rows[delta_col]):
            ax.annotate(f"{delta:+.4g}", (delta, i), xytext=(4 if delta >= 0 else -4, 0), textcoords="offset points",
                        ha="left" if delta >= 0 else "right", va="center", fontsize=8)
        if not math.isnan(floor):
            ax.axvspan(-floor, 0, color="tab:gray", alpha=0.15)
            ax.axvline(-floor, color="black", ls="--", lw=1, label=f"detectable: {-floor:+.4g}")
            ax.legend(loc="best", fontsize=8)
        ax.axvline(0, color="black", lw=0.8)
        ax.margins(x=0.2)  # room for the labels
        ax.set_xlabel(f"delta vs {baseline}, {label}")
        _ablation_axis(ax, names)
    fig.tight_layout()
    return fig


def build_figures(summary: pd.DataFrame, seeds: pd.DataFrame, baseline: str, reference: dict | None) -> dict:
    return {
        "val_bpb": lambda: val_bpb_figure(summary, seeds, baseline, reference),
        "loss_curves": lambda: loss_curves_figure(seeds),
        "artifact_bytes": lambda: artifact_bytes_figure(summary),
        "throughput": lambda: throughput_figure(summary, seeds),
        "quant_gap": lambda: quant_gap_figure(summary),
        "delta_vs_noise": lambda: delta_vs_noise_figure(summary, baseline),
    }


def write_figures(summary: pd.DataFrame, seeds: pd.DataFrame, baseline: str, reference: dict | None,
                  outputs: dict) -> None:
    """Save each figure named in FIGURES to outputs[name] (a .png path)."""
    makers = build_figures(summary, seeds, baseline, reference)
    for name in FIGURES:
        fig = makers[name]()
        try:
            with atomic_path(outputs[name]) as tmp:
                fig.savefig(tmp, format="png", dpi=110)
        finally:
            plt.close(fig)
