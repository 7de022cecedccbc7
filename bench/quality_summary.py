#!/usr/bin/env python3
"""Summarise bench/quality_side_by_side.sh: per-seed val_bpb of the reference and pgolf, and the test.

    python3 bench/quality_summary.py OUTDIR        # reads ref_s*.log and pgolf_s*/quality.json

Pairs of comparable scores (the record's log line → pgolf's score):
  pre-quantization post-ema  → prequant_full      (EMA weights, non-overlapping 2048 windows)
  quantized                  → quantized_full     (dequantized artifact, same windows)
  quantized_sliding_window   → quantized_sliding  (stride 64: the leaderboard's number)
"No worse beyond seed noise": the one-sided Welch p-value that pgolf's mean is higher (worse) than the
reference's; below 0.05 it says WORSE.

TTT gain (when OUTDIR has ref0611_s*.log and pgolf quality.json files with quantized_ttt): per seed,
post-TTT minus post-quantization val_bpb on non-overlapping 2048-token windows, for the 1.0611 record
(quantized_ttt_phased − diagnostic quantized; bench/ref0611_scores.py) and for pgolf (quantized_ttt −
quantized_full: the same windows, so the context TTT's chunked scoring adds counts in both gains).
Tests on the gains: the practised rule's one-sided Welch (p < 0.25: pgolf's TTT gains more) and the
p that pgolf's gains less (below 0.05: WORSE). The strict rule is on val_loss in nats per token, and
the two sides' tokens differ (CaseOps vs sp8192), so it is not applied between them. pgolf's scores with
TTT against its scores of the same artifacts without it take both rules (same tokens). Writes
OUTDIR/quality_summary.json.
"""
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path

from ref0611_scores import parse as parse_0611  # bench/ is on sys.path: python puts the script's folder there

from pgolf.aggregate import versus
from pgolf.stats import PRACTISED_ALPHA, STRICT_ALPHA, Sample, p_less

PAIRS = {"pre-quantization post-ema": "prequant_full", "quantized": "quantized_full",
         "quantized_sliding_window": "quantized_sliding"}
LINE = re.compile(r"^(pre-quantization post-ema|quantized|quantized_sliding_window) val_loss:(\S+) val_bpb:(\S+)", re.M)


def reference_scores(log: Path) -> dict:
    return {PAIRS[name]: float(bpb) for name, _, bpb in LINE.findall(log.read_text(errors="replace"))}


def pgolf_scores(out: Path) -> dict:
    """{seed: {score name: {"val_loss": nats per token, "val_bpb": ...}}} of pgolf's runs (quality.json)."""
    return {q["seed"]: q["scores"] for q in (json.loads(p.read_text()) for p in sorted(out.glob("pgolf_s*/quality.json")))}


def with_ttt(pgolf: dict) -> dict:
    """The seeds of pgolf_scores that reached both the quantized score and the one with TTT."""
    return {seed: s for seed, s in pgolf.items() if {"quantized_ttt", "quantized_full"} <= s.keys()}


def ttt_gains(out: Path, pgolf: dict) -> dict:
    """{side: {seed: post-TTT − post-quantization val_bpb}} of the runs that reached both scores."""
    record = {int(p.stem.split("_s")[1]): parse_0611(p.read_text(errors="replace")).get("ttt_gain_bpb")
              for p in sorted(out.glob("ref0611_s*.log"))}
    ours = {seed: s["quantized_ttt"]["val_bpb"] - s["quantized_full"]["val_bpb"] for seed, s in with_ttt(pgolf).items()}
    return {"record_1.0611": {k: v for k, v in record.items() if v is not None}, "pgolf": ours}


def ttt_against_quantized(pgolf: dict) -> dict:
    """pgolf with TTT against the same artifacts without it, by both rules (pgolf.aggregate.versus: the practised
    one-sided Welch on val_bpb, the strict one on val_loss 0.005 nats below; NaN under two seeds)."""
    runs = list(with_ttt(pgolf).values())
    if not runs:
        return {"n": 0}

    def sample(score: str, unit: str) -> Sample:
        return Sample.of([r[score][unit] for r in runs])

    return {"n": len(runs), **versus("quantized", sample("quantized_ttt", "val_bpb"), sample("quantized_ttt", "val_loss"),
                                     sample("quantized_full", "val_bpb"), sample("quantized_full", "val_loss"))}


def compare_gains(gains: dict) -> dict:
    """Mean ± std of each side's gains and the two one-sided Welch tests (NaN under two seeds a side)."""
    r, g = list(gains["record_1.0611"].values()), list(gains["pgolf"].values())
    rs, gs = Sample.of(r) if r else None, Sample.of(g) if g else None
    both = rs is not None and gs is not None
    return {"record_1.0611": asdict(rs) if rs else None, "pgolf": asdict(gs) if gs else None,
            "pgolf_minus_record": gs.mean - rs.mean if both else float("nan"),
            "p_pgolf_gains_more": p_less(gs, rs) if both else float("nan"),  # the practised rule's test
            "p_pgolf_gains_less": p_less(rs, gs) if both else float("nan")}


def print_gains(gains: dict, test: dict) -> None:
    print("TTT gain, post-TTT − post-quantization val_bpb (non-overlapping 2048-token windows):")
    for side in ("record_1.0611", "pgolf"):
        seeds = " ".join(f"s{k} {v:+.4f}" for k, v in sorted(gains[side].items()))
        s = test[side]
        mean = f"mean {s['mean']:+.4f} ± {s['std']:.4f} (n={s['n']})" if s else "–"
        print(f"  {side:14s} {seeds:40s} {mean}")
    more, less = test["p_pgolf_gains_more"], test["p_pgolf_gains_less"]
    verdict = "WORSE" if less < 0.05 else "beats (practised)" if more < PRACTISED_ALPHA else "ok" if less == less else "n/a"
    print(f"  pgolf − record {test['pgolf_minus_record']:+.4f}; p(pgolf gains more) {more:.3f}, "
          f"p(pgolf gains less) {less:.3f}: {verdict}; strict rule: n/a (nats per token of different tokenizers)")
    own = test["pgolf_ttt_vs_quantized"]
    if not own["n"]:
        return
    passes = lambda p, alpha: "passes" if p < alpha else "fails" if p == p else "n/a"  # noqa: E731
    practised, strict = own["p_welch_vs_quantized"], own["p_strict_vs_quantized"]
    print(f"  pgolf with TTT against the same artifacts without it (n={own['n']}): {own['delta_bpb_vs_quantized']:+.4f} "
          f"bpb, {own['delta_nats_vs_quantized']:+.4f} nats; practised p {practised:.2g} "
          f"({passes(practised, PRACTISED_ALPHA)}), strict p {strict:.2g} ({passes(strict, STRICT_ALPHA)})")


def main(out: Path) -> int:
    ref = {int(p.stem.split("_s")[1]): reference_scores(p) for p in sorted(out.glob("ref_s*.log"))}
    pgolf = pgolf_scores(out)
    ours = {seed: {k: v["val_bpb"] for k, v in scores.items()} for seed, scores in pgolf.items()}
    rows = {}
    for key in PAIRS.values():
        r = [s[key] for s in ref.values() if key in s]
        g = [s[key] for s in ours.values() if key in s]
        if not r and not g:
            continue
        rs, gs = Sample.of(r) if r else None, Sample.of(g) if g else None
        p_worse = p_less(rs, gs) if rs and gs else float("nan")  # H1: reference < pgolf
        rows[key] = {"reference": r, "pgolf": g, "p_pgolf_worse": p_worse}
        fmt = lambda s: f"{s.mean:.4f} ± {s.std:.4f} (n={s.n})" if s else "–"  # noqa: E731
        verdict = "WORSE" if p_worse < 0.05 else "ok" if p_worse == p_worse else "n/a"
        diff = gs.mean - rs.mean if rs and gs else float("nan")
        rows[key]["pgolf_minus_reference"] = diff
        print(f"{key:18s} reference {fmt(rs):26s} pgolf {fmt(gs):26s} diff {diff:+.4f} "
              f"p(pgolf worse) {p_worse:.3f} {verdict}")
    print("per seed:", json.dumps({"reference": ref, "pgolf": ours}))
    summary = {"per_seed": {"reference": ref, "pgolf": ours}, "comparison": rows}
    gains = ttt_gains(out, pgolf)
    if gains["record_1.0611"] or gains["pgolf"]:
        comparison = {**compare_gains(gains), "pgolf_ttt_vs_quantized": ttt_against_quantized(pgolf)}
        summary["ttt_gain"] = {"per_seed": gains, "comparison": comparison}
        print_gains(gains, summary["ttt_gain"]["comparison"])
    (out / "quality_summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
